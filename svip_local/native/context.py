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

MAX_BRANCHES = 64  # sequences a tree-verifying slot is made for
MAX_SEQUENCES = 256  # llama.cpp's limit on a context's sequences (LLAMA_MAX_SEQ)


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
    """A llama.cpp context of `slots` sequences, which knows exactly which tokens each holds.

    `slot_tokens(s)[i]` is the token at KV position i of slot s (`tokens`: slot 0's). Keeping
    those lists next to the cache is what lets the engine reuse prompt prefixes and trim
    rejected draft tokens with one `seq_rm`. Each slot holds up to `n_ctx` tokens.

    Rows of several slots go into one decode (`add_chain`, `add_tree`, `run_batch`): that is
    how concurrent requests share a verification. With `branches` > 1 it also verifies token
    trees: slot s owns sequence ids s*branches .. (s+1)*branches-1; between rounds it holds
    the first alone, during one the tree's branches are the others. The cache is unified
    (`kv_unified`: one cell pool shared by all sequences, so a shared prefix is only tagged
    with every branch's id, never copied, and a row may lie on several sequences, which
    per-sequence streams forbid) whenever it holds more than one sequence.
    """

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int = 512, n_ubatch: int = 512,
                 n_threads: int | None = None, n_threads_batch: int | None = None,
                 flash_attn: bool | None = None, branches: int = 1, slots: int = 1) -> None:
        self.model = model
        threads = n_threads or default_threads()
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_batch = n_batch
        params.n_ubatch = min(n_ubatch, n_batch)
        if not 1 <= branches <= MAX_BRANCHES:
            raise ValueError(f"branches must be 1..{MAX_BRANCHES}, got {branches}")
        if not 1 <= slots * branches <= MAX_SEQUENCES:
            raise ValueError(f"{slots} slots of {branches} branches exceed llama.cpp's "
                             f"{MAX_SEQUENCES} sequences")
        params.n_seq_max = slots * branches
        params.kv_unified = slots * branches > 1
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
        self.n_ctx: int = C.llama_n_ctx(ptr) // slots  # what one slot may hold
        self.n_batch: int = C.llama_n_batch(ptr)
        self._mem = C.llama_get_memory(ptr)
        self.branches, self.slots = branches, slots
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
        self._tokens: list[list[int]] = [[] for _ in range(slots)]
        self._rows = 0  # rows in the batch being built
        self.last_rows = 0  # rows of the last batch decoded
        self.last_trees = self.last_tree_rows = 0  # the trees (verifications) in it, their rows
        # The batch being built: (slot, tokens to append on success) per chain; trees
        # (slot, cells before it, branches, rows) are kept with `keep_branch`.
        self._chains: list[tuple[int, Sequence[int]]] = []
        self._trees: list[tuple[int, int, int, int]] = []
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

    @property
    def tokens(self) -> list[int]:
        """Slot 0's tokens (a context of one slot: its tokens)."""
        return self._tokens[0]

    def slot_tokens(self, slot: int) -> list[int]:
        """The tokens slot `slot` holds, position by position (the list itself: read only)."""
        return self._tokens[slot]

    def decode(self, tokens: Sequence[int], outputs: Outputs = Outputs.LAST,
               slot: int = 0) -> None:
        """Append `tokens` at the end of the slot's cache, in chunks of n_batch, alone.

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
                self.decode(head, Outputs.NONE, slot)
            finally:
                self.output_hidden(True)
            if outputs is Outputs.LAST:
                self.decode(tokens[-1:], Outputs.LAST, slot)
            return
        if outputs is Outputs.ALL and len(tokens) > self.n_batch:
            raise ValueError(f"{len(tokens)} tokens with all logits exceed n_batch {self.n_batch}")
        self._check_room(slot, len(tokens), "")
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = outputs is Outputs.LAST and start + len(chunk) == len(tokens)
            self.add_chain(chunk, Outputs.LAST if last else
                           Outputs.ALL if outputs is Outputs.ALL else Outputs.NONE, slot)
            self.run_batch()

    # -- one batch for several slots ------------------------------------------------------

    @property
    def rows_free(self) -> int:
        """Rows the batch being built can still take."""
        return self.n_batch - self._rows

    @property
    def batch_rows(self) -> int:
        """Rows in the batch being built."""
        return self._rows

    def add_chain(self, tokens: Sequence[int], outputs: Outputs, slot: int) -> int:
        """Queue `tokens` after slot `slot`'s cache in the batch being built; return the
        first one's row (its logits' index once `run_batch` ran). They must fit the batch."""
        n, r = len(tokens), self._rows
        if n > self.n_batch - r:
            raise ValueError(f"{n} rows do not fit the batch ({self.n_batch - r} free)")
        queued = sum(len(t) for s, t in self._chains if s == slot)  # earlier in this batch
        self._check_room(slot, n + queued, "")
        p0 = len(self._tokens[slot]) + queued
        self._tok[r:r + n] = tokens
        self._pos[r:r + n] = np.arange(p0, p0 + n, dtype=np.int32)
        self._out[r:r + n] = 1 if outputs is Outputs.ALL else 0
        if outputs is Outputs.LAST:
            self._out[r + n - 1] = 1
        base = slot * self.branches
        for i in range(r, r + n):
            self._seq_ids[i][0] = base
        self._rows += n
        self._chains.append((slot, tokens))
        return r

    def add_tree(self, tokens: Sequence[int], depths: Sequence[int],
                 seqs: Sequence[Sequence[int]], n_branches: int, slot: int) -> int:
        """Queue a token tree after slot `slot`'s cache, every row with logits; return its
        root's row.

        Row i is `tokens[i]` at position len(slot's tokens) + depths[i], in the slot's
        branches `seqs[i]` (those of every branch through it; row 0, the root, lies on all of
        them). llama.cpp lets a row attend to the cells of its first sequence, so each row
        sees the prefix and its own ancestors only. Rows come parents first. `keep_branch`
        must follow: until then the cache holds the whole tree and the slot does not list it.
        """
        self.check_open()
        n, r = len(tokens), self._rows
        if n_branches > self.branches:
            raise ValueError(f"a tree of {n_branches} branches needs a context made for as "
                             f"many (this one: {self.branches})")
        if n > self.n_batch - r:
            raise ValueError(f"a tree of {n} rows exceeds the batch's {self.n_batch - r} "
                             "free rows")
        p0 = len(self._tokens[slot])
        self._check_room(slot, n, "a tree of ")
        self.model.check_remote()
        base = slot * self.branches
        for b in range(1, n_branches):  # the prefix is every branch's (a tag, not a copy)
            C.llama_memory_seq_cp(self._mem, base, base + b, -1, -1)
        self._tok[r:r + n] = tokens
        self._pos[r:r + n] = depths
        self._pos[r:r + n] += p0
        self._out[r:r + n] = 1
        for i, ids in enumerate(seqs, r):
            self._n_seq[i] = len(ids)
            self._seq_ids[i][: len(ids)] = ids
            self._seq_ids[i][: len(ids)] += base
        self._rows += n
        self._trees.append((slot, p0, n_branches, n))
        return r

    def run_batch(self) -> None:
        """Decode the batch being built. On failure every chain in it is undone to what
        llama.cpp holds and every tree dropped, and the error raised."""
        n, chains, trees = self._rows, self._chains, self._trees
        if n == 0:
            return
        self._rows, self._chains, self._trees = 0, [], []
        try:
            self.check_open()
            self.model.check_remote()
            self._batch.n_tokens = n
            rc = C.llama_decode(self.ptr, self._batch)
        finally:
            if trees:  # back to what `add_chain` assumes: one sequence per row
                self._n_seq[:n] = 1
        if rc != 0:
            for slot, p0, _, _ in trees:
                self._drop_branches(slot, p0)
            self.ensure_consistent()
            if rc == 1:
                raise ContextFullError("no KV cache slot for the batch (context full)")
            raise DecodeError(f"llama_decode returned {rc}: "
                              f"{_DECODE_ERRORS.get(rc, 'unknown error')}")
        for slot, tokens in chains:
            self._tokens[slot].extend(tokens)
        self.n_decoded += n
        self.last_rows = n
        self.last_trees, self.last_tree_rows = len(trees), sum(t[3] for t in trees)

    def _check_room(self, slot: int, n: int, what: str) -> None:
        used = len(self._tokens[slot])
        if used + n > self.n_ctx:
            raise ContextFullError(
                f"the context holds {self.n_ctx} tokens; {used} are used and {what}{n} "
                "more do not fit")

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

    def truncate(self, n_keep: int, slot: int = 0) -> None:
        """Drop every token the slot holds from position n_keep on (rejected drafts, edited
        turns)."""
        self.check_open()
        tokens = self._tokens[slot]
        if n_keep >= len(tokens):
            return
        if not C.llama_memory_seq_rm(self._mem, slot * self.branches, n_keep, -1):
            # Only recurrent models refuse partial removal: start over rather than corrupt.
            C.llama_memory_seq_rm(self._mem, slot * self.branches, -1, -1)
            tokens.clear()
            return
        del tokens[n_keep:]

    def decode_tree(self, tokens: Sequence[int], depths: Sequence[int],
                    seqs: Sequence[Sequence[int]], n_branches: int, slot: int = 0) -> None:
        """A token tree in a batch of its own (`add_tree`)."""
        self.add_tree(tokens, depths, seqs, n_branches, slot)
        self.run_batch()

    def keep_branch(self, branch: int, path: Sequence[int], n_branches: int,
                    slot: int = 0) -> None:
        """After a tree's batch: keep the prefix and `path` (the tree's root and the accepted
        tokens, all on `branch`) as the slot's sequence, and nothing else in its branches."""
        self.check_open()
        tokens, base = self._tokens[slot], slot * self.branches
        p0 = len(tokens)
        if n_branches > 1:
            if branch != 0:
                C.llama_memory_seq_rm(self._mem, base, p0, -1)
                C.llama_memory_seq_cp(self._mem, base + branch, base, p0, -1)
            for b in range(1, n_branches):
                C.llama_memory_seq_rm(self._mem, base + b, -1, -1)
        C.llama_memory_seq_rm(self._mem, base, p0 + len(path), -1)
        tokens.extend(path)

    def _drop_branches(self, slot: int, p0: int) -> None:
        """Undo a failed tree: the slot's branches emptied, its sequence back to p0 cells."""
        base = slot * self.branches
        for b in range(1, self.branches):
            C.llama_memory_seq_rm(self._mem, base + b, -1, -1)
        C.llama_memory_seq_rm(self._mem, base, p0, -1)

    def seq_cells(self, seq_id: int) -> tuple[int, int]:
        """(lowest, highest) position sequence `seq_id` holds, (-1, -1) when it holds none:
        what tests check to see that a tree left nothing behind."""
        self.check_open()
        return (int(C.llama_memory_seq_pos_min(self._mem, seq_id)),
                int(C.llama_memory_seq_pos_max(self._mem, seq_id)))

    def keep_prefix(self, tokens: Sequence[int], limit: int, slot: int = 0) -> int:
        """Trim the slot to its longest common prefix with `tokens` (at most `limit`
        tokens) and return that length: what a new sequence can reuse of the cached one."""
        keep = common_prefix(self._tokens[slot], tokens, limit)
        self.truncate(keep, slot)
        return keep

    def clear(self) -> None:
        """Empty every slot."""
        self.check_open()
        self.model.check_remote()  # clearing remote buffers writes to the servers
        C.llama_memory_clear(self._mem, True)
        for tokens in self._tokens:
            tokens.clear()

    def pos_max(self, slot: int = 0) -> int:
        """Highest position in the slot's sequence (-1 when empty), straight from llama.cpp."""
        self.check_open()
        return int(C.llama_memory_seq_pos_max(self._mem, slot * self.branches))

    def ensure_consistent(self, slot: int | None = None) -> None:
        """Make the slot's (every slot's) token list and the KV cache agree again after a
        failed or interrupted decode.

        Some ubatches of a failed batch may have landed; llama.cpp's own position is the truth,
        and no branch of a tree outlives its round. A closed context has nothing left to agree
        with.
        """
        if self.closed:
            return
        for s in range(self.slots) if slot is None else (slot,):
            for b in range(1, self.branches):  # a tree left behind by an interrupted round
                C.llama_memory_seq_rm(self._mem, s * self.branches + b, -1, -1)
            tokens = self._tokens[s]
            n = self.pos_max(s) + 1
            if n < len(tokens):
                del tokens[n:]
            elif n > len(tokens):
                C.llama_memory_seq_rm(self._mem, s * self.branches, len(tokens), -1)
