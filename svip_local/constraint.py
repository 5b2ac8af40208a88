"""What a generation's output must match: a JSON Schema, a regex, a Lark or GBNF grammar, or
the tool-call syntax of a chat (`svip_local.tools`), compiled to an llguidance grammar.

A `Constraint` is plain data, checked where it is made (a bad schema or grammar raises
`ConstraintError` naming the problem before any work); the engine compiles it against the
model's vocabulary once per request (`svip_local.grammar`). JSON is written without free
whitespace and with the separators `", "` and `": "`: how the pair's own template renders tool
calls (Transformers' `tojson`), so a re-rendered history matches the generated tokens, and
deterministic, so the grammar forces more of the tokens (free proposals in the round).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
from llguidance import LLMatcher, grammar_from

from svip_local.errors import ConstraintError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# llguidance's JSON options (its `x-guidance`); a schema's own `x-guidance` may override them.
JSON_FORMAT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ",
                                   "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """A compiled-to-text grammar and how the round may use it.

    `grammar`: llguidance's grammar text. `schema`: the JSON Schema of a JSON kind (what an
    output is validated against). `lazy`: free text until a trigger (tool calls), so stop
    strings still apply. `forced_tokens` / `draft_mask`: the speculation aids (the tokens the
    grammar leaves no choice about proposed without a draft step; draft tokens drawn from the
    draft's masked logits), on by default; benchmarks turn them off to measure each one.
    """

    kind: str
    grammar: str
    schema: Mapping[str, Any] | None = None
    lazy: bool = False
    forced_tokens: bool = True
    draft_mask: bool = True

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Constraint:
        """JSON matching `schema` (a dict or its JSON text); properties in its order."""
        parsed = _parse_schema(schema)
        return cls("json_schema", _schema_grammar(json.dumps(parsed)), parsed)

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        schema = {"type": "object"}
        return cls("json_object", _schema_grammar(json.dumps(schema)), schema)

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Text that the whole regex (Rust `regex` syntax, anchored) matches."""
        return cls("regex", _checked(LLMatcher.grammar_from_regex(pattern), "regex"))

    @classmethod
    def lark(cls, text: str) -> Constraint:
        """A Lark grammar in llguidance's dialect (`start:` is the first rule)."""
        return cls("lark", _checked(LLMatcher.grammar_from_lark(text), "Lark grammar"))

    @classmethod
    def gbnf(cls, text: str) -> Constraint:
        """A GBNF grammar, llama.cpp's format (`root ::= ...`)."""
        try:
            grammar = grammar_from("gbnf", text)
        except ValueError as exc:  # its message names the line
            raise ConstraintError(f"GBNF grammar: {exc}") from None
        return cls("gbnf", _checked(grammar, "GBNF grammar"))

    @classmethod
    def of_grammar(cls, kind: str, grammar: str, *, lazy: bool = False) -> Constraint:
        """A grammar built elsewhere (`svip_local.tools`), checked like the others."""
        return cls(kind, _checked(grammar, f"{kind} grammar"), lazy=lazy)

    def without(self, *, forced_tokens: bool = True, draft_mask: bool = True) -> Constraint:
        """This constraint with the speculation aids given as False turned off."""
        return dataclasses.replace(self, forced_tokens=self.forced_tokens and forced_tokens,
                                   draft_mask=self.draft_mask and draft_mask)

    def describe(self) -> str:
        off = [name for name, on in (("forced tokens", self.forced_tokens),
                                     ("draft mask", self.draft_mask)) if not on]
        return self.kind + (f" (no {', no '.join(off)})" if off else "")


def check_schema(schema: Mapping[str, Any] | str) -> dict[str, Any]:
    """The schema as a dict, valid and supported (compiled once, cached), or ConstraintError."""
    parsed = _parse_schema(schema)
    _schema_grammar(json.dumps(parsed))
    return parsed


def _parse_schema(schema: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConstraintError(f"the JSON Schema is not valid JSON: {exc}") from None
    if not isinstance(schema, Mapping):
        raise ConstraintError(
            f"a JSON Schema must be an object, got {type(schema).__name__}: {schema!r:.80}")
    parsed = dict(schema)
    try:
        jsonschema.validators.validator_for(parsed).check_schema(parsed)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise ConstraintError(f"invalid JSON Schema at {where}: {exc.message}") from None
    return parsed


@functools.lru_cache(maxsize=256)
def _schema_grammar(schema_json: str) -> str:
    """A schema's grammar, cached by its content (the same schema per request is common)."""
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema_json, defaults=JSON_FORMAT)
    except ValueError as exc:
        raise ConstraintError(f"JSON Schema: {exc}") from None
    return _checked(grammar, "JSON Schema")


def _checked(grammar: str, what: str) -> str:
    """The grammar, or ConstraintError with llguidance's reason (a feature it does not support,
    an unsatisfiable schema, a syntax error with its line and column)."""
    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        reason = messages[0].strip() if messages else "rejected"
        raise ConstraintError(f"{what}: {reason}")
    return grammar
