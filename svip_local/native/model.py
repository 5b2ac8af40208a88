"""A loaded GGUF: its weights (on this machine's devices or RPC servers') and its vocabulary,
with `TextStream` to turn its tokens into text as they come."""

from __future__ import annotations

import codecs
import ctypes
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import llama_cpp.llama_cpp as C

from svip_local import rpc
from svip_local.errors import EngineClosedError, InvalidRequestError, ModelFileError
from svip_local.native.buffers import use_extra_buffer_types
from svip_local.native.devices import local_gpu_devices, rpc_add_server, rpc_devices
from svip_local.native.log import consume_recent_errors, interruptible, load_progress


def _check_gguf_file(path: Path) -> None:
    """Fail with a specific message before llama.cpp sees a file it would reject vaguely."""
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise ModelFileError(f"not a GGUF file (bad magic {magic!r}): {path}")


class VocabType(Enum):
    NONE = 0
    SPM = 1
    BPE = 2
    WPM = 3
    UGM = 4
    RWKV = 5
    PLAMO2 = 6
    TEST = 7


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    eot: int
    add_bos: bool
    add_eos: bool


class Model:
    """A loaded GGUF: weights (possibly offloaded) and its vocabulary."""

    def __init__(self, path: str | os.PathLike[str], *, n_gpu_layers: int = -1,
                 vocab_only: bool = False, rpc_servers: Sequence[str] = ()) -> None:
        """`rpc_servers` ("HOST:PORT"): split the offloaded layers across those servers'
        devices, first, and this machine's GPUs, as llama.cpp's `--rpc` does."""
        self.path = Path(path)
        _check_gguf_file(self.path)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self.rpc_servers = tuple(rpc_servers)
        peers: dict[str, tuple[str, int]] = {}
        if self.rpc_servers:
            rpc_add_server()  # a build without RPC says so before anything connects
            # llama.cpp aborts the process on a server that is not there: try each first.
            peers = {e: rpc.handshake(e) for e in self.rpc_servers}
            devices = [d for e in self.rpc_servers for d in rpc_devices(e)]
            devices += local_gpu_devices()
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            params.devices = ctypes.addressof(self._devices)
        params.vocab_only = vocab_only
        params.use_extra_bufts = use_extra_buffer_types()  # see EXTRA_BUFFER_TYPES
        params.progress_callback = load_progress
        consume_recent_errors()
        # Ctrl-C while loading: stop here, nothing kept.
        ptr = interruptible(lambda: C.llama_model_load_from_file(str(self.path).encode(),
                                                                 params), C.llama_model_free)
        if not ptr:
            detail = consume_recent_errors() or "no detail from llama.cpp"
            raise ModelFileError(f"llama.cpp could not load {self.path}: {detail}")
        self._stack = ExitStack()
        self._stack.callback(self._mark_closed)
        self._stack.callback(C.llama_model_free, ptr)
        self.closed = False
        self.ptr = ptr
        # The connections llama.cpp now holds to the servers, watched between decodes.
        self.links = rpc.Links.find(peers) if peers else None
        self.n_gpu_layers = n_gpu_layers
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab: int = C.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = C.llama_model_n_ctx_train(ptr)
        self.n_layer: int = C.llama_model_n_layer(ptr)
        self.n_embd: int = C.llama_model_n_embd(ptr)  # width of the last hidden state
        self.vocab_type = VocabType(C.llama_vocab_type(self.vocab))
        self.special = SpecialTokens(
            bos=C.llama_vocab_bos(self.vocab), eos=C.llama_vocab_eos(self.vocab),
            eot=C.llama_vocab_eot(self.vocab), add_bos=bool(C.llama_vocab_get_add_bos(self.vocab)),
            add_eos=bool(C.llama_vocab_get_add_eos(self.vocab)),
        )
        self._pieces: dict[int, bytes] = {}

    @property
    def kv_bytes_per_token(self) -> int:
        """What one cached token costs: an F16 K and V cell per layer and KV head. (Asked
        only of a model with weights: llama.cpp aborts on a vocabulary-only one.)"""
        self.check_open()
        head: int = self.n_embd // max(1, int(C.llama_model_n_head(self.ptr)))
        return 4 * self.n_layer * int(C.llama_model_n_head_kv(self.ptr)) * head

    def close(self) -> None:
        if self.links is not None:
            self.links.forget()
            if self.links.lost is not None:
                # Freeing remote buffers writes to the dead server, and llama.cpp aborts on
                # that: the native model and its contexts are left behind, unreachable.
                self._stack.pop_all()
                self._mark_closed()
                return
        self._stack.close()

    def _mark_closed(self) -> None:
        self.closed = True

    def check_remote(self) -> None:
        """Raise `RemoteServerError` if a server this model is split across hung up: before
        llama.cpp writes to it (which would abort the process)."""
        if self.links is not None:
            self.links.check()

    def check_open(self) -> None:
        """Raise instead of letting llama.cpp touch freed memory (which aborts the process)."""
        if self.closed:
            raise EngineClosedError(f"the model {self.path.name} is closed")

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, callback: object) -> None:
        """Run `callback` before the model is freed (contexts must go first)."""
        self._stack.callback(callback)  # type: ignore[arg-type]

    def meta(self, key: str) -> str | None:
        self.check_open()
        buf = ctypes.create_string_buffer(4096)
        n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def name(self) -> str:
        return self.meta("general.name") or self.path.name

    def chat_template(self) -> str | None:
        self.check_open()
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = False) -> list[int]:
        self.check_open()
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8
            raise InvalidRequestError(
                f"the text is not valid Unicode at character {exc.start} ({exc.reason}): "
                "undecodable bytes reached it; decode them first (e.g. errors='replace')"
            ) from exc
        n = C.llama_tokenize(self.vocab, data, len(data), None, 0, add_special, parse_special)
        size = -n if n < 0 else n
        buf = (C.llama_token * max(size, 1))()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            raise ValueError(f"tokenization failed ({n}) for text of {len(data)} bytes")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the text (empty for control tokens); may be partial UTF-8."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        out = buf.raw[:n]
        self._pieces[token] = out
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> bytes:
        """The raw vocabulary entry (e.g. with BPE 'Ġ' markers): what pair checks compare."""
        self.check_open()
        return C.llama_vocab_get_text(self.vocab, token) or b""

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))


class TextStream:
    """Turns tokens into text as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self, model: Model) -> None:
        self._model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._model.piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
