"""Many requests at once on tiny F32 models: each request's output is what it is alone
(greedy: token for token; sampled: the target's distribution), whatever else shares its
batches, whoever joins or leaves; every way a request ends leaves its slot exact; the async
API and `close()` end requests cleanly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svip_local import (
    Done,
    Engine,
    EngineClosedError,
    PromptTooLongError,
    SamplingParams,
    astream_chat,
    stream_chat,
)
from svip_local.events import Event, Round, Token
from tests.fast.test_engine_sampling import (
    PARAMS,
    RUNS,
    chi_square_p,
    exact_pair_distribution,
)

PROMPTS = ["Hello there, how are", "The quick brown fox", "def main():\n    ",
           "Once upon a time"]
# Different lengths and policies, one of them a tree (CaPE), one copying, one auto.
REQUESTS = [(PROMPTS[0], 60, "constant:4+cape:8"), (PROMPTS[1], 25, "svip"),
            (PROMPTS[2], 45, "lookup:1:8"), (PROMPTS[3], 35, "auto")]


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1, parallel=4) as eng:
        yield eng


def run_together(engine: Engine, requests: list[tuple[str, int, str]],
                 starts: list[threading.Event] | None = None) -> list[Done]:
    """Each request in a thread of its own, all at once (or each when its event is set)."""
    results: list[Done | BaseException | None] = [None] * len(requests)

    def run(i: int, prompt: str, n: int, policy: str) -> None:
        try:
            if starts is not None:
                starts[i].wait(30)
            results[i] = engine.complete(prompt, max_tokens=n, policy=policy,
                                         ignore_eos=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    assert all(isinstance(r, Done) for r in results)
    return results  # type: ignore[return-value]


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_slots_exact(engine: Engine) -> None:
    """Every slot's token list is what llama.cpp holds, and no tree branch is left."""
    ctx = engine.target_ctx
    for slot in range(engine.parallel):
        assert ctx.pos_max(slot) + 1 == len(ctx.slot_tokens(slot))
        for branch in range(1, ctx.branches):
            assert ctx.seq_cells(slot * ctx.branches + branch) == (-1, -1)
    assert engine.draft_ctx is not None
    for slot in range(engine.parallel):
        assert engine.draft_ctx.pos_max(slot) + 1 == len(engine.draft_ctx.slot_tokens(slot))
    assert engine.load() == (0, 0)


def test_four_concurrent_requests_equal_each_alone(engine: Engine) -> None:
    alone = [engine.complete(p, max_tokens=n, policy=pol, ignore_eos=True)
             for p, n, pol in REQUESTS]
    together = run_together(engine, REQUESTS)
    for a, t in zip(alone, together, strict=True):
        assert t.tokens == a.tokens
        assert t.text == a.text
    # They shared batches: the verifications each joined held more rows than its own.
    own = [t.stats.nodes + t.stats.rounds for t in together]
    assert sum(t.stats.batch_rows for t in together) > sum(own)
    assert sorted(t.stats.slot for t in together) == [0, 1, 2, 3]
    assert_slots_exact(engine)


def test_requests_join_and_leave_mid_batch(engine: Engine) -> None:
    """A long request runs; a second joins after its third round; a short third one joins
    and leaves while both run: all three as alone."""
    alone = [engine.complete(p, max_tokens=n, policy=pol, ignore_eos=True)
             for p, n, pol in REQUESTS[:3]]
    starts = [threading.Event() for _ in range(3)]
    seen = 0
    first: list[int] = []
    events = engine.generate(REQUESTS[0][0], max_tokens=REQUESTS[0][1], policy=REQUESTS[0][2],
                             ignore_eos=True)
    others: list[Done] = []
    runner = threading.Thread(target=lambda: others.extend(
        run_together(engine, [REQUESTS[1], REQUESTS[2]], starts[1:])))
    runner.start()
    done = None
    for event in events:
        if isinstance(event, Round):
            seen += 1
            if seen == 3:
                starts[1].set()
            if seen == 5:
                starts[2].set()
        elif isinstance(event, Token):
            first.append(event.id)
        elif isinstance(event, Done):
            done = event
    runner.join(120)
    assert done is not None and done.tokens == alone[0].tokens == tuple(first)
    assert [o.tokens for o in others] == [a.tokens for a in alone[1:]]
    assert_slots_exact(engine)


def test_sampled_concurrent_output_has_the_target_distribution(engine: Engine) -> None:
    """Two requests at once, each sampled over many seeds: each one's first two tokens
    follow its own prompt's exact distribution."""
    prompts = [engine.tokenize(p) for p in PROMPTS[:2]]
    runs = RUNS
    counts: list[Counter[tuple[int, int]]] = [Counter(), Counter()]

    def sample(i: int) -> None:
        for seed in range(runs):
            done = engine.complete(prompts[i], max_tokens=2, policy="constant:2",
                                   ignore_eos=True, sampling=SamplingParams(**PARAMS, seed=seed))
            counts[i][done.tokens[:2]] += 1

    threads = [threading.Thread(target=sample, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, prompt in enumerate(prompts):
        assert sum(counts[i].values()) == runs
        assert chi_square_p(counts[i], exact_pair_distribution(engine, prompt)) > 1e-3
    assert_slots_exact(engine)


@pytest.mark.parametrize("how", ["closed early", "cancelled", "stop string", "error"])
def test_every_exit_leaves_the_slots_exact(engine: Engine, how: str) -> None:
    """One request ends early (its reader closes it, its cancel event, a stop string, or a
    bad prompt refused) while another runs on: the other's output is as alone, every slot is
    exact afterwards."""
    prompt, n, policy = REQUESTS[0]
    alone = engine.complete(prompt, max_tokens=n, policy=policy, ignore_eos=True)
    cancel = threading.Event()
    other = engine.generate(PROMPTS[1], max_tokens=200, policy="constant:3",
                            ignore_eos=True, cancel=cancel,
                            stop=["e", "a", "o"] if how == "stop string" else ())
    next(other)
    result: list[Done] = []
    runner = threading.Thread(target=lambda: result.extend(run_together(engine,
                                                                        [REQUESTS[0]])))
    runner.start()
    if how == "closed early":
        for _ in range(5):
            next(other)
        other.close()
    elif how == "cancelled":
        cancel.set()
        assert [e for e in other if isinstance(e, Done)][0].finish_reason == "cancelled"
    elif how == "stop string":
        list(other)
    else:
        other.close()
        with pytest.raises(PromptTooLongError):
            engine.complete("word " * 400, max_tokens=4)
    runner.join(120)
    assert result[0].tokens == alone.tokens
    assert_slots_exact(engine)


def test_a_thread_holding_every_slot_gets_an_error_not_a_hang(engine: Engine) -> None:
    held = [engine.generate(PROMPTS[0], max_tokens=100, ignore_eos=True, policy="none")
            for _ in range(engine.parallel)]
    for g in held:
        next(g)
    with pytest.raises(Exception, match="all 4 slots are held"):
        engine.complete(PROMPTS[1], max_tokens=4)
    for g in held:
        g.close()
    assert engine.complete(PROMPTS[1], max_tokens=4).stats.generated == 4
    assert_slots_exact(engine)


def test_more_requests_than_slots_wait_for_one(engine: Engine) -> None:
    requests = [(PROMPTS[i % 4], 10 + i, "constant:2") for i in range(7)]
    alone = [engine.complete(p, max_tokens=n, policy=pol, ignore_eos=True)
             for p, n, pol in requests]
    together = run_together(engine, requests)
    assert [t.tokens for t in together] == [a.tokens for a in alone]
    assert max(t.stats.queued_s for t in together) > 0
    assert_slots_exact(engine)


def test_async_generation_cancelled_mid_reply(engine: Engine) -> None:
    alone = engine.complete(PROMPTS[2], max_tokens=30, ignore_eos=True)

    async def scenario() -> tuple[int, Done | None]:
        got: list[Event] = []

        async def read() -> None:
            async for event in engine.agenerate(PROMPTS[0], max_tokens=200, ignore_eos=True):
                got.append(event)

        task = asyncio.create_task(read())
        while sum(isinstance(e, Token) for e in got) < 5:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        done = None
        async for event in engine.agenerate(PROMPTS[2], max_tokens=30, ignore_eos=True):
            if isinstance(event, Done):
                done = event
        return sum(isinstance(e, Token) for e in got), done

    tokens, done = asyncio.run(scenario())
    assert 5 <= tokens < 200
    assert done is not None and done.tokens == alone.tokens
    assert_slots_exact(engine)


def test_close_with_requests_in_flight_ends_each_with_an_error(tiny_target: Path,
                                                              tiny_draft_noisy: Path) -> None:
    engine = Engine(tiny_target, tiny_draft_noisy, n_ctx=256, n_threads=1, parallel=2)
    errors: list[BaseException] = []
    started = threading.Barrier(3)

    def run(holds: bool) -> None:
        try:
            events = engine.generate(PROMPTS[0], max_tokens=200, ignore_eos=True)
            if holds:  # a slot held (its request pauses until read) until the close
                next(events)
                started.wait(10)
            for _ in events:
                pass
        except BaseException as exc:  # noqa: BLE001 - what the test checks
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i < 2,)) for i in range(3)]
    for t in threads[:2]:
        t.start()
    started.wait(10)
    threads[2].start()  # it waits for a slot
    wait_for(lambda: engine.load() == (2, 1))
    engine.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert len(errors) == 3 and all(isinstance(e, EngineClosedError) for e in errors)
    with pytest.raises(EngineClosedError):
        engine.complete(PROMPTS[0], max_tokens=2)


def test_astream_chat_streams_and_a_request_cancelled_while_queued_ends_at_once(
        engine: Engine) -> None:
    """The async chat gives what the blocking one gives; a request whose cancel event is set
    while every slot is busy ends "cancelled" without waiting for a slot."""
    messages = [{"role": "user", "content": "Hello"}]
    blocking = [e for e in stream_chat(engine, messages, max_tokens=12) if isinstance(e, Done)]

    async def chat() -> Done | None:
        async for event in astream_chat(engine, messages, max_tokens=12):
            if isinstance(event, Done):
                return event
        return None

    done = asyncio.run(chat())
    assert done is not None and done.text == blocking[0].text
    held = [engine.generate(PROMPTS[0], max_tokens=100, ignore_eos=True, policy="none")
            for _ in range(engine.parallel)]
    for g in held:
        next(g)
    cancel = threading.Event()
    result: list[Done] = []
    waiter = threading.Thread(target=lambda: result.append(
        engine.complete(PROMPTS[1], max_tokens=8, cancel=cancel)))
    waiter.start()
    wait_for(lambda: engine.load() == (engine.parallel, 1))
    cancel.set()
    waiter.join(10)
    assert result and result[0].finish_reason == "cancelled" and result[0].tokens == ()
    for g in held:
        g.close()
    assert_slots_exact(engine)
