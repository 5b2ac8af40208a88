"""A llama.cpp context: a KV cache that knows exactly which tokens it holds, with one reusable
batch, decoding token chains and (for tree verification) token trees."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from enum import Enum

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt

from svip_local.errors import ContextFullError, DecodeError, EngineClosedError, ModelFileError
from svip_local.native.devices import default_threads, warn_oversubscribed
from svip_local.native.log import consume_recent_errors, interruptible
from svip_local.native.model import Model


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`."""
    n = min(len(a), len(b), limit)
    if list(a[:n]) == list(b[:n]):
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


# With hidden states on, a batch of at least this many tokens, of which only the last needs an
# output, is decoded as two (the rest without them): one more decode call costs less than the
# LM head on every extra row from about here on a CPU.
_HIDDEN_SPLIT = 8

MAX_BRANCHES = 64  # sequences a tree-verifying context is made for (llama.cpp allows 256)


class Outputs(Enum):
    NONE = 0
    LAST = 1
    ALL = 2


_DECODE_ERRORS = {
    2: "decoding was aborted",
    -1: "invalid batch (bad token id or positions out of step with the KV cache)",
    -2: "could not allocate memory for the batch",
    -3: "graph computation failed",
}


class Context:
    """A llama.cpp context on one sequence, which knows exactly which tokens its KV cache holds.

    `tokens[i]` is the token at KV position i. Keeping that list next to the cache is what lets
    the engine reuse prompt prefixes and trim rejected draft tokens with one `seq_rm`.

    With `branches` > 1 it also verifies token trees (`decode_tree`): between rounds the cache
    still holds sequence 0 alone, and during one the tree's branches are sequences 0..b-1 of
    a unified cache (`kv_unified`: one cell pool shared by all sequences, so the shared prefix
    is only tagged with every branch's id, never copied, and no sequence is limited to
    n_ctx / branches cells).
    """

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int = 512, n_ubatch: int = 512,
                 n_threads: int | None = None, n_threads_batch: int | None = None,
                 flash_attn: bool | None = None, branches: int = 1) -> None:
        self.model = model
        threads = n_threads or default_threads()
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        if not 1 <= branches <= MAX_BRANCHES:
            raise ValueError(f"branches must be 1..{MAX_BRANCHES}, got {branches}")
        params.n_seq_max = branches
        params.kv_unified = branches > 1
        params.n_threads = threads
        params.n_threads_batch = n_threads_batch or threads
        warn_oversubscribed(model.path, max(params.n_threads, params.n_threads_batch))
        params.flash_attn_type = {None: C.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                  True: C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  False: C.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        params.no_perf = True
        # Per-token last hidden states (`hidden`), when a policy turns them on: no pooling.
        params.pooling_type = C.LLAMA_POOLING_TYPE_NONE
        model.check_open()
        consume_recent_errors()
        ptr = interruptible(lambda: C.llama_init_from_model(model.ptr, params), C.llama_free)
        if not ptr:
            detail = consume_recent_errors() or "no detail from llama.cpp"
            raise ModelFileError(f"llama.cpp could not create a context for {model.path}: {detail}")
        self._stack = ExitStack()
        # Freed in reverse order of registration: the batch, then the context. The model's own
        # stack closes this one first, because the native context must go before its model.
        self._stack.callback(C.llama_free, ptr)
        self.ptr = ptr
        self.n_ctx: int = C.llama_n_ctx(ptr)
        self.n_batch: int = C.llama_n_batch(ptr)
        self._mem = C.llama_get_memory(ptr)
        self.branches = branches
        self._batch = C.llama_batch_init(self.n_batch, 0, branches)
        self._stack.callback(C.llama_batch_free, self._batch)
        n = self.n_batch
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        self._n_seq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._n_seq[:] = 1
        # Row i's sequence ids as a numpy view (a tree round writes them in bulk).
        self._seq_ids = [np.ctypeslib.as_array(self._batch.seq_id[i], shape=(branches,))
                         for i in range(n)]
        for ids in self._seq_ids:
            ids[0] = 0
        self._n_vocab = model.n_vocab
        self._n_embd = model.n_embd
        self.embeddings = False  # whether decodes also output last hidden states
        self.tokens: list[int] = []
        self.n_decoded = 0  # tokens decoded over the context's life: prefix reuse shows here
        self._closed = False
        model.on_close(self.close)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stack.close()

    @property
    def closed(self) -> bool:
        """Closed itself, or its model was (a model left behind by a lost server keeps it)."""
        return self._closed or self.model.closed

    def check_open(self) -> None:
        if self.closed:
            raise EngineClosedError(f"the context of {self.model.path.name} is closed")

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decode(self, tokens: Sequence[int], outputs: Outputs = Outputs.LAST) -> None:
        """Append `tokens` at the end of the cache, in chunks of n_batch.

        With LAST only the final token gets logits; ALL (one chunk at most) gives every row.
        """
        self.check_open()
        if not tokens:
            return
        if self.embeddings and outputs is not Outputs.ALL and (
                outputs is Outputs.NONE or len(tokens) >= _HIDDEN_SPLIT):
            # With hidden states on, llama.cpp outputs every row of a batch (logits too): a
            # prompt's catch-up would run the LM head on every token. Decode the rows that
            # need nothing with them off, and the last one (if wanted) with them on.
            head = tokens if outputs is Outputs.NONE else tokens[:-1]
            self.output_hidden(False)
            try:
                self.decode(head, Outputs.NONE)
            finally:
                self.output_hidden(True)
            if outputs is Outputs.LAST:
                self.decode(tokens[-1:], Outputs.LAST)
            return
        if outputs is Outputs.ALL and len(tokens) > self.n_batch:
            raise ValueError(f"{len(tokens)} tokens with all logits exceed n_batch {self.n_batch}")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise ContextFullError(
                f"the context holds {self.n_ctx} tokens; {len(self.tokens)} are used and "
                f"{len(tokens)} more do not fit")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            n = len(chunk)
            p0 = len(self.tokens)
            self._tok[:n] = chunk
            self._pos[:n] = np.arange(p0, p0 + n, dtype=np.int32)
            self._out[:n] = 1 if outputs is Outputs.ALL else 0
            if outputs is Outputs.LAST and start + n == len(tokens):
                self._out[n - 1] = 1
            self._batch.n_tokens = n
            self.model.check_remote()
            rc = C.llama_decode(self.ptr, self._batch)
            if rc != 0:
                self.ensure_consistent()
                if rc == 1:
                    raise ContextFullError("no KV cache slot for the batch (context full)")
                raise DecodeError(f"llama_decode returned {rc}: "
                                  f"{_DECODE_ERRORS.get(rc, 'unknown error')}")
            self.tokens.extend(chunk)
            self.n_decoded += n

    def synchronize(self) -> None:
        """Wait until the last decode has run. On asynchronous backends (GPUs, RPC servers)
        `llama_decode` returns once the work is queued and the wait falls on the next read
        of its logits; a timer that reads none must wait here, or each time it takes is
        partly the previous decode's."""
        self.check_open()
        C.llama_synchronize(self.ptr)

    def logits(self, index: int = -1) -> npt.NDArray[np.float32]:
        """Row `index` of the last batch (negative: from the end) as a zero-copy view.

        The view is only valid until the next decode: copy what must outlive it.
        """
        self.check_open()
        ptr = C.llama_get_logits_ith(self.ptr, index)
        if not ptr:
            raise DecodeError(f"no logits for batch row {index}")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def output_hidden(self, on: bool) -> None:
        """Make the following decodes also output each output row's last hidden state (the
        final norm's output, what the LM head reads) for `hidden`. Off by default: only a
        policy that reads them (`specdec`) turns it on. llama.cpp then outputs every row of
        a batch, so `decode` splits off what needs no output."""
        if on != self.embeddings:
            self.check_open()
            C.llama_set_embeddings(self.ptr, on)
            self.embeddings = on

    def hidden(self, index: int = -1) -> npt.NDArray[np.float32]:
        """Row `index`'s last hidden state of the last batch (decoded with `output_hidden`
        on), as a zero-copy view valid until the next decode."""
        self.check_open()
        ptr = C.llama_get_embeddings_ith(self.ptr, index) if self.embeddings else None
        if not ptr:
            raise DecodeError(f"no hidden state for batch row {index} (output_hidden is "
                              f"{'on' if self.embeddings else 'off'})")
        return np.ctypeslib.as_array(ptr, shape=(self._n_embd,))

    def truncate(self, n_keep: int) -> None:
        """Drop every cached token from position n_keep on (rejected drafts, edited turns)."""
        self.check_open()
        if n_keep >= len(self.tokens):
            return
        if not C.llama_memory_seq_rm(self._mem, 0, n_keep, -1):
            # Only recurrent models refuse partial removal: start over rather than corrupt.
            C.llama_memory_clear(self._mem, True)
            self.tokens.clear()
            return
        del self.tokens[n_keep:]

    def decode_tree(self, tokens: Sequence[int], depths: Sequence[int],
                    seqs: Sequence[Sequence[int]], n_branches: int) -> None:
        """Decode a token tree after the cache in ONE batch, every row with logits.

        Row i is `tokens[i]` at position len(self.tokens) + depths[i], in the sequences
        `seqs[i]` (those of every branch through it; row 0, the root, lies on all of them).
        llama.cpp lets a row attend to the cells of its first sequence, so each row sees the
        prefix and its own ancestors only. Rows come parents first. `keep_branch` must follow:
        until then the cache holds the whole tree and `tokens` does not list it.
        """
        self.check_open()
        n = len(tokens)
        if n_branches > self.branches:
            raise ValueError(f"a tree of {n_branches} branches needs a context made for as "
                             f"many (this one: {self.branches})")
        if n > self.n_batch:
            raise ValueError(f"a tree of {n} rows exceeds n_batch {self.n_batch}")
        p0 = len(self.tokens)
        if p0 + n > self.n_ctx:
            raise ContextFullError(
                f"the context holds {self.n_ctx} tokens; {p0} are used and a tree of {n} "
                "more does not fit")
        self.model.check_remote()
        for b in range(1, n_branches):  # the prefix is every branch's (a tag, not a copy)
            C.llama_memory_seq_cp(self._mem, 0, b, -1, -1)
        self._tok[:n] = tokens
        self._pos[:n] = depths
        self._pos[:n] += p0
        self._out[:n] = 1
        for i, ids in enumerate(seqs):
            self._n_seq[i] = len(ids)
            self._seq_ids[i][: len(ids)] = ids
        self._batch.n_tokens = n
        rc = C.llama_decode(self.ptr, self._batch)
        self._n_seq[:n] = 1  # back to what `decode` assumes: one sequence, 0
        for i in range(n):
            self._seq_ids[i][0] = 0
        if rc != 0:
            self._drop_branches(p0)
            if rc == 1:
                raise ContextFullError("no KV cache slot for the tree (context full)")
            raise DecodeError(f"llama_decode returned {rc}: "
                              f"{_DECODE_ERRORS.get(rc, 'unknown error')}")
        self.n_decoded += n

    def keep_branch(self, branch: int, path: Sequence[int], n_branches: int) -> None:
        """After `decode_tree`: keep the prefix and `path` (the tree's root and the accepted
        tokens, all on `branch`) as sequence 0, and nothing else in any sequence."""
        self.check_open()
        p0 = len(self.tokens)
        if n_branches > 1:
            C.llama_memory_seq_keep(self._mem, branch)  # every cell off that branch goes
            if branch != 0:
                C.llama_memory_seq_cp(self._mem, branch, 0, -1, -1)
                C.llama_memory_seq_rm(self._mem, branch, -1, -1)
        C.llama_memory_seq_rm(self._mem, 0, p0 + len(path), -1)
        self.tokens.extend(path)

    def _drop_branches(self, p0: int) -> None:
        """Undo a failed tree: every sequence but 0 emptied, sequence 0 back to p0 cells."""
        for b in range(1, self.branches):
            C.llama_memory_seq_rm(self._mem, b, -1, -1)
        C.llama_memory_seq_rm(self._mem, 0, p0, -1)

    def seq_cells(self, seq_id: int) -> tuple[int, int]:
        """(lowest, highest) position sequence `seq_id` holds, (-1, -1) when it holds none:
        what tests check to see that a tree left nothing behind."""
        self.check_open()
        return (int(C.llama_memory_seq_pos_min(self._mem, seq_id)),
                int(C.llama_memory_seq_pos_max(self._mem, seq_id)))

    def keep_prefix(self, tokens: Sequence[int], limit: int) -> int:
        """Trim the cache to its longest common prefix with `tokens` (at most `limit`
        tokens) and return that length: what a new sequence can reuse of the cached one."""
        keep = common_prefix(self.tokens, tokens, limit)
        self.truncate(keep)
        return keep

    def clear(self) -> None:
        self.check_open()
        self.model.check_remote()  # clearing remote buffers writes to the servers
        C.llama_memory_clear(self._mem, True)
        self.tokens.clear()

    def pos_max(self) -> int:
        """Highest position in the KV cache (-1 when empty), straight from llama.cpp."""
        self.check_open()
        return int(C.llama_memory_seq_pos_max(self._mem, 0))

    def ensure_consistent(self) -> None:
        """Make `tokens` and the KV cache agree again after a failed or interrupted decode.

        Some ubatches of a failed batch may have landed; llama.cpp's own position is the truth.
        A closed context has nothing left to agree with.
        """
        if self.closed:
            return
        n = self.pos_max() + 1
        if n < len(self.tokens):
            del self.tokens[n:]
        elif n > len(self.tokens):
            C.llama_memory_seq_rm(self._mem, 0, len(self.tokens), -1)
