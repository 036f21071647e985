"""The arguments of the client's methods, checked before anything is sent, as request messages."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from connectors.client.errors import InvalidArgument
from connectors.client.items import ItemLike, to_item
from qvl_proto import vectorizer_pb2 as pb

ENCODINGS = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "int8": pb.INT8, "binary": pb.BINARY}
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


def embed_options(dimensions: int | None, encoding: str, normalize: bool, instruction: str | None,
                  allow_partial: bool = False) -> pb.EmbedOptions:
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if dimensions is not None:
        dimensions = whole("dimensions", dimensions, least=1, note=" (the service accepts 32 up to its model's size)")
    return pb.EmbedOptions(dimensions=dimensions, encoding=ENCODINGS[encoding], normalize=normalize,
                           instruction=instruction, allow_partial=allow_partial)


def embed_request(items: Sequence[ItemLike], options: pb.EmbedOptions) -> pb.EmbedRequest:
    return pb.EmbedRequest(items=[to_item(i) for i in items], options=options)


def rerank_request(query: ItemLike, documents: Sequence[ItemLike], instruction: str | None, top_k: int | None,
                   allow_partial: bool) -> pb.RerankRequest:
    if top_k is not None:
        top_k = whole("top_k", top_k, least=1)
    return pb.RerankRequest(query=to_item(query), documents=[to_item(d) for d in documents],
                            instruction=instruction, top_k=top_k, allow_partial=allow_partial)


def stream_limits(max_in_flight: Any, stream_timeout: Any) -> tuple[int, float | None]:
    return whole("max_in_flight", max_in_flight, least=1), optional_seconds("timeout", stream_timeout)
