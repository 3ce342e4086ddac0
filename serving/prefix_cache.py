"""Prefix caching's bookkeeping: which blocks of prompt tokens have their keys and values kept, where.

A prompt is cut into blocks of BLOCK tokens. Block i is named by a digest of its tokens and of
block i-1's name, so a name stands for every token up to the block's end (the scheme of vLLM and
JetStream): two prompts share a block only when they agree on everything before it. The index
maps names to rows of the engine's block pool (serving/engine.py, `PrefixPool`), which holds the
blocks' keys and values on the device. Images, audio and video are codes in the prompt like any
token, so a picture sent again hits as well as a system prompt or the earlier turns of a chat.

`plan(prompt)` says which pool rows the prompt starts with (their rows are copied into the
request's cache and only the rest is prefilled) and which rows its next whole blocks will be
written to. The pool is bounded: a new block takes a free row, or evicts the least recently used
block that no running request holds, deepest first (a chain loses its tail before its head,
so what remains is still reachable). When every row is held, the block is not kept: a request
never waits for, or fails on, the cache.

A request holds its plan's blocks until it finishes or is cancelled (`release`): a conversation
in progress keeps its history while other traffic churns the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np

BLOCK = 16  # tokens a block; the smallest prefill bucket (serving/engine.py), so any cache length in buckets is whole blocks


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one prompt uses the cache: reuse `reused` rows (its first len(reused) blocks), prefill the
    rest, and write its blocks `start + i` into rows `stored[i]`."""

    reused: tuple[int, ...]
    stored: tuple[int, ...]
    held: tuple[bytes, ...]  # names of the blocks the request holds until `release`

    @property
    def reused_tokens(self) -> int:
        return len(self.reused) * BLOCK

    @property
    def start(self) -> int:
        """The first block written: blocks before it are cached already."""
        return len(self.held) - len(self.stored)


def block_names(prompt: np.ndarray) -> list[bytes]:
    """The names of the prompt's whole blocks, in order."""
    prompt = np.asarray(prompt, np.int32)
    names, parent = [], b""
    for end in range(BLOCK, prompt.size + 1, BLOCK):
        parent = hashlib.blake2b(parent + prompt[end - BLOCK:end].tobytes(), digest_size=16).digest()
        names.append(parent)
    return names


class PrefixCache:
    def __init__(self, capacity_blocks: int):
        if capacity_blocks < 1:
            raise ValueError(f"a prefix cache needs at least one block of {BLOCK} tokens, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self.rows: collections.OrderedDict[bytes, int] = collections.OrderedDict()  # least recently used first
        self.holders: collections.Counter[bytes] = collections.Counter()
        self.free = list(range(capacity_blocks - 1, -1, -1))

    @property
    def cached_blocks(self) -> int:
        return len(self.rows)

    @property
    def held_blocks(self) -> int:
        return len(self.holders)

    def cached_blocks_of(self, prompt: np.ndarray) -> int:
        """How many of the prompt's first blocks are cached (a look, no change)."""
        return self._matched(block_names(prompt))

    def _matched(self, names: list[bytes]) -> int:
        matched = 0
        while matched < len(names) and names[matched] in self.rows:
            matched += 1
        return matched

    def plan(self, prompt: np.ndarray) -> Plan:
        """The prompt's use of the cache; it holds the plan's blocks until `release`."""
        names = block_names(prompt)
        matched = self._matched(names)
        # The prompt's last token is always prefilled: its logits give the first token.
        reused = tuple(self.rows[name] for name in names[: min(matched, (len(prompt) - 1) // BLOCK)])
        held = names[:matched]
        for name in held:
            self.holders[name] += 1  # held before any eviction below, so none of them is evicted
        stored = []
        for name in names[matched:]:
            row = self._take_row()
            if row is None:
                break
            self.rows[name] = row
            self.holders[name] += 1
            held.append(name)
            stored.append(row)
        for name in reversed(held):  # the head most recent: eviction takes a chain's tail first
            self.rows.move_to_end(name)
        return Plan(reused, tuple(stored), tuple(held))

    def release(self, plan: Plan) -> None:
        for name in plan.held:
            self.holders[name] -= 1
            if self.holders[name] <= 0:
                del self.holders[name]

    def discard(self, plan: Plan) -> None:
        """Release the plan and forget the blocks it was to write: its prefill failed, so their rows
        hold nothing to reuse."""
        self.release(plan)
        for name in plan.held[plan.start:]:
            if name in self.rows and name not in self.holders:
                self.free.append(self.rows.pop(name))

    def clear(self) -> None:
        """Forget every block (the pool was reset); plans in flight release nothing they still hold."""
        self.__init__(self.capacity)

    def _take_row(self) -> int | None:
        if self.free:
            return self.free.pop()
        for name in self.rows:  # least recently used first
            if name not in self.holders:
                return self.rows.pop(name)
        return None
