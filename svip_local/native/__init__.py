"""The one package that touches llama.cpp (through llama-cpp-python's low-level ctypes bindings).

Everything else in svip-local sees three small classes: `Model` (weights + vocabulary),
`Context` (a KV cache with the exact list of tokens it holds, and one reusable batch) and
`TextStream` (incremental detokenization). Native handles are freed deterministically through
`ExitStack`s, contexts before their model. One module per job, arrows pointing down: context,
model, then templates, devices and buffers, then log (llama.cpp's callbacks into Python).
"""

from svip_local.native.buffers import (
    EXTRA_BUFFER_TYPES,
    buffer_types_to_keep,
    use_extra_buffer_types,
)
from svip_local.native.context import MAX_BRANCHES, Context, Outputs, common_prefix
from svip_local.native.devices import (
    RPC_BUILD,
    cpu_cores,
    default_threads,
    gpu_name,
    supports_gpu_offload,
    supports_rpc,
)
from svip_local.native.grammar import grammar_tokenizer
from svip_local.native.model import Model, TextStream
from svip_local.native.templates import apply_builtin_chat_template, render_chat_template

__all__ = [
    "EXTRA_BUFFER_TYPES",
    "MAX_BRANCHES",
    "RPC_BUILD",
    "Context",
    "Model",
    "Outputs",
    "TextStream",
    "apply_builtin_chat_template",
    "buffer_types_to_keep",
    "common_prefix",
    "cpu_cores",
    "default_threads",
    "gpu_name",
    "grammar_tokenizer",
    "render_chat_template",
    "supports_gpu_offload",
    "supports_rpc",
    "use_extra_buffer_types",
]
