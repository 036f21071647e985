"""The arguments of the client's methods, checked before anything is sent, as request messages."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.client.errors import InvalidArgument
from connectors.client.items import ItemLike, to_item, to_items
from qvl_proto import vectorizer_pb2 as pb

ENCODINGS = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "int8": pb.INT8, "binary": pb.BINARY}
# Text past the service's QVL_EMBED_MAX_LENGTH: refused ("none"), or cut at the "start" or the "end".
TRUNCATE = {"end": pb.TRUNCATE_END, "none": pb.TRUNCATE_NONE, "start": pb.TRUNCATE_START}
UINT32_MAX = 2 ** 32 - 1


def whole(name: str, value: Any, *, least: int, most: int = UINT32_MAX, note: str = "") -> int:
    """``value`` as an int within [least, most], or ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not least <= value <= most:
        bound = f"at least {least}" if most == UINT32_MAX else f"between {least} and {most}"
        raise InvalidArgument(f"{name} must be a whole number {bound}{note}, got {value!r}")
    return int(value)


def seconds(name: str, value: Any) -> float:
    """A positive, finite number of seconds, or ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def optional_seconds(name: str, value: Any) -> float | None:
    """None (no limit of its own, or never) or a positive number of seconds."""
    return None if value is None else seconds(name, value)


def chunking_message(chunking: Mapping[str, Any]) -> pb.Chunking:
    """``{"type": "pages", "max_pages"?}``, ``{"type": "video", "seconds", "overlap"?}`` or
    ``{"type": "text", "tokens", "overlap"?}`` (the HTTP API's form) as the proto's."""
    config = dict(chunking)
    kind = config.pop("type", None)
    messages = {"pages": pb.PageChunking, "video": pb.VideoChunking, "text": pb.TextChunking}
    if kind not in messages:
        raise InvalidArgument(f"chunking type must be pages, video or text, got {kind!r}")
    try:
        return pb.Chunking(**{kind: messages[kind](**config)})
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"chunking {kind}: {exc}") from None


def embed_options(dimensions: int | None, encoding: str, normalize: bool, instruction: str | None,
                  allow_partial: bool = False, truncate: str = "end",
                  chunking: Mapping[str, Any] | None = None, fingerprint: str | None = None) -> pb.EmbedOptions:
    """The options of an embed call; ``fingerprint`` pins the model (the service refuses another)."""
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if truncate not in TRUNCATE:
        raise InvalidArgument(f"truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
    if dimensions is not None:
        dimensions = whole("dimensions", dimensions, least=1, note=" (the service accepts 32 up to its model's size)")
    return pb.EmbedOptions(dimensions=dimensions, encoding=ENCODINGS[encoding], normalize=normalize,
                           instruction=instruction, allow_partial=allow_partial, truncate=TRUNCATE[truncate],
                           chunking=None if chunking is None else chunking_message(chunking), fingerprint=fingerprint)


def embed_request(items: Sequence[ItemLike], options: pb.EmbedOptions) -> pb.EmbedRequest:
    return pb.EmbedRequest(items=to_items(items), options=options)


def rerank_request(query: ItemLike, documents: Sequence[ItemLike], instruction: str | None, top_k: int | None,
                   allow_partial: bool) -> pb.RerankRequest:
    if top_k is not None:
        top_k = whole("top_k", top_k, least=1)
    return pb.RerankRequest(query=to_item(query, what="query"), documents=to_items(documents),
                            instruction=instruction, top_k=top_k, allow_partial=allow_partial)


def stream_limits(max_in_flight: Any, stream_timeout: Any) -> tuple[int, float | None]:
    return whole("max_in_flight", max_in_flight, least=1), optional_seconds("timeout", stream_timeout)
