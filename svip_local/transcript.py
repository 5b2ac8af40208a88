"""What a generation may copy from: text the engine saw before, the prompt, the reply so far.

Prompt lookup searches this array every round, so it is one preallocated int32 buffer that
grows in place (no list-to-array conversion per round). Its first `side` tokens are text the
engine saw that this prompt lacks (turns dropped to fit the context, the previous version of
a regenerated reply); then the prompt, with where each chat message starts; then the reply.
Where a copy comes from is evidence of how likely it is right (`calibration.copies`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

# Where copied text lies, for the copy acceptance model. "prompt": a raw prompt, a system
# message or the chat template's own text; "user": a user's message (pasted code);
# "assistant": an earlier reply; "reply": this generation; "earlier": text the engine saw
# that this prompt lacks.
SOURCES = ("prompt", "user", "assistant", "reply", "earlier")
ROLE_SOURCES = {"system": "prompt", "user": "user", "assistant": "assistant"}

Regions = Sequence[tuple[int, str]]  # (token index in the prompt, role) per chat message


class Transcript:
    """Side text + prompt + reply as one token array, and where each part came from."""

    __slots__ = ("tokens", "length", "side", "prompt_end", "_starts", "_sources")

    def __init__(self, prompt: Sequence[int] | npt.NDArray[np.int32], *,
                 capacity: int, side: Sequence[int] | npt.NDArray[np.int32] = (),
                 regions: Regions = ()) -> None:
        """`capacity`: the most tokens the prompt and reply may reach (the context size);
        `regions`: where each chat message starts in the prompt (token index) and its role,
        in order (none: the whole prompt is "prompt")."""
        self.side = len(side)
        self.tokens = np.empty(self.side + max(capacity, len(prompt)), np.int32)
        self.tokens[:self.side] = side
        self.tokens[self.side:self.side + len(prompt)] = prompt
        self.length = self.side + len(prompt)
        self.prompt_end = self.length
        check_regions(regions, len(prompt))
        starts, sources = [0], ["earlier" if self.side else "prompt"]
        if self.side:
            starts.append(self.side)
            sources.append("prompt")
        for index, role in regions:
            starts.append(self.side + index)
            sources.append(ROLE_SOURCES[role])
        starts.append(self.prompt_end)
        sources.append("reply")
        self._starts, self._sources = starts, sources

    @classmethod
    def of_sequence(cls, tokens: npt.NDArray[np.int32], prompt_len: int,
                    regions: Regions = ()) -> Transcript:
        """A transcript over a recorded prompt + reply (a trace), shown `prompt_len` long;
        the replay moves `length` along it."""
        out = cls(tokens[:prompt_len], capacity=len(tokens), regions=regions)
        out.tokens[:len(tokens)] = tokens
        return out

    @property
    def seq_len(self) -> int:
        """Tokens of the prompt and reply so far (the engine's sequence)."""
        return self.length - self.side

    def view(self) -> npt.NDArray[np.int32]:
        """Everything so far (no copy)."""
        return self.tokens[:self.length]

    def append(self, token: int) -> None:
        self.tokens[self.length] = token
        self.length += 1

    def source_at(self, index: int) -> str:
        """Where the token at `index` of `view()` came from."""
        return self._sources[bisect_right(self._starts, index) - 1]


def check_regions(regions: Regions, prompt_len: int) -> None:
    """ValueError unless each region names a chat role and starts inside the prompt, in
    order."""
    last = 0
    for index, role in regions:
        if role not in ROLE_SOURCES:
            raise ValueError(f"unknown message role {role!r}")
        if not last <= index <= prompt_len:
            raise ValueError(f"message start {index} out of order or outside the prompt of "
                             f"{prompt_len} tokens")
        last = index
