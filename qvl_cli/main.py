"""The ``qvl`` command: one parser for every role. Each subcommand imports what it needs when it
runs, so ``qvl worker`` and ``qvl pg`` work where only the worker's dependencies are installed."""

from __future__ import annotations

import argparse
import os
import sys

from connectors.postgres.cli import add_postgres_parsers
from qvl_devtools.bench import add_bench_parser
from vectorizer_service.core.errors import ConfigError
from vectorizer_service.core.logs import setup_logging

# The choices of vectorizer_service.core.vector_encoding, named here so that parsing needs no numpy.
ENCODINGS = ("float32", "float16", "int8", "binary")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch-tokens", type=int, help="token budget of one model batch (default 16384)")
    p.add_argument("--settings", help="YAML settings file (QVL_* variables and flags override it)")
    p.add_argument("--input", "-i", help="JSON lines to read (default: standard input)")
    p.add_argument("--output", "-o", help="JSON lines to write (default: standard output)")


def cmd_embed(args: argparse.Namespace) -> int:
    from qvl_cli.jsonl_commands import embed_lines

    return embed_lines(args)


def cmd_rerank(args: argparse.Namespace) -> int:
    from qvl_cli.jsonl_commands import rerank_lines

    return rerank_lines(args)


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from qvl_devtools.tiny_model import build_checkpoint

    path = build_checkpoint(args.directory, seed=args.seed)
    print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vectorizer_service.core.settings import Settings
    from vectorizer_service.server import run

    settings = Settings.load(
        args.settings, embedding_model=args.embedding_model, reranker_model=args.reranker_model, host=args.host,
        grpc_port=args.grpc_port, http_port=args.http_port, device=args.device, dtype=args.dtype,
        batch_tokens=args.batch_tokens, token=args.token,
    )
    level = settings.log_level if args.log_level is None else args.log_level
    log_format = settings.log_format if args.log_format is None else args.log_format
    setup_logging(level, log_format)
    return run(settings, level, log_format)


def cmd_bench(args: argparse.Namespace) -> int:
    from qvl_devtools.bench import run_bench

    return run_bench(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from qvl_devtools.demo.runtime_demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvl",
        description="Multimodal retrieval inside Postgres and Weaviate with Qwen3-VL embeddings and reranking.",
    )
    parser.add_argument("--log-level", default=os.environ.get("QVL_LOG_LEVEL"))
    parser.add_argument("--log-format", choices=["json", "text"],
                        help="text (the default) or json lines; also QVL_LOG_FORMAT (serve: the settings file too)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="embed JSON-lines items with an embedding checkpoint",
                       description='Reads lines like {"text": "...", "image": "a.png", "video": "v.mp4", '
                       '"document": "a.pdf", "page": 2, "start_s": 0, "end_s": 10, '
                       '"instruction": "..."} (or a plain string: a text item) and writes one '
                       '{"embedding": [...]} line per input line, in order: output line N always answers '
                       'input line N. A bad or blank line gets '
                       '{"line": N, "error": "line N: ..."} and the exit code is 1; the others are embedded.')
    p.add_argument("--model", "-m", required=True, help="checkpoint directory or hub id")
    p.add_argument("--dimensions", type=int, help="Matryoshka size: keep the first D values, renormalized")
    p.add_argument("--encoding", choices=ENCODINGS, default="float32",
                   help="float32/float16 as lists; int8 (with scale) and binary (sign bits) as base64")
    p.add_argument("--instruction", help="instruction for items without their own")
    p.add_argument("--truncate", choices=["end", "start", "none"], default="end",
                   help="an item past QVL_EMBED_MAX_LENGTH tokens: cut its text at the end (the default) or the "
                        "start, and say so (its line gets \"truncated_tokens\", standard error names the lines), "
                        "or refuse it (none: an error line)")
    p.add_argument("--chunk", metavar="SPEC",
                   help='split each item and write {"chunks": [{"embedding", "locator"}, ...]} per line: pages '
                        "(pages:MAX), video:SECONDS[:OVERLAP], text:TOKENS[:OVERLAP] (docs/documents.md)")
    _model_flags(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against queries with a reranker checkpoint",
                       description='Reads lines like {"query": ITEM, "documents": [ITEM, ...], "instruction": '
                       '"..."} and writes {"scores": [...]} per line, scores in document order; output line N '
                       'answers input line N (a bad or blank line gets {"line": N, "error": "line N: ..."}, '
                       'exit code 1). An ITEM is an object as for qvl embed, or a plain string (a text).')
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

    add_bench_parser(sub, cmd_bench)
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
    setup_logging(args.log_level or "INFO", args.log_format or os.environ.get("QVL_LOG_FORMAT") or "text")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ConfigError) as exc:
        print(f"qvl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
