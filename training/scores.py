"""Edit distance and the error rates built on it: DTMF keys heard back (the audio tokenizer's
round trip) and words of a generated transcript or caption (the held-out evaluation)."""

from __future__ import annotations

from typing import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the substitutions, insertions and deletions that turn `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Word edits over reference words, summed over the pairs (words split on whitespace)."""
    errors = sum(edit_distance(r.split(), h.split()) for h, r in zip(hypotheses, references, strict=True))
    return errors / max(1, sum(len(r.split()) for r in references))
