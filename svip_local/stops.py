"""Stop strings on a token stream: hold back only the text that could still become a stop."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text pieces; get back what is safe to show. After a hit, `hit` is the stop string
    found and the returned text ends right before it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.hit: str | None = None
        self.rest = ""  # after a hit: the text that came after the stop in that piece

    def push(self, piece: str) -> str:
        if not self._stops or self.hit is not None:
            return piece if self.hit is None else ""
        text = self._held + piece
        first = min(((text.find(s), s) for s in self._stops if s in text), default=None)
        if first is not None:
            self.hit = first[1]
            self._held = ""
            self.rest = text[first[0] + len(first[1]):]
            return text[: first[0]]
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Text still held back when generation ends without a hit."""
        held, self._held = self._held, ""
        return held if self.hit is None else ""

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
