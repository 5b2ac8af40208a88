"""The structured benchmark's peers: llama-cpp-python's `Llama` held to a task's JSON Schema
by `LlamaGrammar.from_json_schema`, and llama.cpp's `llama-speculative-simple --json-schema`
(the target's sampling checked by the grammar, the draft unconstrained), swept over its draft
settings. They take JSON Schema only: the regex tasks are skipped, and a tool task holds them
to one call object `{"name", "arguments"}` of any of its tools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from svip_local.bench import peer as llama_peer, python_peer
from svip_local.bench.peer import Peer
from svip_local.bench.python_peer import PythonPeer
from svip_local.bench.runner import progress_bar
from svip_local.bench.structured_check import problem
from svip_local.bench.structured_records import Contestant, PreparedTask, StructuredRecord
from svip_local.errors import InvalidRequestError

if TYPE_CHECKING:
    from svip_local.engine import Engine


class Peers:
    """llama-cpp-python's `Llama` and llama.cpp's `llama-speculative-simple` on the tasks a
    JSON Schema can hold them to."""

    def __init__(self, engine: Engine, contestants: Sequence[Contestant], *,
                 sweep: bool = False, binary: str | None = None) -> None:
        """Loads nothing yet; checks that llama.cpp's binary is there when `sweep` or a
        contestant needs it."""
        assert engine.draft_model is not None
        specs = [c.spec for c in contestants]
        self.python: PythonPeer | None = None
        self.llama: Peer | None = None
        if any(python_peer.handles(s) for s in specs):
            self.python = PythonPeer(engine.target_model.path, threads=engine.machine.threads,
                                     n_ctx=engine.n_ctx,
                                     n_gpu_layers=engine.config.n_gpu_layers)
        if sweep or any(llama_peer.handles(s) for s in specs):
            # Our -1 is "all layers"; the peer's -1 is "auto", so name a number past any.
            machine, layers = engine.machine, engine.config.n_gpu_layers
            self.llama = Peer(engine.target_model.path, engine.draft_model.path,
                              threads=machine.threads, n_ctx=engine.n_ctx,
                              binary=binary,
                              n_gpu_layers=None if machine.gpu == "cpu"
                              else 999 if layers < 0 else layers)

    def notes(self) -> list[str]:
        out = []
        if self.python is not None or self.llama is not None:
            out.append("The peers take a JSON Schema only: they skip the regex tasks, and on a "
                       "tool task they are held to one call object {\"name\", \"arguments\"} "
                       "of any of its tools (anyOf over the tools), with no tool-call wrapper "
                       "(<tool_call>) around it; their tool replies are validated the same way "
                       "(the name one of the tools, the arguments against its parameters). "
                       "Their JSON grammars (llama.cpp's json-schema-to-grammar) allow "
                       "whitespace between tokens, where ours allow none.")
        if self.llama is not None:
            out.append("llama.cpp's generated count includes the end-of-generation token when "
                       "it stopped on one: it is taken off (ours never counts it).")
        return out

    def run(self, prep: PreparedTask, c: Contestant, temperature: float, seed: int,
            repeat: int, max_tokens: int) -> StructuredRecord | None:
        schema = prep.task.peer_schema()
        if schema is None:
            return None
        if python_peer.handles(c.spec):
            assert self.python is not None
            out = self.python.complete(prep.text, c.spec, max_tokens=max_tokens,
                                       temperature=temperature, seed=seed, json_schema=schema)
            return _peer_record(prep, c, temperature, repeat, python_peer.label(c.spec),
                                out.text, out.generated, out.wall_s, 0.0, out.finish)
        assert self.llama is not None
        res = self.llama.run_text(prep.text, c.spec, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed,
                                  extra=["--json-schema", json.dumps(schema)])
        return llama_record(prep, c, temperature, repeat, res, max_tokens)

    def sweep(self, prepared: Sequence[PreparedTask], grid: Sequence[tuple[int, float]], *,
              tasks: int, max_tokens: int, progress: bool = True
              ) -> tuple[str, list[dict[str, Any]]]:
        """llama-speculative-simple at every `grid` setting (n_max, p_min), greedy, on the
        first `tasks` tasks a schema holds it to: its best setting by mean tokens/s, and the
        table."""
        assert self.llama is not None
        chosen = [p for p in prepared if p.task.peer_schema() is not None][:tasks]
        if not chosen:
            raise InvalidRequestError("no JSON task to sweep llama.cpp's peer on")
        table: list[dict[str, Any]] = []
        with progress_bar(len(grid) * len(chosen), "llama.cpp sweep", progress) as tick:
            for n_max, p_min in grid:
                spec = llama_peer.spec(n_max, p_min)
                c = Contestant(spec, spec)
                recs = []
                for prep in chosen:
                    rec = self.run(prep, c, 0.0, 0, 0, max_tokens)
                    assert rec is not None
                    recs.append(rec)
                    tick()
                table.append({"policy": spec, "n_max": n_max, "p_min": p_min,
                              "mean_tps": sum(r.tokens_per_second for r in recs) / len(recs),
                              "acceptance": sum(r.accepted for r in recs)
                              / max(1, sum(r.drafted for r in recs))})
        best = max(table, key=lambda row: float(row["mean_tps"]))
        return str(best["policy"]), table

    def close(self) -> None:
        if self.python is not None:
            self.python.close()


def llama_record(prep: PreparedTask, c: Contestant, temperature: float, repeat: int,
                 res: dict[str, Any], max_tokens: int) -> StructuredRecord:
    """A run of llama-speculative-simple: it ran `-n max_tokens - 1` and stops once it has
    at least `max_tokens`, so fewer means it stopped at an end-of-generation token, which
    it counted (taken off here)."""
    n = int(res["n_generated"])
    stopped = n < max_tokens
    wall = res["total_s"] if res["total_s"] is not None else res["decode_s"]
    rec = _peer_record(prep, c, temperature, repeat, llama_peer.label(c.spec),
                       res.get("text") or "", n - 1 if stopped and n > 0 else n, wall,
                       res["prefill_s"] or 0.0, "stop" if stopped else "length")
    rec.drafted, rec.accepted = res["drafted"] or 0, res["accepted"] or 0
    rec.rounds = res["verify_rounds"] or 0
    if res.get("text") is None:
        rec.valid, rec.problem = False, "its output echo did not match the prompt (not read)"
    return rec


def _peer_record(prep: PreparedTask, c: Contestant, temperature: float, repeat: int,
                 resolved: str, text: str, generated: int, wall_s: float, prefill_s: float,
                 finish: str) -> StructuredRecord:
    found = problem(prep.task, text)
    return StructuredRecord(prep.task.id, prep.task.kind, temperature, c.name, resolved,
                            repeat, len(prep.ids), generated, wall_s, prefill_s, finish,
                            not found, found, text)
