"""`svip-local generate`: one completion from a registry pair or explicit GGUF paths."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svip_local import Constraint, Done, InvalidRequestError, SamplingParams, Token, load
from svip_local.policies import policy_help

if TYPE_CHECKING:
    from svip_local import Engine


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The ways to name a pair, shared by every command that loads one."""
    parser.add_argument("name", nargs="?", help="a pair from the registry (svip-local list)")
    parser.add_argument("--target", help="target GGUF path (instead of a registry name)")
    parser.add_argument("--draft", help="draft GGUF path (omit for the target alone)")
    parser.add_argument("--n-gpu-layers", type=int, default=-1,
                        help="layers to offload to the GPU, -1 = all (default)")
    parser.add_argument("--draft-n-gpu-layers", type=int, default=None,
                        help="the draft's own offload (default: same as --n-gpu-layers)")
    parser.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT...]", default=None,
                        help="llama.cpp RPC servers to split the target's offloaded layers "
                             "across (needs llama-cpp-python built with -DGGML_RPC=on; the "
                             "protocol has no authentication: trusted networks only)")
    parser.add_argument("--draft-rpc", metavar="HOST:PORT[,...]", default=None,
                        help="RPC servers for the draft (rarely useful: it is small)")
    parser.add_argument("--n-ctx", type=int, default=None, help="context size in tokens")
    parser.add_argument("--parallel", type=int, default=None, metavar="N",
                        help="requests generated at once, each in a slot of --n-ctx tokens "
                             "(default 1; serve: chosen for this machine's memory, at most 4)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per model")
    parser.add_argument("--pull", action="store_true",
                        help="download the registry pair first if it is missing")
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the few seconds of timing `auto` does on a machine it has "
                             "no record of (it then starts from defaults and learns)")


def open_engine(args: argparse.Namespace, *, policy: str | None = None,
                parallel: int | None = 1) -> Engine:
    """The engine a command asked for (registry name or --target/--draft), through `load`;
    `parallel`: its slots unless --parallel says (None: chosen for the machine)."""
    if args.name and args.target:
        raise InvalidRequestError("give a registry name or --target, not both")
    if not args.name and not args.target:
        raise InvalidRequestError("name a registry pair or give --target (see --help)")
    return load(args.name, target=args.target, draft=args.draft, pull=args.pull,
                n_ctx=args.n_ctx, parallel=args.parallel or parallel,
                n_gpu_layers=args.n_gpu_layers, draft_n_gpu_layers=args.draft_n_gpu_layers,
                n_threads=args.threads,
                rpc_servers=args.rpc, draft_rpc_servers=args.draft_rpc,
                policy=policy, probe=False if args.no_probe else None)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="generate a completion (raw prompt, or --chat)",
                       description="Generate text with speculative decoding.")
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="prompt text (raw, no chat template); - reads stdin")
    source.add_argument("--prompt-file", type=Path, help="read the prompt from this file")
    p.add_argument("--encoding-errors", choices=("strict", "replace"), default="strict",
                   help="prompt bytes that are not UTF-8: refuse them (strict, default) or "
                        "replace each with U+FFFD")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message in the model's chat template")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--policy", default=None, help=policy_help())
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-text")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (ids, text, stats) as the last line")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", type=Path, metavar="FILE",
                       help="constrain the output to JSON valid under this JSON Schema")
    shape.add_argument("--json-object", action="store_true",
                       help="constrain the output to one JSON object")
    shape.add_argument("--regex", metavar="RE", help="constrain the output to match RE")
    shape.add_argument("--grammar", type=Path, metavar="FILE",
                       help="constrain the output to a grammar: FILE.gbnf (llama.cpp's GBNF) "
                            "or FILE.lark (llguidance's Lark)")
    p.set_defaults(func=run)


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt from --prompt (its bytes as the shell passed them), --prompt-file, or stdin
    (--prompt -, or piped with neither), decoded as UTF-8 by --encoding-errors."""
    if args.prompt_file is not None:
        try:
            data, where = args.prompt_file.read_bytes(), str(args.prompt_file)
        except OSError as exc:
            raise InvalidRequestError(f"cannot read the prompt file {args.prompt_file}: "
                                      f"{exc.strerror}") from exc
    elif args.prompt is not None and args.prompt != "-":
        data, where = os.fsencode(args.prompt), "--prompt"  # undoes Python's surrogateescape
    elif args.prompt == "-" or not sys.stdin.isatty():
        data, where = sys.stdin.buffer.read(), "standard input"
    else:
        raise InvalidRequestError("give the prompt: --prompt TEXT, --prompt-file PATH, or pipe "
                                  "it on standard input")
    try:
        return data.decode("utf-8", errors=args.encoding_errors)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"the prompt ({where}) is not valid UTF-8 at byte {exc.start} "
            f"({data[exc.start:exc.end]!r}); pass --encoding-errors replace to replace such "
            "bytes") from exc


def read_constraint(args: argparse.Namespace) -> Constraint | None:
    """The output constraint --json-schema, --json-object, --regex or --grammar asks for,
    compiled (and so checked) before any model loads."""
    if args.json_object:
        return Constraint.json_object()
    if args.regex is not None:
        return Constraint.regex(args.regex)
    if args.json_schema is not None:
        text = _read_text(args.json_schema, "JSON Schema")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"the JSON Schema file {args.json_schema} is not JSON: "
                                      f"{exc}") from exc
        return Constraint.json_schema(schema)
    if args.grammar is not None:
        suffix = args.grammar.suffix.lower()
        factories = {".gbnf": Constraint.gbnf, ".lark": Constraint.lark}
        if suffix not in factories:
            raise InvalidRequestError(
                f"the grammar file {args.grammar} must end in .gbnf (llama.cpp's GBNF) or "
                ".lark (Lark), to say which it is")
        return factories[suffix](_read_text(args.grammar, "grammar"))
    return None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read the {what} file {path}: "
                                  f"{exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"the {what} file {path} is not UTF-8 text (byte "
                                  f"{exc.start})") from exc


def run(args: argparse.Namespace) -> int:
    sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              min_p=args.min_p, seed=args.seed)
    prompt = read_prompt(args)  # bad input fails before any model loads
    constraint = read_constraint(args)
    with open_engine(args, policy=args.policy) as engine:
        if args.chat:
            from svip_local.chat import ChatTemplate, prompt_ids as chat_prompt_ids

            template = ChatTemplate.for_engine(engine)
            text = template.render([{"role": "user", "content": prompt}])
            prompt_ids = chat_prompt_ids(engine, text)
        else:
            prompt_ids = engine.tokenize(prompt)
        events = engine.generate(prompt_ids, max_tokens=args.max_tokens, sampling=sampling,
                                 stop=args.stop, ignore_eos=args.ignore_eos,
                                 constraint=constraint)
        done: Done | None = None
        try:
            for event in events:
                if isinstance(event, Token) and not args.json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Done):
                    done = event
        except KeyboardInterrupt:
            events.close()  # both KV caches are trimmed back in the generator's finally
            raise
        assert done is not None
        if args.json:
            print(json.dumps(_result_json(prompt_ids, done)))
        else:
            s = done.stats
            print(f"\n\n[{s.generated} tokens, {s.tokens_per_second:.1f} tok/s, "
                  f"{s.policy}, acceptance {s.acceptance_rate:.0%}, "
                  f"{done.finish_reason}]", file=sys.stderr)
    return 0


def _result_json(prompt_ids: list[int], done: Done) -> dict[str, Any]:
    stats = done.stats.to_dict()
    return {"prompt_tokens": prompt_ids, "tokens": list(done.tokens), "text": done.text,
            "finish_reason": done.finish_reason, "stats": stats}
