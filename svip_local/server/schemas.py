"""Request bodies of the OpenAI endpoints, validated strictly.

Strict types and `extra="forbid"`: a misspelled or unsupported parameter (`logprobs`, `n: 2`)
is a 400 that names it, never silently ignored, so a client does not believe it got a behaviour
it did not. Fields that clients send by default with a neutral value (`n: 1`, `user`, zero
penalties) are accepted so that they work without changes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from svip_local import MAX_SEED, Constraint, SamplingParams
from svip_local.tools import response_format_constraint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    """A content part; only text, since the models are text-only."""

    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # a JSON text, as OpenAI sends it; the chat layer parses it


class MessageToolCall(_Strict):
    """A call an earlier assistant message made, sent back as history."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # assistant only
    tool_call_id: str | None = None  # tool only: the call this message answers
    refusal: None = None  # in OpenAI's own assistant messages, so one can be sent back as is

    @model_validator(mode="after")
    def _fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"only tool messages carry a tool_call_id, not {self.role}")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only in an assistant message that "
                             "has tool_calls)")
        return self

    def as_template_message(self) -> dict[str, Any]:
        """The dict `stream_chat` takes: role and content (text, or None beside tool calls),
        plus `tool_calls` / `tool_call_id`; `developer` is OpenAI's newer name for `system`,
        which templates do not know."""
        text = self.content if self.content is None or isinstance(self.content, str) \
            else "".join(part.text for part in self.content)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": text}
        if self.tool_calls is not None:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema, checked by the chat layer
    strict: bool | None = None  # arguments are always held to the schema here


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: str
    # `schema` would shadow BaseModel.schema: the field is renamed, the JSON key is not.
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # output always matches the schema here


RESPONSE_FORMATS = ("text", "json_object", "json_schema")


class ResponseFormat(_Strict):
    # A plain string checked here, not a tagged union: its error names the unknown type.
    type: str
    json_schema: JsonSchemaFormat | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in RESPONSE_FORMATS:
            raise ValueError(f"unknown response_format type {value!r}; the types are "
                             + ", ".join(RESPONSE_FORMATS))
        return value

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only there")
        return self


class _GenerationRequest(_Strict):
    """Parameters shared by both endpoints; defaults are OpenAI's."""

    # One pair per server: its name or one of its aliases (`svip-local serve --model-alias`
    # for clients that hard-code a name); omitted, it means the served pair.
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # extension, as llama.cpp's server: 0 = off
    min_p: float = Field(0.0, ge=0, lt=1)  # extension, as llama.cpp's server
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = Field(None, max_length=4)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None  # OpenAI's end-user id: accepted, not used
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    grammar: str | None = None  # llama-cpp-python's extension: a GBNF grammar

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float) -> float:
        if value != 0:
            raise ValueError("repetition penalties are not supported (speculative decoding "
                             "needs the target's own distribution); use 0")
        return value

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, seed=self.seed)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def constraint(self) -> Constraint | None:
        """The output constraint the request asks for; a bad grammar raises ConstraintError."""
        return None if self.grammar is None else Constraint.gbnf(self.grammar)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens

    tools: list[Tool] | None = Field(None, min_length=1)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice = "auto"
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_constraint(self) -> ChatCompletionRequest:
        if self.grammar is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise ValueError("give response_format or grammar, not both")
        return self

    def token_limit(self) -> int | None:
        """None: until end of text or a full context, as OpenAI's default."""
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.as_template_message() for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """`tools` as stream_chat takes them (OpenAI's own dicts)."""
        if self.tools is None:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def tool_choice_value(self) -> str | dict[str, Any]:
        choice = self.tool_choice
        return choice if isinstance(choice, str) else choice.model_dump()

    def constraint(self) -> Constraint | None:
        """`grammar`, else `response_format` (`text`: none); bad ones raise ConstraintError."""
        if self.grammar is not None or self.response_format is None:
            return super().constraint()
        return response_format_constraint(self.response_format.model_dump(by_alias=True,
                                                                          exclude_none=True))


class CompletionRequest(_GenerationRequest):
    # A string, a one-string batch, or token ids; batches of several prompts are not supported.
    prompt: str | list[str] | list[int]
    max_tokens: int = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt is empty")
        if isinstance(value, list) and isinstance(value[0], str) and len(value) != 1:
            raise ValueError("only one prompt per request is supported")
        return value

    def engine_prompt(self) -> str | list[int]:
        """What Engine.generate takes: text (tokenized with the model's BOS rule) or ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        return [int(t) for t in prompt] if isinstance(prompt[0], int) else str(prompt[0])
