"""Errors as the OpenAI API shapes them, so clients raise their usual exception types.

Every failure a request can meet ends here as `{"error": {"message", "type", "param", "code"}}`
with the status OpenAI uses: the official client maps 400/401/404/413/503 to distinct classes,
and assistants show `message` to the user as it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from svip_local import InvalidRequestError, PromptTooLongError, SvipError


class ApiError(Exception):
    """A request that ends with an error response (never a crash)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def from_engine_error(exc: SvipError, prompt_param: str | None = None) -> ApiError:
    """Engine errors caused by the request are the client's (400); the rest are ours (500).
    `prompt_param` names the request field that holds the prompt ("messages" or "prompt")."""
    if isinstance(exc, PromptTooLongError):
        return ApiError(400, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {exc}", kind="server_error")


def from_validation_error(exc: ValidationError) -> ApiError:
    """One readable message for pydantic's error list.

    Errors are grouped by the first offending top-level field; a union (e.g. `stop`) reports
    one error per member, so their common location is the parameter and their messages are
    joined.
    """
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, "We could not parse the JSON body of your request "
                             f"({first['msg']}). The body must be one JSON object.")
    if first["type"] == "extra_forbidden":
        param = _param(first["loc"])
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    group = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
    loc = first["loc"]
    for e in group[1:]:
        n = 0
        while n < min(len(loc), len(e["loc"])) and loc[n] == e["loc"][n]:
            n += 1
        loc = loc[:n]
    where_param = _param(loc) or None
    messages = list(dict.fromkeys(e["msg"] for e in group))[:3]
    where = f"Invalid value for '{where_param}': " if where_param else "Invalid request body: "
    return ApiError(400, where + " or ".join(messages), param=where_param)


def _param(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role', as OpenAI names nested parameters."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
