"""Token ids -> text as they arrive, with OpenAI stop strings, identical streamed or not.

Each token decodes only a short window: the ids since the token before the last settled text
(SentencePiece joins pieces, so a piece alone can decode differently than after its neighbour,
and a reply's first piece loses its leading space). The window's text beyond what its settled
ids decode to is the new text; a window ending in half a UTF-8 character waits for the rest.
Re-decoding the whole reply at every token instead cost O(length) per token, on the event loop.
Text is held back while it could still be the start of a stop string; when a stop string
appears the reply ends just before it. `finish` decodes the whole reply once, the final word.
Non-streaming replies run the same code and keep the concatenation, so both ways return the
same text.
"""

from __future__ import annotations

from typing import Callable, Sequence


class TextStream:
    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self.decode, self.stop = decode, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decode(ids[:settled]): the reply's text so far
        self.window = 0  # where the next decode starts: the id before the settled ones' last step
        self.settled = 0
        self.released = ""  # text already handed out
        self.stopped = False  # a stop string was found: the reply is over

    def push(self, token: int) -> str:
        """Add a token; returns the text it releases (often '', never past a stop string)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        before = self.decode(self.ids[self.window : self.settled])
        after = self.decode(self.ids[self.window :])
        if not after.endswith("\ufffd"):  # else half a character: wait for the rest
            if after.startswith(before):
                self.text += after[len(before) :]
            else:  # the new piece changed how its neighbours decode (rare): decode it all once
                self.text = self.decode(self.ids)
            self.window, self.settled = self.settled, len(self.ids)
        return self._release_upto(self.text)

    def finish(self) -> str:
        """The rest, when the reply ended for any other reason than a stop string."""
        if self.stopped:
            return ""
        return self._release(self.decode(self.ids))

    def _release_upto(self, text: str) -> str:
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(text[:cut])
        return self._release(text[: len(text) - self._held_back(text)])

    def _held_back(self, text: str) -> int:
        held = 1 if text.endswith("\ufffd") else 0  # a partial byte sequence may still complete
        for s in self.stop:
            for size in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:size]):
                    held = max(held, size)
                    break
        return held

    def _release(self, text: str) -> str:
        if not text.startswith(self.released):
            return ""  # decoding changed its mind about released text (rare): wait until it agrees again
        new, self.released = text[len(self.released):], text
        return new
