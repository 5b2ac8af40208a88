"""Can this draft speculate for this target? llama.cpp's own pairing rules, checked from Python.

The rules are those of llama.cpp's `common_speculative_are_compatible` (common/speculative.cpp):
same vocabulary type, same BOS/EOS handling, sizes within 128 (padding rows differ between model
sizes of one family) and identical token text from id 5 on. We also compare EOT, since the
engine stops on it.
"""

from __future__ import annotations

from svip_local.errors import IncompatiblePairError
from svip_local.native import Model

MAX_VOCAB_SIZE_DIFFERENCE = 128
FIRST_CHECKED_TOKEN = 5


def check_pair(target: Model, draft: Model) -> None:
    """Raise IncompatiblePairError naming the first difference, or return quietly."""
    problems: list[str] = []
    if target.vocab_type != draft.vocab_type:
        problems.append(f"vocabulary type {target.vocab_type.name} vs {draft.vocab_type.name}")
    t, d = target.special, draft.special
    if t.add_bos != d.add_bos or (t.add_bos and t.bos != d.bos):
        problems.append(f"BOS handling (add_bos {t.add_bos}/{d.add_bos}, bos {t.bos}/{d.bos})")
    if t.add_eos != d.add_eos or t.eos != d.eos:
        problems.append(f"EOS token {t.eos} vs {d.eos}")
    if t.eot != d.eot:
        problems.append(f"EOT token {t.eot} vs {d.eot}")
    if abs(target.n_vocab - draft.n_vocab) > MAX_VOCAB_SIZE_DIFFERENCE:
        problems.append(f"vocabulary size {target.n_vocab} vs {draft.n_vocab} "
                        f"(more than {MAX_VOCAB_SIZE_DIFFERENCE} apart)")
    if not problems:
        for tok in range(FIRST_CHECKED_TOKEN, min(target.n_vocab, draft.n_vocab)):
            a, b = target.token_text(tok), draft.token_text(tok)
            if a != b:
                problems.append(f"token {tok} is {a!r} in the target but {b!r} in the draft")
                break
    if problems:
        raise IncompatiblePairError(
            f"draft {draft.path.name} cannot speculate for target {target.path.name}: "
            + "; ".join(problems)
            + ". Use a draft from the same model family (same tokenizer).")
