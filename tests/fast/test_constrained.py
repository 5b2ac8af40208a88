"""Generation under a constraint must be the target's own output under that constraint.

The reference here is written apart from the engine's round: a plain loop over a fresh target
context that masks the logits with llguidance's own numpy path at every step and takes the
argmax. Every policy (chains, copies, the live `auto`, tree policies run as chains), with and
without the speculation aids (forced tokens, draft masking), must reproduce it token for
token; the forced-token and rollback paths must each be taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from llguidance import LLMatcher
from llguidance.numpy import (
    allocate_token_bitmask,
    apply_token_bitmask_inplace,
    fill_next_token_bitmask,
)

from svip_local import Constraint, Engine, Round, Token
from svip_local.native import Context, Outputs, grammar_tokenizer

SCHEMA = {"type": "object", "properties": {
    "kind": {"enum": ["alpha", "beta", "gamma"]},
    "count": {"type": "integer", "minimum": 0, "maximum": 999},
    "ok": {"type": "boolean"},
    "tag": {"type": "string", "maxLength": 6},
    "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
              "maxItems": 3}},
    "required": ["kind", "count", "ok", "tag", "items"], "additionalProperties": False}
GBNF = 'root ::= "answer: " ("yes" | "no" | item+)\nitem ::= "#" [0-9] [0-9]? " "\n'
LARK = 'start: "the " WORD (", " WORD)* "."\nWORD: /[a-z]{2,5}/\n'
CONSTRAINTS = {
    "json_schema": lambda: Constraint.json_schema(SCHEMA),
    "json_object": Constraint.json_object,
    "regex": lambda: Constraint.regex(r"[0-9]{3}-[a-z]{2,5}(, [a-z]+){0,2}"),
    "gbnf": lambda: Constraint.gbnf(GBNF),
    "lark": lambda: Constraint.lark(LARK),
}
POLICIES = ["none", "constant:3", "svip", "lookup:1:8", "svip+lookup:2:4", "auto",
            "constant:3+cape:4", "lookup-tree:1:8"]
PROMPTS = ["The quick brown fox", "Hello there, how are"]
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def engine(tiny_target: Path, tiny_draft_noisy: Path) -> Iterator[Engine]:
    with Engine(tiny_target, tiny_draft_noisy, n_ctx=512, n_threads=1) as engine:
        yield engine


def reference(engine: Engine, prompt: str, constraint: Constraint, max_tokens: int
              ) -> tuple[list[int], bool]:
    """The target alone under the constraint, one masked argmax per token; (tokens, whether
    the constraint completed)."""
    tokenizer = grammar_tokenizer(engine.target_model)
    matcher = LLMatcher(tokenizer, constraint.grammar, log_level=0)
    mask = allocate_token_bitmask(1, tokenizer.vocab_size)
    eos = set(tokenizer.eos_tokens)
    out: list[int] = []
    with Context(engine.target_model, n_ctx=512, n_threads=1) as ctx:
        ctx.decode(engine.tokenize(prompt), Outputs.LAST)
        while len(out) < max_tokens:
            if matcher.is_stopped():
                return out, True
            logits = np.array(ctx.logits()[: engine.n_vocab], dtype=np.float32)[None, :]
            fill_next_token_bitmask(matcher, mask)
            apply_token_bitmask_inplace(logits, mask)
            token = int(logits.argmax())
            if token in eos:
                return out, True
            assert matcher.consume_token(token)
            out.append(token)
            ctx.decode([token], Outputs.LAST)
    return out, False


@pytest.fixture(scope="module")
def references(engine: Engine) -> dict[tuple[str, str], tuple[list[int], bool]]:
    return {(kind, prompt): reference(engine, prompt, make(), MAX_TOKENS)
            for kind, make in CONSTRAINTS.items() for prompt in PROMPTS}


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", list(CONSTRAINTS))
def test_greedy_constrained_output_is_the_targets(engine: Engine, references: dict,
                                                  kind: str, policy: str, prompt: str) -> None:
    expected, complete = references[(kind, prompt)]
    constraint = CONSTRAINTS[kind]()
    for variant in (constraint, constraint.without(forced_tokens=False, draft_mask=False)):
        done = engine.complete(prompt, max_tokens=MAX_TOKENS, policy=policy,
                               constraint=variant)
        assert list(done.tokens) == expected, (policy, variant.describe())
        assert done.finish_reason == ("stop" if complete else "length")
        assert done.stats.constrained


@pytest.mark.parametrize("prompt", PROMPTS)
def test_json_outputs_validate(engine: Engine, prompt: str) -> None:
    done = engine.complete(prompt, max_tokens=96, constraint=Constraint.json_schema(SCHEMA),
                           policy="constant:3")
    assert done.finish_reason == "stop"
    jsonschema.validate(json.loads(done.text), SCHEMA)


def test_forced_tokens_are_proposed_without_a_draft_step(engine: Engine) -> None:
    """The schema's keys and punctuation are forced: proposed free and all accepted, so the
    reply takes fewer rounds than tokens even with the target alone's policy."""
    done = engine.complete(PROMPTS[0], max_tokens=96, policy="none",
                           constraint=Constraint.json_schema(SCHEMA))
    stats = done.stats
    assert stats.forced > 10 and stats.forced_accepted == stats.forced
    assert stats.rounds < stats.generated
    off = engine.complete(PROMPTS[0], max_tokens=96, policy="none",
                          constraint=Constraint.json_schema(SCHEMA).without(forced_tokens=False))
    assert off.stats.forced == 0 and off.stats.rounds == off.stats.generated
    assert off.tokens == done.tokens


def test_rejected_drafts_roll_the_grammar_back(engine: Engine) -> None:
    """A noisy draft under the mask is partly rejected; the grammar must be rolled back past
    every rejected proposal, or the next round's mask (and the output) would differ."""
    constraint = Constraint.lark(LARK).without(forced_tokens=False)
    done = engine.complete(PROMPTS[1], max_tokens=MAX_TOKENS, policy="constant:4",
                           constraint=constraint)
    assert 0 < done.stats.accepted < done.stats.drafted
    assert list(done.tokens) == reference(engine, PROMPTS[1], constraint, MAX_TOKENS)[0]


def test_draft_mask_keeps_drafts_valid(engine: Engine) -> None:
    """Masked drafts propose only tokens the grammar allows: more of them are accepted
    than of the unmasked draft's."""
    constraint = Constraint.regex(r"[0-9]{3}-[a-z]{2,5}(, [a-z]+){0,2}").without(
        forced_tokens=False)
    masked = engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="constant:3",
                             constraint=constraint)
    plain = engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="constant:3",
                            constraint=constraint.without(draft_mask=False))
    assert masked.tokens == plain.tokens
    assert masked.stats.acceptance_rate > plain.stats.acceptance_rate


def test_trees_verify_as_chains_under_a_constraint(engine: Engine) -> None:
    done = engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="constant:3+cape:4",
                           constraint=Constraint.json_schema(SCHEMA))
    assert done.stats.nodes == done.stats.drafted  # no node beside the chain


def test_max_tokens_mid_object_is_length(engine: Engine) -> None:
    done = engine.complete(PROMPTS[0], max_tokens=5, constraint=Constraint.json_schema(SCHEMA))
    assert done.finish_reason == "length" and done.stats.generated == 5
    assert done.text == '{"kind'  # cut mid-key: tiny vocabulary, a token per letter or two


def test_kv_caches_hold_the_constrained_reply(engine: Engine) -> None:
    prompt = engine.tokenize(PROMPTS[1])
    tokens: list[int] = []
    for event in engine.generate(prompt, max_tokens=MAX_TOKENS, policy="constant:3",
                                 constraint=Constraint.json_schema(SCHEMA)):
        if isinstance(event, Token):
            tokens.append(event.id)
        elif isinstance(event, Round):
            assert engine.target_ctx.tokens == (prompt + tokens)[:-1]


def test_an_abandoned_generation_leaves_the_engine_usable(engine: Engine) -> None:
    events = engine.generate(PROMPTS[0], max_tokens=40, policy="constant:3",
                             constraint=Constraint.json_schema(SCHEMA))
    next(events)
    events.close()
    done = engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="none",
                           constraint=Constraint.json_schema(SCHEMA))
    assert list(done.tokens) == reference(engine, PROMPTS[0], Constraint.json_schema(SCHEMA),
                                          MAX_TOKENS)[0]


def test_auto_learns_acceptance_under_a_constraint_apart(engine: Engine) -> None:
    """Masked drafts are accepted more often than free text's: `auto` keeps a second
    acceptance estimate for constrained generations (stored with the rest), starting from
    free text's, and a constrained reply leaves free text's untouched."""
    live = engine.forget_live()
    engine.complete(PROMPTS[0], max_tokens=16, policy="auto")
    free = live.acceptance["0"].to_dict()
    engine.complete(PROMPTS[0], max_tokens=MAX_TOKENS, policy="auto",
                    constraint=Constraint.json_schema(SCHEMA))
    assert live.acceptance["0"].to_dict() == free
    assert live.acceptance["0+grammar"].to_dict() != free
    assert "0+grammar" in live.to_dict()["acceptance"]


def test_a_rejected_forced_prefix_ends_the_copy_chain() -> None:
    """`auto` decides a round as if its forced tokens were accepted; when the target rejects
    one, fewer tokens are emitted than the copier saw, and its chain must end (not move
    backwards)."""
    from svip_local.policies.lookup import Copier
    from svip_local.transcript import Transcript

    text = [5, 6, 7, 8, 9, 5, 6, 7]
    transcript = Transcript(text, capacity=32)
    copier = Copier()
    copy = copier.find(transcript, 4)
    assert copy is not None and list(copy.tokens)[:1] == [8]
    copier.advance(transcript, -2)
    assert copier._src == -1 and copier._evidence is None  # the chain ended
    assert copier.find(transcript, 4) is not None  # the next round searches afresh
