#!/usr/bin/env python3
"""What the chat app costs the engine: the same reply, streamed into the TUI and generated
without one, side by side in one process on one engine.

    python scripts/bench_tui.py --target T.gguf --draft D.gguf --policy none --repeats 3

The app runs headless (Textual's test driver: it lays out and renders every update, it only
does not write to a terminal) at 100x40 with the reply as Markdown. Each repeat starts a new
chat and alternates which side goes first. Greedy, so both produce the same text. Reported:
tokens/s as the status bar shows it (the engine's own clock, prefill included), and the
wall time from pressing Enter to the app having shown the whole reply, and the CPU time of
the UI thread over that wall time: the app's own cost, which on a machine whose cores all
decode is taken from the engine, and which varies far less from reply to reply than tokens/s.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from svip_local import Done, GenerationStats
from svip_local.calibration.machine import cpu_model
from svip_local.chat import stream_chat
from tui.app import ChatApp
from tui.config import ChatSettings, ModelSource
from tui.widgets import PromptInput

PROMPT = ("Explain how a hash map works and write a small Python class that implements one "
          "with separate chaining.")


async def until(condition: object, pause: float = 0.01, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not get there in time")
        await asyncio.sleep(pause)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    settings = ChatSettings(policy=args.policy, max_tokens=args.max_tokens, n_ctx=args.n_ctx,
                            n_threads=args.threads)
    app = ChatApp(ModelSource(target=Path(args.target),
                              draft=Path(args.draft) if args.draft else None), settings)
    tui: list[tuple[float, float, float]] = []  # (status-bar tok/s, wall, UI-thread CPU s)
    plain: list[float] = []
    async with app.run_test(size=(100, 40)) as pilot:
        await until(lambda: app.engine is not None and app.policy is not None)
        app.time_target = False  # no timing of the target alone after replies
        engine, policy = app.engine, app.policy
        assert engine is not None and policy is not None

        async def in_app() -> None:
            await app.action_new_chat()
            box = app.query_one(PromptInput)
            box.focus()
            box.value = args.prompt
            before = app.last_stats
            t0, cpu0 = time.perf_counter(), time.thread_time()
            await pilot.press("enter")
            await until(lambda: app.last_stats is not before and not app.generating)
            await pilot.pause()  # the last update laid out
            stats = app.last_stats
            assert stats is not None
            tui.append((stats.tokens_per_second, time.perf_counter() - t0,
                        time.thread_time() - cpu0))

        def without_app() -> None:
            stats: GenerationStats | None = None
            for event in stream_chat(engine, [{"role": "user", "content": args.prompt}],
                                     max_tokens=args.max_tokens, sampling=settings.sampling,
                                     policy=policy):
                if isinstance(event, Done):
                    stats = event.stats
            assert stats is not None
            plain.append(stats.tokens_per_second)

        await in_app()  # warm-up: weights faulted in, caches settled
        tui.clear()
        for r in range(args.repeats):
            if r % 2:
                without_app()
                await in_app()
            else:
                await in_app()
                without_app()
    rate_tui = statistics.fmean(t for t, _, _ in tui)
    rate_plain = statistics.fmean(plain)
    return {"cpu": cpu_model(), "threads": args.threads, "policy": args.policy,
            "max_tokens": args.max_tokens, "repeats": args.repeats,
            "tui_tps": [t for t, _, _ in tui], "tui_wall_s": [w for _, w, _ in tui],
            "ui_cpu_share": [c / w for _, w, c in tui],
            "generate_tps": plain, "ratio": rate_tui / rate_plain}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--draft", default=None)
    p.add_argument("--policy", default="none")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--out", default="bench-out/tui.json")
    args = p.parse_args()
    result = asyncio.run(measure(args))
    tps_tui, tps_plain = result["tui_tps"], result["generate_tps"]
    assert isinstance(tps_tui, list) and isinstance(tps_plain, list)
    print(f"CPU: {result['cpu']}, {args.threads} threads; policy {args.policy}; "
          f"{args.repeats} replies of up to {args.max_tokens} tokens each way")
    print(f"{'':28} {'mean tok/s':>10}   per reply")
    print(f"{'in the TUI (status bar)':28} {statistics.fmean(tps_tui):10.2f}   "
          + " ".join(f"{x:.2f}" for x in tps_tui))
    print(f"{'without it (generate)':28} {statistics.fmean(tps_plain):10.2f}   "
          + " ".join(f"{x:.2f}" for x in tps_plain))
    print(f"TUI / generate: {result['ratio']:.3f}")
    shares = result["ui_cpu_share"]
    assert isinstance(shares, list)
    print(f"UI thread CPU while a reply streams: {statistics.fmean(shares):.1%} of its wall "
          f"time (per reply: {' '.join(f'{x:.1%}' for x in shares)})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
