"""Items (what the caller passes) as protobuf messages, and results as numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.client.errors import ItemFailure, reason_name
from qvl_proto import vectorizer_pb2 as pb

ItemLike = str | Mapping[str, Any]
ITEM_KEYS = frozenset({"text", "image", "video", "frames", "image_uri", "video_uri", "instruction"})


def as_list(value: Any) -> list[Any]:
    """None -> [], a list or tuple -> a list, anything else -> [it] (one part or many)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def to_item(item: ItemLike) -> pb.Item:
    """A dict (``ITEM_KEYS``), a plain string (a text item) or a ``pb.Item`` as a ``pb.Item``;
    ``ValueError`` for a key it does not know."""
    if isinstance(item, pb.Item):
        return item
    if isinstance(item, str):
        return pb.Item(parts=[pb.Part(text=item)])
    if not isinstance(item, Mapping):
        raise TypeError(f"an item is a string, a dict or a pb.Item, not {type(item).__name__}")
    parts: list[pb.Part] = []

    if item.get("video") is not None:
        parts.append(pb.Part(video=bytes(item["video"])))
    if item.get("frames") is not None:
        parts.append(pb.Part(frames=pb.Frames(frames=[bytes(f) for f in item["frames"]])))
    if item.get("video_uri") is not None:
        parts.append(pb.Part(video_uri=item["video_uri"]))
    parts += [pb.Part(image=bytes(b)) for b in as_list(item.get("image"))]
    parts += [pb.Part(image_uri=u) for u in as_list(item.get("image_uri"))]
    parts += [pb.Part(text=t) for t in as_list(item.get("text"))]
    unknown = set(item) - ITEM_KEYS
    if unknown:
        raise ValueError(f"unknown item keys: {sorted(unknown)}")
    return pb.Item(parts=parts, instruction=item.get("instruction"))


def embedding_array(e: pb.Embedding) -> np.ndarray:
    """float32/float16 as float arrays, int8 as int8 (scale in ``Client.last_scales``), binary as packed uint8."""
    if e.encoding == pb.FLOAT32:
        return np.asarray(e.values, dtype=np.float32)
    if e.encoding == pb.FLOAT16:
        return np.frombuffer(e.packed, dtype="<f2").astype(np.float16)
    if e.encoding == pb.INT8:
        return np.frombuffer(e.packed, dtype=np.int8).copy()
    return np.frombuffer(e.packed, dtype=np.uint8).copy()


def embeddings(resp: pb.EmbedResponse) -> tuple[np.ndarray, np.ndarray]:
    """An ``Embed`` answer: one row per item, and each row's int8 scale (0 for other encodings)."""
    scales = np.asarray([e.scale for e in resp.embeddings], dtype=np.float32)
    rows = np.stack([embedding_array(e) for e in resp.embeddings]) if resp.embeddings else np.zeros((0, 0))
    return rows, scales


def stream_row(result: pb.EmbedStreamResult) -> np.ndarray | ItemFailure:
    """One ``EmbedStream`` result as what ``embed_stream`` hands on."""
    if result.HasField("error"):
        error = result.error
        return ItemFailure(int(result.seq), error.message, error.code, error.limit or None, reason_name(error.reason))
    return embedding_array(result.embedding)


@dataclass
class RerankResult:
    scores: np.ndarray  # document order; NaN where a document failed
    ranking: list[tuple[int, float]]  # (index, score), best first
    errors: dict[int, str] = field(default_factory=dict)


def rerank_result(resp: pb.RerankResponse) -> RerankResult:
    return RerankResult(scores=np.asarray(resp.scores, dtype=np.float32),
                        ranking=[(r.index, r.score) for r in resp.ranking],
                        errors={e.index: e.message for e in resp.errors})
