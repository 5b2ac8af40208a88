"""B's calibration, as `calibrate` makes it, on the bench's categories (prompts from the end of
each), with the cost tables measured beforehand on this machine (costs_b.json, a quiet run)."""
import json
import sys
from datetime import UTC, datetime

from svip_local import Engine, SamplingParams
from svip_local.bench.calibrate import choose, loop_overhead, record_traces
from svip_local.bench.prompts import load_prompts, select
from svip_local.bench.traces import TraceSet
from svip_local.calibration import Calibration, CostModel, store
from svip_local.calibration.record import PairIdentity

target, draft, costs_file, out = sys.argv[1:5]
cats = sys.argv[5].split(",")
prompts = select(load_prompts("/work/shared/data/spec_bench_dev.jsonl"), 2, categories=cats,
                 from_end=True)
costs = CostModel.from_dict(json.load(open(costs_file)))
with Engine(target, draft, n_ctx=4096, probe=False) as e:
    e.complete(e.tokenize(prompts[0].text), max_tokens=8, policy="constant:2")
    traces, walls = record_traces(e, prompts, max_tokens=128)
    costs = loop_overhead(e, traces, walls, prompts, costs, max_draft=16, ignore_eos=False)
    print("overhead", costs.round_s, costs.token_s, costs.step_s, flush=True)
    greedy = choose(traces, costs, max_draft=16)
    at1, _ = record_traces(e, prompts, max_tokens=128, sampling=SamplingParams(temperature=1.0))
    sampled = [choose(at1, costs, max_draft=16, temperature=1.0)]
    cal = Calibration(PairIdentity.of(e.target_model.path, e.draft_model.path), e.machine,
                      greedy, costs, sampled,
                      {"prompts": [p.id for p in prompts], "max_tokens": 128, "ignore_eos": False,
                       "positions": int(sum(t.generated for t in traces)), "max_draft": 16,
                       "created": datetime.now(UTC).isoformat(timespec="seconds"),
                       "note": "cost tables measured beforehand on this machine (quiet)"})
    TraceSet({"prompts": [p.id for p in prompts]}, traces + at1).save(out)
print(store.save(cal), greedy.choice, sampled[0].choice)
for tc in (greedy, *sampled):
    none = next(s for s in tc.simulated if s["policy"] == "none")["mean_tokens_per_s"]
    print("T", tc.temperature, "validation", tc.validation)
    for s in tc.simulated[:8]:
        print("  ", s["policy"], round(s["mean_tokens_per_s"] / none, 3))
    for s in tc.simulated:
        if "cape" in s["policy"] or s["policy"] in ("svip:0.3", "svip:0.35") \
                or "lookup-tree:5:16" in s["policy"]:
            print("   .", s["policy"], round(s["mean_tokens_per_s"] / none, 3))
