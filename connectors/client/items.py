"""Items (what the caller passes) as protobuf messages, and results as numpy arrays.

An item is a plain string (a text item) or a dict of ``ITEM_KEYS``: ``page`` selects a page of the
document, ``start_s`` / ``end_s`` a span of the video file (docs/documents.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.client.errors import InvalidArgument, ItemFailure, reason_name
from qvl_proto import vectorizer_pb2 as pb

ItemLike = str | Mapping[str, Any]
ITEM_KEYS = ("text", "image", "video", "frames", "image_uri", "video_uri", "document", "document_uri", "page",
             "start_s", "end_s", "instruction")
# The metadata key of every embed answer: the fingerprint of the model that computed it (issue 23).
FINGERPRINT_KEY = "qvl-model-fingerprint"
# The keys that become parts, in their order in the model's prompt: videos, images, documents, texts.
PART_KEYS = ("video", "frames", "video_uri", "image", "image_uri", "document", "document_uri", "text")


class ItemRefused(InvalidArgument):
    """An item the client cannot send (an unknown key, a value of the wrong type), named by
    ``where`` ("item 3", "query"); ``reason`` is the rest of the message."""

    def __init__(self, where: str, reason: str, *, index: int | None = None) -> None:
        super().__init__(f"{where}: {reason}", index=index)
        self.reason = reason

    def at(self, index: int) -> ItemRefused:
        """The same refusal for the item at ``index`` (a stream numbers its items as it takes them)."""
        return ItemRefused(f"item {index}", self.reason, index=index)


def as_list(value: Any) -> list[Any]:
    """None -> [], a list or tuple -> a list, anything else -> [it] (one part or many)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def to_item(item: ItemLike, index: int | None = None, *, what: str | None = None) -> pb.Item:
    """A dict (``ITEM_KEYS``), a plain string (a text item) or a ``pb.Item`` as a ``pb.Item``; a
    wrong key or value raises ``ItemRefused`` (an ``InvalidArgument``) naming the item (``index``,
    its place in the call, or ``what`` it is) and the key."""
    if isinstance(item, pb.Item):
        return item
    if isinstance(item, str):
        return pb.Item(parts=[pb.Part(text=item)])
    where = what or ("item" if index is None else f"item {index}")
    if not isinstance(item, Mapping):
        raise ItemRefused(where, f"an item is a str or a dict with the keys {', '.join(ITEM_KEYS)}, "
                                 f"got {type(item).__name__}", index=index)
    unknown = [k for k in item if k not in ITEM_KEYS]
    if unknown:
        raise ItemRefused(where, f"unknown key {unknown[0]!r}; an item's keys are {', '.join(ITEM_KEYS)}",
                          index=index)
    parts: list[pb.Part] = []
    key = ""
    try:
        for key in PART_KEYS:
            parts += _parts(key, item.get(key), item)
        key = "instruction"
        return pb.Item(parts=parts, instruction=item.get("instruction"))
    except (TypeError, ValueError):  # a value of the wrong type (protobuf's own words name no key)
        raise ItemRefused(where, f"{key!r} {_expected(key)}, got {_kind(item.get(key))}", index=index) from None


def _parts(key: str, value: Any, item: Mapping[str, Any]) -> list[pb.Part]:
    """The parts of one key's value; TypeError or ValueError for a value of the wrong type."""
    if value is None:
        return []
    span = {k: item[k] for k in ("start_s", "end_s") if item.get(k) is not None}  # a video file's span
    page = {"page": item["page"]} if item.get("page") is not None else {}  # a document's page (1-based)
    if key == "video":
        return [pb.Part(video=_bytes(value), **span)]
    if key == "frames":
        if isinstance(value, bytes | bytearray | memoryview | str):
            raise TypeError("frames are a list of encoded images")
        return [pb.Part(frames=pb.Frames(frames=[_bytes(f) for f in value]))]
    if key == "video_uri":
        return [pb.Part(video_uri=value, **span)]
    if key == "document":
        return [pb.Part(document=_bytes(value), **page)]
    if key == "document_uri":
        return [pb.Part(document_uri=value, **page)]
    if key == "image":
        return [pb.Part(image=_bytes(b)) for b in as_list(value)]
    if key == "image_uri":
        return [pb.Part(image_uri=u) for u in as_list(value)]
    return [pb.Part(text=t) for t in as_list(value)]


def _bytes(value: Any) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{type(value).__name__} is not bytes")
    return bytes(value)


def _expected(key: str) -> str:
    return {"video": "takes the bytes of a video file", "frames": "takes a list of encoded images (bytes)",
            "image": "takes the bytes of an image file, or a list of them", "document": "takes the bytes of a PDF file",
            "text": "takes a str or a list of str", "instruction": "takes a str"}.get(key, "takes a str")


def _kind(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a list of {', '.join(sorted({type(v).__name__ for v in value})) or 'nothing'}"
    return type(value).__name__


def to_items(items: Sequence[ItemLike]) -> list[pb.Item]:
    """A call's items, each refusal naming the item by its index."""
    return [to_item(item, i) for i, item in enumerate(items)]


@dataclass
class Chunk:
    """One part of an item split by chunking: its vector, and where it lies in the source
    (``{"page": n}``, ``{"start_s", "end_s"}`` or ``{"char_start", "char_end"}``)."""

    vector: np.ndarray
    locator: dict[str, float | int]


def chunks_of(message: pb.Chunks) -> list[Chunk]:
    """One item's chunks, in order."""
    return [Chunk(embedding_array(c.embedding), {f.name: value for f, value in c.locator.ListFields()})
            for c in message.chunks]


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


def fingerprint_of(metadata: Any) -> str | None:
    """The answering model's fingerprint in a call's initial metadata (key, value pairs in both the
    sync and the asyncio API); None from a service older than fingerprints."""
    for key, value in metadata or ():
        if key == FINGERPRINT_KEY:
            return str(value)
    return None


def truncated(resp: pb.EmbedResponse) -> dict[int, int]:
    """Item index -> tokens cut, for the items the service cut to its maximum length."""
    return {i: e.truncated_tokens for i, e in enumerate(resp.embeddings) if e.truncated_tokens}


def chunk_lists(resp: pb.EmbedResponse) -> list[list[Chunk]]:
    """A chunked ``Embed`` answer: per item, its chunks in order."""
    return [chunks_of(c) for c in resp.chunks]


def stream_row(result: pb.EmbedStreamResult) -> np.ndarray | list[Chunk] | ItemFailure:
    """One ``EmbedStream`` result as what ``embed_stream`` hands on (with chunking: the item's chunks)."""
    if result.HasField("error"):
        error = result.error
        return ItemFailure(int(result.seq), error.message, error.code, error.limit or None, reason_name(error.reason))
    if result.HasField("chunks"):
        return chunks_of(result.chunks)
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
