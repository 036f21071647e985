"""``qvl embed`` and ``qvl rerank``: JSON lines through the models in this process."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

from connectors.progress import Progress
from vectorizer_service.core.chunking import Chunking, chunking_from_spec
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item, item_from_local_json
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import MIN_DIMENSIONS, vector_json

CHUNK = 256  # lines read, embedded and written at a time: bounded memory on any input size


def _open_out(path: str | None) -> IO[str]:
    return sys.stdout if path in (None, "-") else open(path, "w", encoding="utf-8")


def _open_in(path: str | None) -> IO[bytes]:
    """Bytes, so that one line of bad UTF-8 is that line's error, not the end of the run."""
    return sys.stdin.buffer if path in (None, "-") else open(path, "rb")


def _lines(stream: IO[bytes]) -> Iterator[str | InputError]:
    """Every input line, in order: output line N always answers input line N, so a blank line
    is an error line too (skipping it would shift every later answer)."""
    for raw in stream:
        if not raw.strip():
            yield InputError("the line is blank; every input line must hold one JSON object")
            continue
        try:
            yield raw.decode("utf-8").rstrip("\r\n")  # a string left open ends at its line
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
        # Some messages end in "at" already ("Unterminated string starting at").
        raise InputError(f"not valid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}") from None
    return parse(obj, base)


def _line_error(err: QvlError, number: int) -> dict[str, Any]:
    """The error line answering input line ``number`` (an item's error without its in-chunk index)."""
    reason = str(err)
    if isinstance(err, InputError):
        reason = f"{err.part}: {err.reason}" if err.part else err.reason
    return {"line": number, "error": f"line {number}: {reason}"}


class UsageError(Exception):
    """A flag or the checkpoint is wrong: one line on standard error and exit 2, before any loading."""


def refuse(command: str, err: UsageError) -> int:
    print(f"qvl {command}: {err}", file=sys.stderr)
    return 2


def _model_width(path: str) -> int:
    """The model's size, to check flags against before anything loads. A checkpoint directory's
    config.json says it without torch (importing it takes seconds: a bad flag is refused at once);
    a hub id is resolved through transformers."""
    if os.path.isdir(path):
        return _config_width(path)
    from vectorizer_service.model.checkpoint import checkpoint_hidden_size

    try:
        return checkpoint_hidden_size(path)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--model {path!r} is not a readable checkpoint directory or hub id: {reason}") from None


def _config_width(directory: str) -> int:
    """The language model's width from a checkpoint directory's config.json (``text_config`` for
    Qwen3-VL, the top level otherwise), as ``checkpoint_hidden_size`` reads it through transformers."""
    where = os.path.join(directory, "config.json")
    try:
        with open(where, encoding="utf-8") as fh:
            config = json.load(fh)
    except OSError as exc:
        raise UsageError(f"--model {directory!r} is not a readable checkpoint directory: cannot read config.json "
                         f"({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"--model {directory!r} is not a readable checkpoint directory: config.json is not valid "
                         f"JSON ({exc})") from None
    section = config.get("text_config", config) if isinstance(config, dict) else None
    width = section.get("hidden_size") if isinstance(section, dict) else None
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UsageError(f"--model {directory!r} is not a readable checkpoint directory: config.json gives no "
                         f"hidden_size")
    return width


def _check_embed_flags(args: argparse.Namespace) -> None:
    """What would otherwise fail only after the model has loaded (or fail every line)."""
    width = _model_width(args.model)
    if args.dimensions is not None and not MIN_DIMENSIONS <= args.dimensions <= width:
        raise UsageError(f"--dimensions must be between {MIN_DIMENSIONS} and {width} (the model's size), "
                         f"got {args.dimensions}")


def _chunking(spec: str | None) -> Chunking | None:
    if spec is None:
        return None
    try:
        return chunking_from_spec(spec)
    except InputError as exc:
        raise UsageError(str(exc)) from None


def embed_lines(args: argparse.Namespace) -> int:
    try:
        _check_embed_flags(args)
        chunking = _chunking(getattr(args, "chunk", None))
    except UsageError as err:
        return refuse("embed", err)
    # Only now: importing the model side (torch) takes seconds, which a refused flag need not wait for.
    from vectorizer_service.model.checkpoint import load_checkpoint
    from vectorizer_service.model.embedder import Embedder

    settings = Settings.load(args.settings, embedding_model=args.model, device=args.device, dtype=args.dtype,
                             batch_tokens=args.batch_tokens)
    embedder = Embedder(load_checkpoint(args.model, settings), settings)
    base = os.getcwd()
    failed = 0
    cut: list[int] = []  # lines whose text was cut to the maximum length
    progress = Progress("embedded items")
    number = 0  # input lines answered so far
    with _open_in(args.input) as src, _open_out(args.output) as dst:
        for lines in _chunks(src):
            parsed: list[Item | InputError] = []
            for line in lines:
                try:
                    parsed.append(_parse_line(line, base, item_from_local_json))
                except InputError as exc:
                    parsed.append(exc)
            good = [i for i, p in enumerate(parsed) if isinstance(p, Item)]
            options = {"instruction": args.instruction, "dimensions": args.dimensions, "encoding": args.encoding,
                       "truncate": args.truncate}
            results: list[Any] = (
                embedder.embed([parsed[i] for i in good], **options) if chunking is None  # type: ignore[misc]
                else embedder.embed_chunks([parsed[i] for i in good], chunking, **options))  # type: ignore[misc]
            out: list[Any] = list(parsed)
            for i, r in zip(good, results, strict=True):
                out[i] = r
            for r in out:
                number += 1
                if isinstance(r, QvlError):
                    failed += 1
                    dst.write(json.dumps(_line_error(r, number)) + "\n")
                elif chunking is not None:
                    chunks = [{**vector_json(c.vector), "locator": c.locator} for c in r]
                    dst.write(json.dumps({"chunks": chunks}) + "\n")
                else:
                    row = vector_json(r)
                    if r.cut:
                        row["truncated_tokens"] = r.cut
                        cut.append(number)
                    dst.write(json.dumps(row) + "\n")
            dst.flush()
            progress.advance(len(lines))
    progress.finish()
    if cut:
        print(_cut_lines(cut, args.truncate, settings.embed_max_length), file=sys.stderr)
    return 1 if failed else 0


def _cut_lines(numbers: list[int], side: str, limit: int) -> str:
    shown = ", ".join(map(str, numbers[:20])) + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")
    return (f"qvl embed: {len(numbers)} items were cut at the {side} to the maximum length of {limit} tokens "
            f"(QVL_EMBED_MAX_LENGTH; --truncate none refuses them): line{'s' if len(numbers) > 1 else ''} {shown}")


def _rerank_request(obj: Any, base: str) -> tuple[Item, list[Item], str | None]:
    if not isinstance(obj, dict) or "query" not in obj or "documents" not in obj:
        raise InputError('a line must be {"query": ITEM, "documents": [ITEM, ...], "instruction": "..."}')
    if not isinstance(obj["documents"], list):
        raise InputError("documents must be a list")
    try:
        query = item_from_local_json(obj["query"], base)
    except InputError as exc:
        raise exc.at(part="query") from None
    docs = []
    for i, d in enumerate(obj["documents"]):
        try:
            docs.append(item_from_local_json(d, base))
        except InputError as exc:
            raise exc.at(part=f"document {i}") from None
    return query, docs, obj.get("instruction")


def rerank_lines(args: argparse.Namespace) -> int:
    try:
        if args.top_k is not None and args.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
        _model_width(args.model)
    except UsageError as err:
        return refuse("rerank", err)
    from vectorizer_service.model.checkpoint import load_checkpoint  # torch, once the flags are good
    from vectorizer_service.model.reranker import Reranker

    settings = Settings.load(args.settings, reranker_model=args.model, device=args.device, dtype=args.dtype,
                             batch_tokens=args.batch_tokens)
    reranker = Reranker(load_checkpoint(args.model, settings, with_score_head=True), settings)
    base = os.getcwd()
    failed = 0
    progress = Progress("reranked queries")
    with _open_in(args.input) as src, _open_out(args.output) as dst:
        for number, line in enumerate(_lines(src), 1):
            try:
                query, docs, instruction = _parse_line(line, base, _rerank_request)
                result = reranker.rerank(query, docs, instruction=instruction or args.instruction,
                                         top_k=args.top_k)
            except InputError as exc:
                failed += 1
                dst.write(json.dumps(_line_error(exc, number)) + "\n")
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
