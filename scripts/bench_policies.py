#!/usr/bin/env python3
"""Greedy side-by-side benchmark of draft policies: `svip-local bench` with greedy-only defaults.

    python scripts/bench_policies.py --target T.gguf --draft D.gguf \
        --prompts ../shared/data/spec_bench_dev.jsonl [--policies none,constant:2,svip:0.3]

Runs the target alone and each policy on every prompt in one process (interleaved), prints a
table (tokens/s, speedup over the target alone, acceptance, mean draft and accepted lengths)
and writes bench.json (and report.md) to --out (default bench-policies/). Every option of
`svip-local bench` is accepted and wins over these defaults: no long-form lengths, greedy
only, no plots.
"""

from __future__ import annotations

import sys

from svip_local.cli import main as cli_main

DEFAULTS = ["--temperatures", "0", "--lengths", "", "--no-plots", "--out", "bench-policies"]


def main(argv: list[str] | None = None) -> int:
    return cli_main(["bench", *DEFAULTS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
