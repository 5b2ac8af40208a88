"""The structured benchmark's runs on our engine: each task rendered once as `stream_chat`
renders it (a tool task's tools in the template's tool section, or in the system prompt for a
template without one) with the constraint `stream_chat` would build, then timed generations
under that constraint with a contestant's aids, from empty caches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from svip_local.bench.structured_check import problem
from svip_local.bench.structured_predict import RoundLog, predict_seconds
from svip_local.bench.structured_records import Contestant, PreparedTask, StructuredRecord
from svip_local.bench.structured_tasks import StructuredTask
from svip_local.events import Done, Event, Round
from svip_local.policies import Constant
from svip_local.sampling import SamplingParams

if TYPE_CHECKING:
    from svip_local.calibration import CostModel
    from svip_local.chat import ChatTemplate
    from svip_local.constraint import Constraint
    from svip_local.engine import Engine
    from svip_local.policies import Plan


def prepare(engine: Engine, template: ChatTemplate, task: StructuredTask) -> PreparedTask:
    """Render `task` with the pair's template and build its constraint: a schema's or a
    regex's, or for a tool task what `stream_chat` builds from its tools (the tools in the
    template's own tool section, or in the system prompt for a template without one; the
    lazy tool-call grammar; the end-of-turn stop a lazy grammar keeps)."""
    from svip_local.chat import message_regions, prompt_ids, tool_request
    from svip_local.constraint import Constraint
    from svip_local.messages import validate_messages

    messages = validate_messages(task.messages)
    calls = None
    if task.tools:
        request = tool_request(engine, template, messages, task.tools, task.tool_choice)
        messages, constraint, calls = request.messages, request.constraint, request.calls
        assert constraint is not None
        text = template.render(messages, tools=request.tools)
    else:
        text = template.render(messages)
        constraint = (Constraint.json_schema(task.schema) if task.schema is not None
                      else Constraint.regex(str(task.regex)))
    engine.reset()  # the ids of the text alone, as stream_chat gets them after a reset
    ids = prompt_ids(engine, text)
    eot = template.end_of_turn
    return PreparedTask(task, text, ids, message_regions(engine, text, messages, ids),
                        constraint, calls, (eot,) if eot else ())


def aided(constraint: Constraint, aids: str) -> Constraint:
    """The constraint with the aids a contestant turns off."""
    if aids == "bare":
        return constraint.without(forced_tokens=False, draft_mask=False)
    if aids == "no-forced":
        return constraint.without(forced_tokens=False)
    if aids == "no-mask":
        return constraint.without(draft_mask=False)
    return constraint


def run_engine(engine: Engine, prep: PreparedTask, c: Contestant, plan: Plan,
               sampling: SamplingParams, repeat: int, max_tokens: int,
               costs: CostModel | None) -> StructuredRecord:
    """One timed generation from empty caches: the rendered prompt under the task's
    constraint with the contestant's aids (or none: free text); a tool reply's calls read
    from its text as `stream_chat` reads them."""

    engine.reset()
    task = prep.task
    constraint = aided(prep.constraint, c.aids) if c.constrained else None
    stops = prep.stops if constraint is None or constraint.lazy else ()
    events: Iterator[Event] = engine.generate(
        prep.ids, max_tokens=max_tokens, sampling=sampling, policy=plan, stop=stops,
        regions=prep.regions, constraint=constraint)
    reads_calls = constraint is not None and prep.calls is not None
    if reads_calls:
        assert prep.calls is not None
        events = prep.calls.fresh().events(events)
    rounds: list[RoundLog] = []
    done: Done | None = None
    for event in events:
        if isinstance(event, Round):
            rounds.append(RoundLog(event.drafted, event.accepted, event.nodes, event.copied,
                                   event.forced, event.steps, event.catchup))
        elif isinstance(event, Done):
            done = event
    assert done is not None  # every generation ends with Done
    st = done.stats
    calls = [(call.name, call.arguments) for call in done.tool_calls] if reads_calls else None
    found = problem(task, done.text, calls)
    predicted = None
    if costs is not None and constraint is not None and rounds:
        predicted = predict_seconds(rounds, prompt_tokens=st.prompt_tokens,
                                    generated=st.generated,
                                    mask_s=st.mask_s, costs=costs,
                                    temperature=sampling.temperature)
    text = done.text if calls is None else json.dumps(
        {"content": done.text, "tool_calls": [list(x) for x in calls]})
    return StructuredRecord(
        task.id, task.kind, sampling.temperature, c.name, st.policy, repeat, st.prompt_tokens,
        st.generated, st.wall_s, st.prefill_s, done.finish_reason, not found, found, text,
        c.constrained, st.drafted, st.accepted, st.rounds, st.forced, st.forced_accepted,
        st.mask_s, st.masks, predicted, list(st.draft_lengths), list(st.accepted_lengths),
        [r.copied for r in rounds])


def warm_up(engine: Engine, prep: PreparedTask) -> None:
    """Fault the weights in and let caches settle before anything is timed."""
    engine.reset()
    engine.complete(prep.ids, max_tokens=8, policy=Constant(2))
    engine.reset()
