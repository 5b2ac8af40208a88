"""Request bodies of the OpenAI endpoints, validated strictly.

Strict types and `extra="forbid"`: a misspelled or unsupported parameter (`logprobs`, `tools`)
is a 400 that names it, never silently ignored, so a client does not believe it got a behaviour
it did not. Fields that clients send by default with a neutral value (`n: 1`, `user`, zero
penalties) are accepted so that they work without changes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from svip_local import MAX_SEED, SamplingParams


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    """A content part; only text, since the models are text-only."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict[str, str]:
        """The {role, content} dict chat templates expect; `developer` is OpenAI's newer name
        for `system`, which templates do not know."""
        text = self.content if isinstance(self.content, str) \
            else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


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


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens

    def token_limit(self) -> int | None:
        """None: until end of text or a full context, as OpenAI's default."""
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        return [m.as_template_message() for m in self.messages]


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
