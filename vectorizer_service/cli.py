"""The ``qvl`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

from .errors import InputError, QvlError
from .items import Item, item_from_json
from .logs import Progress, setup_logging
from .outputs import ENCODINGS, vector_json
from .settings import Settings

CHUNK = 256  # lines read, embedded and written at a time: bounded memory on any input size


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch-tokens", type=int, help="token budget of one model batch (default 16384)")
    p.add_argument("--settings", help="YAML settings file (QVL_* variables and flags override it)")
    p.add_argument("--input", "-i", help="JSON lines to read (default: standard input)")
    p.add_argument("--output", "-o", help="JSON lines to write (default: standard output)")


def _open_out(path: str | None) -> IO[str]:
    return sys.stdout if path in (None, "-") else open(path, "w", encoding="utf-8")


def _open_in(path: str | None) -> IO[bytes]:
    """Bytes, so that one line of bad UTF-8 is that line's error, not the end of the run."""
    return sys.stdin.buffer if path in (None, "-") else open(path, "rb")


def _lines(stream: IO[bytes]) -> Iterator[str | InputError]:
    for raw in stream:
        if not raw.strip():
            continue
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield InputError(f"line is not valid UTF-8 (byte {exc.start})")


def _chunks(stream: IO[bytes]) -> Iterator[list[str | InputError]]:
    chunk: list[str | InputError] = []
    for line in _lines(stream):
        chunk.append(line)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parse_line(line: str | InputError, base: str, parse: Any) -> Any:
    if isinstance(line, InputError):
        raise line
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    return parse(obj, base)


def _line_error(err: QvlError) -> str:
    """An item's error without the in-chunk index (each output line is its own item)."""
    if isinstance(err, InputError):
        return f"{err.part}: {err.reason}" if err.part else err.reason
    return str(err)


def cmd_embed(args: argparse.Namespace) -> int:
    from .embedder import Embedder
    from .model_loading import load_checkpoint

    settings = Settings.load(args.settings, embedding_model=args.model, device=args.device, dtype=args.dtype,
                             batch_tokens=args.batch_tokens)
    embedder = Embedder(load_checkpoint(args.model, settings), settings)
    base = os.getcwd()
    failed = 0
    progress = Progress("embedded items")
    with _open_in(args.input) as src, _open_out(args.output) as dst:
        for lines in _chunks(src):
            parsed: list[Item | InputError] = []
            for line in lines:
                try:
                    parsed.append(_parse_line(line, base, item_from_json))
                except InputError as exc:
                    parsed.append(exc)
            good = [i for i, p in enumerate(parsed) if isinstance(p, Item)]
            results = embedder.embed([parsed[i] for i in good], instruction=args.instruction,  # type: ignore[misc]
                                     dimensions=args.dimensions, encoding=args.encoding)
            out: list[Any] = list(parsed)
            for i, r in zip(good, results, strict=True):
                out[i] = r
            for r in out:
                if isinstance(r, QvlError):
                    failed += 1
                    dst.write(json.dumps({"error": _line_error(r)}) + "\n")
                else:
                    dst.write(json.dumps(vector_json(r)) + "\n")
            dst.flush()
            progress.advance(len(lines))
    progress.finish()
    return 1 if failed else 0


def _rerank_request(obj: Any, base: str) -> tuple[Item, list[Item], str | None]:
    if not isinstance(obj, dict) or "query" not in obj or "documents" not in obj:
        raise InputError('a line must be {"query": ITEM, "documents": [ITEM, ...], "instruction": "..."}')
    if not isinstance(obj["documents"], list):
        raise InputError("documents must be a list")
    query = item_from_json(obj["query"], base)
    docs = []
    for i, d in enumerate(obj["documents"]):
        try:
            docs.append(item_from_json(d, base))
        except InputError as exc:
            raise exc.at(part=f"document {i}") from None
    return query, docs, obj.get("instruction")


def cmd_rerank(args: argparse.Namespace) -> int:
    from .model_loading import load_checkpoint
    from .reranker import Reranker

    settings = Settings.load(args.settings, reranker_model=args.model, device=args.device, dtype=args.dtype,
                             batch_tokens=args.batch_tokens)
    reranker = Reranker(load_checkpoint(args.model, settings, with_score_head=True), settings)
    base = os.getcwd()
    failed = 0
    progress = Progress("reranked queries")
    with _open_in(args.input) as src, _open_out(args.output) as dst:
        for line in _lines(src):
            try:
                query, docs, instruction = _parse_line(line, base, _rerank_request)
                result = reranker.rerank(query, docs, instruction=instruction or args.instruction,
                                         top_k=args.top_k)
            except InputError as exc:
                failed += 1
                dst.write(json.dumps({"error": str(exc)}) + "\n")
                continue
            out: dict[str, Any] = {"scores": result.scores}
            if args.top_k is not None:
                out["ranking"] = result.ranking
            if result.errors:
                failed += 1
                out["errors"] = [{"index": i, "error": str(e)} for i, e in sorted(result.errors.items())]
            dst.write(json.dumps(out) + "\n")
            dst.flush()
            progress.advance()
    progress.finish()
    return 1 if failed else 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .tiny_model import build_checkpoint

    path = build_checkpoint(args.directory, seed=args.seed)
    print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = Settings.load(
        args.settings, embedding_model=args.embedding_model, reranker_model=args.reranker_model, host=args.host,
        grpc_port=args.grpc_port, http_port=args.http_port, device=args.device, dtype=args.dtype,
        batch_tokens=args.batch_tokens, token=args.token,
    )
    level = settings.log_level if args.log_level is None else args.log_level
    setup_logging(level, args.log_format)
    return run(settings, level, args.log_format)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvl",
        description="Multimodal retrieval inside Postgres and Weaviate with Qwen3-VL embeddings and reranking.",
    )
    parser.add_argument("--log-level", default=os.environ.get("QVL_LOG_LEVEL"))
    parser.add_argument("--log-format", choices=["json", "text"], default=os.environ.get("QVL_LOG_FORMAT", "text"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed JSON-lines items with an embedding checkpoint",
                       description='Reads lines like {"text": "...", "image": "a.png", "video": "v.mp4", '
                       '"instruction": "..."} and writes one {"embedding": [...]} line per item, in order. '
                       'A bad item gets {"error": "..."} and the exit code is 1; the others are embedded.')
    p.add_argument("--model", "-m", required=True, help="checkpoint directory or hub id")
    p.add_argument("--dimensions", type=int, help="Matryoshka size: keep the first D values, renormalized")
    p.add_argument("--encoding", choices=ENCODINGS, default="float32",
                   help="float32/float16 as lists; int8 (with scale) and binary (sign bits) as base64")
    p.add_argument("--instruction", help="instruction for items without their own")
    _model_flags(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against queries with a reranker checkpoint",
                       description='Reads lines like {"query": ITEM, "documents": [ITEM, ...], "instruction": '
                       '"..."} and writes {"scores": [...]} per line, scores in document order.')
    p.add_argument("--model", "-m", required=True, help="checkpoint directory or hub id")
    p.add_argument("--instruction", help="instruction for lines without their own")
    p.add_argument("--top-k", type=int, help='also write "ranking": the best K document indices')
    _model_flags(p)
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("tiny-model", help="build a deterministic tiny Qwen3-VL checkpoint (random weights)")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("serve", help="serve the models over gRPC and HTTP (Weaviate modules, JSON API)",
                       description="Every setting is also read from QVL_* environment variables and the "
                       "settings file; flags win. Either model may be omitted to serve only the other.")
    p.add_argument("--embedding-model", help="embedding checkpoint (QVL_EMBEDDING_MODEL)")
    p.add_argument("--reranker-model", help="reranker checkpoint (QVL_RERANKER_MODEL)")
    p.add_argument("--host", help="bind address (default 0.0.0.0)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    p.add_argument("--token", help="require this bearer token (QVL_TOKEN; prefer the variable)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--batch-tokens", type=int, help="token budget of one model batch")
    p.add_argument("--settings", help="YAML settings file (profiles, limits, ...)")
    p.set_defaults(func=cmd_serve)

    from .bench import add_bench_parser
    add_bench_parser(sub, cmd_bench)

    from connectors.postgres.cli import add_postgres_parsers
    add_postgres_parsers(sub)  # qvl pg install|status, qvl worker

    p = sub.add_parser("demo", help="run every part together on this machine (tiny model, random weights)")
    p.add_argument("--model", help="checkpoint for both tasks (default: build the tiny one)")
    p.add_argument("--embedding-model", help="embedding checkpoint (e.g. Qwen/Qwen3-VL-Embedding-2B)")
    p.add_argument("--reranker-model", help="reranker checkpoint (e.g. Qwen/Qwen3-VL-Reranker-2B)")
    p.add_argument("--workdir", default=os.environ.get("QVL_DEMO_DIR", ".cache/demo"))
    p.add_argument("--runtime-only", action="store_true", help="skip Postgres and Weaviate")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO", args.log_format)
    try:
        return int(args.func(args) or 0)
    except FileNotFoundError as exc:
        print(f"qvl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
