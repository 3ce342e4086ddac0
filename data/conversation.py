"""The conversation template: the one place a conversation becomes tokens, for training and serving.

    <bos> <start_of_turn> system  parts <end_of_turn>          a system message, if any: never trained
          <start_of_turn> user    parts <end_of_turn>          never trained
          <start_of_turn> model   parts <end_of_turn>          trained: its parts and its <end_of_turn>
          ...
          <start_of_turn> model                                 a prompt ends here: the model's turn is next

A turn's parts are any mix of text, pictures, sounds and videos (their codes between <boi> <eoi>,
<boa> <eoa>, and <bov> <eov> around a frame's image run each); the role is a word of text after the turn's opening symbol, as Gemma does. The
server renders a chat request with `reply=True` and stops the reply at <end_of_turn>; training
renders the whole conversation, so a served prompt is exactly the training ids up to the reply.
OpenAI's roles map onto the three: system and developer -> system, assistant -> model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from data.segments import Segment, Symbol, Text

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "model", "model": "model"}


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str  # "system", "user" or "model" (OpenAI's names are mapped by `turn`)
    parts: tuple[Segment, ...]


def turn(role: str, parts: Iterable[Segment]) -> Turn:
    """A turn from an OpenAI role name (system, developer, user, assistant) or ours."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
    return Turn(ROLES[role], tuple(parts))


def segments(turns: Sequence[Turn], reply: bool = False) -> list[Segment]:
    """The conversation as segments, loss marked: only the model's turns train, their closing
    symbol included. `reply`: end with the opening of a model turn, for the model to continue."""
    out: list[Segment] = []
    for t in turns:
        trained = t.role == "model"
        out += [Symbol(START_OF_TURN, loss=False), Text(t.role, loss=False)]
        out += [dataclasses.replace(part, loss=trained) for part in t.parts]
        out.append(Symbol(END_OF_TURN, loss=trained))
    if reply:
        out += [Symbol(START_OF_TURN, loss=False), Text("model", loss=False)]
    return out


def by_role(parts: Iterable[tuple[str, Segment]]) -> list[Turn]:
    """(role, part) pairs, in order, as turns: consecutive parts of one role are one turn (a
    conversation stored part by part, data/manifest.py, keeps no other message boundary)."""
    turns: list[Turn] = []
    for role, part in parts:
        mapped = ROLES.get(role)
        if mapped is None:
            raise ValueError(f"unknown role {role!r}; expected one of {sorted(ROLES)}")
        if turns and turns[-1].role == mapped:
            turns[-1] = Turn(mapped, (*turns[-1].parts, part))
        else:
            turns.append(Turn(mapped, (part,)))
    return turns
