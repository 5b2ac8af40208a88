"""What a benchmark runs unless told otherwise; light on purpose: the CLI's help shows these
without loading models or llama.cpp."""

from __future__ import annotations

COST_POLICY = "svip-cost"
DEFAULT_POLICIES = ("none", "constant:1", "constant:2", "constant:3", "constant:4", "constant:6",
                    "constant:8", "heuristic", "pmin:0.75", "adaedl", "svip:0.3", COST_POLICY,
                    "calibrated", "auto")
# llama.cpp's sweep: n_max 1-16 at p_min 0 (llama.cpp's current default), and p_min 0.3-0.9
# at n_max 8 and 16.
DEFAULT_GRID: tuple[tuple[int, float], ...] = (
    *((n, 0.0) for n in (1, 2, 3, 4, 6, 8, 12, 16)),
    *((n, p) for n in (8, 16) for p in (0.3, 0.5, 0.75, 0.9)),
)
# The structured-output benchmark's contestants (`bench.structured`): the target alone free
# and constrained, then each policy with the grammar's aids and without (`/bare`), auto also
# with each aid off alone and on free text.
STRUCTURED_CONTESTANTS = (
    "none/free", "none/bare", "none", "constant:4", "constant:4/bare", "svip", "svip/bare",
    "lookup", "lookup/bare", "auto", "auto/bare", "auto/no-forced", "auto/no-mask",
    "auto/free")
