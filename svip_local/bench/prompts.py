"""Benchmark prompts: SpecBench rows as the SVIP paper fed them (raw text, first turn only, no
chat template), grouped into the paper's six categories.

SpecBench's MT-Bench part keeps MT-Bench's own eight categories (writing, roleplay, ...); the
paper reports them as one column, so they are folded into `mt-bench` here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from svip_local.errors import InvalidRequestError

CATEGORIES = ("mt-bench", "translation", "summarization", "qa", "math_reasoning", "rag")
_MT_BENCH = {"mt-bench", "mt_bench", "writing", "roleplay", "reasoning", "math", "coding",
             "extraction", "stem", "humanities"}
HF_PREFIX = "hf:"

# Used when no prompts file is given (calibration works out of the box). Two per category,
# written for this project; a real calibration set (SpecBench) chooses better.
_BUILTIN = {
    "mt-bench": [
        "Write a short blog post about a trip to Japan, covering food, temples and trains.",
        "Explain to a ten-year-old why the sky is blue, in three short paragraphs.",
    ],
    "translation": [
        "Translate German to English: Der Zug nach Berlin fährt heute eine Stunde später ab.",
        "Translate French to English: Nous avons visité le musée avant de dîner en ville.",
    ],
    "summarization": [
        "Summarize: The city council met on Tuesday to discuss the new bus routes. After two "
        "hours of debate, members agreed to add three lines serving the northern suburbs, "
        "paid for by a small rise in parking fees downtown. Work starts in the spring.",
        "Summarize: A local bakery has won a national award for its sourdough bread. The "
        "owners, who opened the shop ten years ago, credit their slow fermentation process "
        "and flour milled on a farm twenty miles away.",
    ],
    "qa": [
        "What is the capital of Australia, and why was it chosen?",
        "How many bones does an adult human have?",
    ],
    "math_reasoning": [
        "A shop sells pencils at 3 for $1. How much do 27 pencils cost? Explain step by step.",
        "Tom is twice as old as his sister. In five years the sum of their ages will be 40. "
        "How old is Tom now?",
    ],
    "rag": [
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 "
        "metres tall and was the tallest man-made structure until 1930.\nQuestion: When was "
        "the Eiffel Tower completed and how tall is it?",
        "Python was created by Guido van Rossum and first released in 1991. Its design "
        "stresses readability.\nQuestion: Who created Python?",
    ],
}


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt: `text` goes to the model as it is. A chat prompt's text is its
    conversation (`messages`) rendered with the pair's chat template: its special tokens are
    parsed, and where each message starts is evidence for copies."""

    id: str
    category: str
    text: str
    messages: tuple[dict[str, str], ...] = ()

    @property
    def chat(self) -> bool:
        return bool(self.messages)


def normalize_category(name: str) -> str:
    key = name.strip().lower()
    return "mt-bench" if key in _MT_BENCH else key


def builtin_prompts() -> list[Prompt]:
    return [Prompt(f"builtin-{cat}-{i}", cat, text)
            for cat, texts in _BUILTIN.items() for i, text in enumerate(texts)]


def load_prompts(source: str | Path | None) -> list[Prompt]:
    """Prompts from a SpecBench-style jsonl (`turns` or `prompt`, `category`, `question_id`),
    `hf:OWNER/REPO/PATH` (a file of a Hugging Face dataset repo), or the built-in set (None).
    """
    if source is None:
        return builtin_prompts()
    text = str(source)
    path = _download_hf(text[len(HF_PREFIX):]) if text.startswith(HF_PREFIX) else Path(text)
    if not path.is_file():
        raise InvalidRequestError(f"prompts file not found: {path}")
    return parse_prompts(path.read_text(encoding="utf-8").splitlines(), origin=str(path))


def parse_prompts(lines: Iterable[str], *, origin: str = "<prompts>") -> list[Prompt]:
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = row.get("turns")
            text = turns[0] if turns else row["prompt"]
            category = normalize_category(row.get("category", "uncategorized"))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InvalidRequestError(f"{origin}:{n}: not a prompt row ({exc})") from exc
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(f"{origin}:{n}: the prompt is empty or not text")
        prompts.append(Prompt(str(row.get("question_id", n)), category, text))
    if not prompts:
        raise InvalidRequestError(f"{origin}: no prompts")
    return prompts


def select(prompts: Sequence[Prompt], per_category: int, *, categories: Sequence[str] = (),
           from_end: bool = False) -> list[Prompt]:
    """The first (or last) `per_category` prompts of each category, in category order (the
    file's order for categories SpecBench lacks).

    Benchmarks take them from the start and calibration from the end, so that calibrating
    on a file and benchmarking on the same file use different prompts.
    """
    wanted = list(categories) or [c for c in CATEGORIES if any(p.category == c for p in prompts)]
    if not wanted:
        wanted = list(dict.fromkeys(p.category for p in prompts))  # in the file's order
    chosen = []
    for cat in wanted:
        rows = [p for p in prompts if p.category == cat]
        if not rows:
            raise InvalidRequestError(f"no prompts of category {cat!r}")
        chosen += rows[::-1][:per_category][::-1] if from_end else rows[:per_category]
    return chosen


def _download_hf(spec: str) -> Path:
    """`OWNER/REPO/PATH/IN/REPO.jsonl` of a dataset repo, through huggingface_hub's cache."""
    parts = spec.split("/", 2)
    if len(parts) != 3:
        raise InvalidRequestError(f"expected hf:OWNER/REPO/PATH, got hf:{spec}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(f"{parts[0]}/{parts[1]}", parts[2], repo_type="dataset"))
