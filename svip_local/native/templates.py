"""Chat templates rendered as llama.cpp and llama-cpp-python render them: a GGUF's Jinja
template, or one of llama.cpp's built-in C++ ones for a GGUF without."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp.llama_cpp as C
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


def render_chat_template(template: str, messages: Sequence[dict[str, Any]], *, bos_token: str,
                         eos_token: str, add_generation_prompt: bool = True,
                         tools: Sequence[dict[str, Any]] | None = None) -> str:
    """Render a GGUF's Jinja chat template exactly as llama-cpp-python does (sandboxed jinja2,
    Transformers-compatible `tojson`, `{% generation %}` tags ignored); `tools` in OpenAI's
    format for a template that takes them."""
    formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token,
                                    add_generation_prompt=add_generation_prompt)
    return formatter(messages=list(messages),  # type: ignore[arg-type]
                     tools=list(tools) if tools else None).prompt  # type: ignore[arg-type]


def apply_builtin_chat_template(name: str, messages: Sequence[dict[str, str]], *,
                                add_generation_prompt: bool = True) -> str:
    """llama.cpp's own C++ templates ("chatml", "llama3", ...), for GGUFs without Jinja."""
    arr = (C.llama_chat_message * len(messages))()
    keep = []  # the C structs borrow these bytes
    for i, m in enumerate(messages):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    size = 1024 + sum(len(b) for b in keep) * 2
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = C.llama_chat_apply_template(name.encode(), arr, len(messages),
                                        add_generation_prompt, buf, size)
        if n < 0:
            raise ValueError(f"llama.cpp has no built-in chat template named {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n
    raise ValueError("chat template output kept growing")
