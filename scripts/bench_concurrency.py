#!/usr/bin/env python3
"""Many requests at once, side by side: `svip-local serve --parallel N` against llama-server.

The successor of load_test_server.py for throughput rather than correctness. Each contestant is
a server this script starts itself on a free loopback port, measures, and stops before the next
one starts (never two at once: they would share the cores). The load is a closed loop: C client
threads, each with its own connection, send K streamed greedy chat requests one after the other
(after one uncounted warm-up each). The prompts are SpecBench first turns, spread over the
categories in a fixed order, and client i gets prompts i, i+C, i+2C, ... so that every
contestant answers exactly the same requests.

Contestants: ours once per --ours-parallel value; ours from another source tree without
--parallel (--baseline-src, "ours@baseline"); llama.cpp's llama-server once per --draft-n-max
and once without a draft (--llama-server). --single adds a one-client phase per contestant (each
request's own speed, with nobody to share the machine with).

    python scripts/bench_concurrency.py --target T.gguf --draft D.gguf --ours-parallel 1,4 \\
        --llama-server ~/llama.cpp/build/bin/llama-server --single --out bench-out/conc

Prints a markdown table and writes DIR/concurrency.json (config, CPU, every request, summaries)
and DIR/concurrency.md. Exits 1 when a server did not start or a request failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from svip_local.calibration.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "spec_bench_dev.jsonl"
# `python -m svip_local.cli` needs a __main__ the package does not have; this is the console
# script's own body, and it runs whichever tree PYTHONPATH names (the installed console script
# may point at another checkout).
CLI_MAIN = "import sys; from svip_local.cli import main; sys.exit(main())"
PORT = "{port}"  # placeholder in a command, filled when the server starts
HEALTH_TIMEOUT_S = 300.0
STOP_GRACE_S = 20.0
WARMUP_MAX_TOKENS = 16  # enough to touch every code path; the warm-up is not measured
KEEP_ERRORS = 5  # error texts kept per contestant and phase, for people


@dataclass
class Contestant:
    """One server to start: its label, its command (with PORT), and its extra environment."""

    label: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None  # ours: its source tree (a `python -c` imports from the cwd first)

    def argv(self, port: int) -> list[str]:
        return [a.replace(PORT, str(port)) for a in self.cmd]

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{prefix} {shlex.join(self.cmd)}".strip()


@dataclass
class Prompt:
    index: int  # position in the interleaved list, the same for every contestant
    question_id: Any
    category: str
    text: str


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds from the phase's common start."""

    phase: str
    client: int
    prompt_index: int
    warmup: bool
    ok: bool = False
    status: int | None = None
    start_s: float = 0.0
    ttft_s: float | None = None  # sending -> first chunk with non-empty delta content
    total_s: float | None = None
    completion_tokens: int = 0
    tokens_from_chunks: bool = False  # no usage chunk: tokens = content chunks (an estimate)
    content_chunks: int = 0
    finish_reason: str | None = None
    timings: dict[str, Any] | None = None  # the server's own, whatever dict it sent
    svip: dict[str, Any] | None = None  # ours: the finish chunk's statistics
    error: str | None = None


@dataclass
class Summary:
    label: str
    phase: str
    clients: int
    ok: int
    failed: int
    wall_s: float | None  # last end - first start of the measured requests
    completion_tokens: int
    aggregate_tok_s: float | None
    median_ttft_s: float | None
    p90_ttft_s: float | None
    mean_decode_tok_s: float | None  # tokens / (end - first token), per request
    mean_total_tok_s: float | None  # tokens / total, per request
    tokens_estimated: bool  # some request had no usage chunk
    errors: list[str] = field(default_factory=list)


# --- prompts ------------------------------------------------------------------------------

def load_prompts(path: Path) -> list[Prompt]:
    """SpecBench first turns, round-robin over the categories (each in file order), so that
    any prefix of the list is spread over them."""
    by_category: dict[str, list[dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_category.setdefault(record["category"], []).append(record)
    queues = list(by_category.values())
    prompts: list[Prompt] = []
    for depth in range(max(len(q) for q in queues)):
        for queue in queues:
            if depth < len(queue):
                r = queue[depth]
                prompts.append(Prompt(len(prompts), r.get("question_id"), r["category"],
                                      r["turns"][0]))
    return prompts


# --- servers ------------------------------------------------------------------------------

def ours(label: str, src: Path, target: str, draft: str, *, parallel: int | None,
         policy: str | None, threads: int | None, extra: str) -> Contestant:
    cmd = [sys.executable, "-c", CLI_MAIN, "serve", "--target", target, "--draft", draft,
           "--host", "127.0.0.1", "--port", PORT]
    if parallel is not None:
        cmd += ["--parallel", str(parallel)]
    if policy:
        cmd += ["--policy", policy]
    if threads:
        cmd += ["--threads", str(threads)]
    return Contestant(label, cmd + shlex.split(extra), {"PYTHONPATH": str(src)}, str(src))


def llama_server(label: str, binary: str, target: str, draft: str | None, *, n_max: int | None,
                 slots: int, n_ctx: int, threads: int, extra: str) -> Contestant:
    """llama-server's command; -c is the whole context, which it divides between the slots."""
    cmd = [binary, "-m", target, "-np", str(slots), "-c", str(n_ctx * slots), "-t", str(threads),
           "--host", "127.0.0.1", "--port", PORT]
    if draft is not None:
        # -md alone loads the draft and never uses it: draft-simple is llama.cpp's own
        # draft-model speculation (its default type is none).
        cmd += ["-md", draft, "--spec-type", "draft-simple", "--spec-draft-n-max", str(n_max)]
    return Contestant(label, cmd + shlex.split(extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    pass


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def calibration_without_live(dest: Path) -> Path:
    """A copy of this machine's calibrations without `auto`'s stored live estimates: every
    contestant of ours starts from the same knowledge (each run stores what it learnt, which
    would otherwise carry over to the next contestant)."""
    env = os.environ.get("SVIP_LOCAL_CALIBRATION_DIR")
    src = Path(env) if env else Path.home() / ".cache" / "svip-local" / "calibration"
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*"):
        if f.is_file() and not f.name.endswith(".live.json"):
            shutil.copy2(f, dest / f.name)
    return dest


@contextmanager
def running(contestant: Contestant, log_dir: Path) -> Iterator[str]:
    """Start the server, wait for /health to answer 200, yield its URL; always stop it."""
    port = free_port()
    log = log_dir / f"server-{port}.log"  # a file, not a pipe: a full pipe would stall it
    env = {**os.environ, **contestant.env}
    if "PYTHONPATH" in contestant.env:  # ours: `auto` starts from the calibration alone
        env["SVIP_LOCAL_CALIBRATION_DIR"] = str(calibration_without_live(log_dir / f"cal-{port}"))
    with log.open("wb") as out:
        proc = subprocess.Popen(contestant.argv(port), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=contestant.cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise ServerError(f"exited with {proc.returncode} before /health answered:\n"
                                  f"{tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"/health not 200 after {HEALTH_TIMEOUT_S:.0f} s:\n{tail(log)}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (a graceful shutdown), then kill when it takes longer than STOP_GRACE_S."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- load ---------------------------------------------------------------------------------

def send(http: httpx.Client, record: RequestRecord, prompt: Prompt, max_tokens: int,
         t0: float) -> None:
    """One streamed chat request, filling `record`; t0 is the phase's common start."""
    body = {"messages": [{"role": "user", "content": prompt.text}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.monotonic()
    record.start_s = start - t0
    usage_tokens: int | None = None
    done = False
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            record.status = resp.status_code
            if resp.status_code != 200:
                resp.read()
                record.error = f"status {resp.status_code}: {resp.text[:200]}"
                return
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[len("data: "):])
                if "error" in chunk:
                    record.error = f"error event: {chunk['error']}"
                    return
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        record.content_chunks += 1
                        if record.ttft_s is None:
                            record.ttft_s = time.monotonic() - start
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
                if isinstance(chunk.get("usage"), dict):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                if isinstance(chunk.get("timings"), dict):
                    record.timings = chunk["timings"]
                if isinstance(chunk.get("svip"), dict):
                    record.svip = chunk["svip"]
    except Exception as exc:  # anything (a malformed chunk too) fails this request alone
        record.error = repr(exc)
        return
    finally:
        record.total_s = time.monotonic() - start
    if not done:
        record.error = "stream ended without [DONE]"
        return
    record.ok = True
    record.tokens_from_chunks = usage_tokens is None
    record.completion_tokens = record.content_chunks if usage_tokens is None else usage_tokens


def run_phase(url: str, phase: str, prompts: list[Prompt], *, clients: int, per_client: int,
              max_tokens: int, timeout: float, first: int = 0) -> list[RequestRecord]:
    """Closed loop: every client warms up, they all start together, each sends its requests
    (prompts `first` + i, + i + C, ...) one after the other. Returns warm-ups and measured
    requests (marked)."""
    t0 = [0.0]

    def release() -> None:  # run once, when the last warm-up is done, before anyone goes on
        t0[0] = time.monotonic()

    barrier = threading.Barrier(clients, action=release)
    per_thread: list[list[RequestRecord]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        http = httpx.Client(base_url=url, timeout=httpx.Timeout(timeout, connect=10.0))
        with http:
            # the warm-up takes a prompt past the measured ones: no prefix cache hit later
            warm = RequestRecord(phase, i, (first + clients * per_client + i) % len(prompts),
                                 True)
            send(http, warm, prompts[warm.prompt_index], min(max_tokens, WARMUP_MAX_TOKENS),
                 time.monotonic())
            per_thread[i].append(warm)
            barrier.wait()
            for k in range(per_client):
                index = (first + i + k * clients) % len(prompts)
                record = RequestRecord(phase, i, index, False)
                send(http, record, prompts[index], max_tokens, t0[0])
                per_thread[i].append(record)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for rs in per_thread for r in rs]


# --- summaries ----------------------------------------------------------------------------

def summarize(label: str, phase: str, clients: int, records: list[RequestRecord]) -> Summary:
    measured = [r for r in records if not r.warmup]
    good = [r for r in measured if r.ok]
    tokens = sum(r.completion_tokens for r in good)
    wall = None
    if measured:
        wall = (max(r.start_s + (r.total_s or 0.0) for r in measured)
                - min(r.start_s for r in measured))
    ttfts = sorted(r.ttft_s for r in good if r.ttft_s is not None)
    decode = [r.completion_tokens / (r.total_s - r.ttft_s) for r in good
              if r.ttft_s is not None and r.total_s is not None and r.total_s > r.ttft_s]
    total = [r.completion_tokens / r.total_s for r in good if r.total_s]
    errors = [f"{'warm-up' if r.warmup else 'request'} c{r.client} p{r.prompt_index}: {r.error}"
              for r in records if r.error][:KEEP_ERRORS]
    return Summary(label, phase, clients, len(good), len(measured) - len(good), rnd(wall),
                   tokens, rnd(tokens / wall if wall else None),
                   rnd(statistics.median(ttfts) if ttfts else None), rnd(p90(ttfts)),
                   rnd(statistics.fmean(decode) if decode else None),
                   rnd(statistics.fmean(total) if total else None),
                   any(r.tokens_from_chunks for r in good), errors)


def p90(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def rnd(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def markdown(summaries: list[Summary]) -> str:
    """The table; × is against the first contestant's row with the same phase."""
    first: dict[str, float | None] = {}
    rows = ["| contestant | clients | aggregate tok/s | × first | median TTFT s | p90 TTFT s "
            "| per-request tok/s (decode / total) | ok/failed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        base = first.setdefault(s.phase, s.aggregate_tok_s)
        ratio = (f"{s.aggregate_tok_s / base:.2f}" if s.aggregate_tok_s is not None and base
                 else "–")
        agg = cell(s.aggregate_tok_s, 1) + ("*" if s.tokens_estimated else "")
        rows.append(f"| {s.label} | {s.clients} | {agg} | {ratio} | {cell(s.median_ttft_s, 2)} "
                    f"| {cell(s.p90_ttft_s, 2)} | {cell(s.mean_decode_tok_s, 1)} / "
                    f"{cell(s.mean_total_tok_s, 1)} | {s.ok}/{s.failed} |")
    if any(s.tokens_estimated for s in summaries):
        rows.append("\n\\* no usage chunk: tokens counted as content chunks (an estimate)")
    return "\n".join(rows)


def cell(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"




def git_state(src: Path) -> str | None:
    """The tree's commit, '+dirty' when it has changes: which code a number belongs to."""
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


# --- main ---------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def contestants(args: argparse.Namespace) -> list[Contestant]:
    result = [ours(f"ours, parallel {n}", args.ours_src, args.target, args.draft, parallel=n,
                   policy=args.policy, threads=args.threads, extra=args.ours_args)
              for n in args.ours_parallel]
    if args.baseline_src:
        result.append(ours("ours@baseline", args.baseline_src, args.target, args.draft,
                           parallel=None, policy=args.policy, threads=args.threads,
                           extra=args.baseline_args))
    if args.llama_server:
        threads = args.threads or os.cpu_count() or 1
        common = {"slots": args.llama_parallel, "n_ctx": args.n_ctx, "threads": threads,
                  "extra": args.llama_server_args}
        result += [llama_server(f"llama-server, draft n_max {k}", args.llama_server, args.target,
                                args.draft, n_max=k, **common) for k in args.draft_n_max]
        result.append(llama_server("llama-server, no draft", args.llama_server, args.target,
                                   None, n_max=None, **common))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="target GGUF")
    p.add_argument("--draft", required=True, help="draft GGUF")
    p.add_argument("--ours-src", type=Path, default=REPO,
                   help="source tree for ours (default: the one holding this script)")
    p.add_argument("--ours-parallel", type=int_list, default=[1, 4],
                   help="comma list: one `ours` per value of --parallel (default 1,4; '' none)")
    p.add_argument("--ours-args", default="", help="extra arguments for ours, shell-quoted")
    p.add_argument("--policy", default=None, help="--policy for ours and ours@baseline")
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="another source tree of ours, run without --parallel (ours@baseline)")
    p.add_argument("--baseline-args", default="", help="extra arguments for ours@baseline")
    p.add_argument("--llama-server", default=None, metavar="BIN", help="llama-server binary")
    p.add_argument("--draft-n-max", type=int_list, default=[4, 8, 16],
                   help="comma list: llama-server's --spec-draft-n-max sweep (default 4,8,16)")
    p.add_argument("--llama-parallel", type=int, default=4, help="llama-server -np (default 4)")
    p.add_argument("--n-ctx", type=int, default=4096,
                   help="llama-server context per slot (-c is this × -np; default 4096)")
    p.add_argument("--llama-server-args", default="", help="extra arguments for llama-server")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (llama-server -t, default all cores; ours only if given)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--prompts-per-client", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--single", action="store_true",
                   help="also a one-client phase per contestant (each request's own speed)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SpecBench JSONL")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--out", type=Path, default=Path("bench-out/concurrency"))
    p.add_argument("--dry-run", action="store_true", help="print the server commands only")
    args = p.parse_args(argv)

    entries = contestants(args)
    if args.dry_run:
        for c in entries:
            print(f"# {c.label}\n{c.shell()}")
        return 0
    prompts = load_prompts(args.data)
    phases = [("concurrent", args.clients)] + ([("single", 1)] if args.single else [])
    records: list[RequestRecord] = []
    results: list[dict[str, Any]] = []
    summaries: list[Summary] = []
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as logs:
        for c in entries:
            print(f"== {c.label}: {c.shell()}", file=sys.stderr, flush=True)
            entry: dict[str, Any] = {"label": c.label, "command": c.shell(), "error": None}
            results.append(entry)
            try:
                with running(c, Path(logs)) as url:
                    for phase, clients in phases:
                        # The one-client phase takes prompts of its own: the same ones again
                        # would be copied from the earlier replies (or a prompt cache).
                        first = 0 if phase == "concurrent" else \
                            args.clients * (args.prompts_per_client + 1)
                        got = run_phase(url, phase, prompts, clients=clients, first=first,
                                        per_client=args.prompts_per_client,
                                        max_tokens=args.max_tokens, timeout=args.request_timeout)
                        s = summarize(c.label, phase, clients, got)
                        summaries.append(s)
                        records += got
                        entry.setdefault("records", []).extend(asdict(r) for r in got)
                        print(f"   {phase}: {s.aggregate_tok_s} tok/s, ok {s.ok}, failed "
                              f"{s.failed}", file=sys.stderr, flush=True)
            except ServerError as exc:
                entry["error"] = str(exc)
                print(f"   server failed: {exc}", file=sys.stderr, flush=True)
    order = {name: i for i, (name, _) in enumerate(phases)}
    summaries.sort(key=lambda s: order[s.phase])  # stable: contestants keep their order
    table = markdown(summaries)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"config": config, "cpu": cpu_model(), "cores": os.cpu_count(),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "ours_src_git": git_state(args.ours_src),
              "baseline_src_git": git_state(args.baseline_src) if args.baseline_src else None,
              "prompts": [asdict(pr) | {"text": pr.text[:80]} for pr in prompts[
                  :(args.clients + 1) * (args.prompts_per_client + 1)]],
              "contestants": results, "summaries": [asdict(s) for s in summaries]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps(report, indent=2) + "\n")
    header = (f"# Concurrency: {args.clients} clients × {args.prompts_per_client} prompts, "
              f"max_tokens {args.max_tokens}\n\nCPU: {report['cpu']} ({report['cores']} cores), "
              f"{report['date']}, ours {report['ours_src_git']}\n\n")
    failed = [r["label"] for r in results if r["error"]]
    notes = "".join(f"\n- {label}: server did not start (see the JSON)" for label in failed)
    (args.out / "concurrency.md").write_text(header + table + "\n" + notes + "\n")
    print(table + notes)
    print(f"wrote {args.out / 'concurrency.json'} and {args.out / 'concurrency.md'}",
          file=sys.stderr)
    bad = failed or any(s.failed for s in summaries) or any(not r.ok for r in records)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
