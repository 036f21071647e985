"""A source row's embedded columns as one gRPC item (the joint text + images + video input).

The same mapping as the PL/Python library's ``make_item`` (``connectors/postgres/plpy/items.py``:
sync mode and qvl.search), so a row embeds the same way through either path: video first, then
image bytes, image URIs, texts. A chunked vectorizer's document (a PDF in bytea, or a URI in text)
goes after the video.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np
from pgvector import Bit, Vector

from connectors.postgres.vectorizers import Vectorizer
from qvl_proto import vectorizer_pb2 as pb

BYTES = (bytes, bytearray, memoryview)


def _flat(values: list[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from (x for x in value if x is not None)
        elif value is not None:
            yield value


class ContentColumns(Protocol):
    """What makes a row's item: a vectorizer's input columns (``Vectorizer``, or a catalog row's)."""

    @property
    def text_columns(self) -> tuple[str, ...]: ...
    @property
    def image_columns(self) -> tuple[str, ...]: ...
    @property
    def video_columns(self) -> tuple[str, ...]: ...
    @property
    def document_columns(self) -> tuple[str, ...]: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def split_column(self) -> str | None: ...


def row_item(v: ContentColumns, row: Mapping[str, Any]) -> pb.Item | None:
    """None when every embedded column is NULL (the row gets a NULL vector, no model call), or when a
    chunked vectorizer's split column is (the row has no chunks: its old ones go, no model call)."""
    if v.chunked and v.split_column is not None and row[v.split_column] is None:
        return None
    parts: list[pb.Part] = []
    for col in v.video_columns:
        value = row[col]
        if value is None:
            continue
        if isinstance(value, list):
            parts.append(pb.Part(frames=pb.Frames(frames=[bytes(f) for f in value if f is not None])))
        elif isinstance(value, BYTES):
            parts.append(pb.Part(video=bytes(value)))
        else:
            parts.append(pb.Part(video_uri=str(value)))
    for col in v.document_columns:
        value = row[col]
        if isinstance(value, BYTES):
            parts.append(pb.Part(document=bytes(value)))
        elif value is not None:
            parts.append(pb.Part(document_uri=str(value)))
    images = list(_flat([row[c] for c in v.image_columns]))
    parts += [pb.Part(image=bytes(x)) for x in images if isinstance(x, BYTES)]
    parts += [pb.Part(image_uri=str(x)) for x in images if not isinstance(x, BYTES)]
    parts += [pb.Part(text=str(t)) for t in _flat([row[c] for c in v.text_columns])]
    return pb.Item(parts=parts) if parts else None


def item_size(item: pb.Item) -> int:
    return int(item.ByteSize())


def vector_literal(v: Vectorizer, values: np.ndarray) -> str:
    """pgvector's text input, written by pgvector-python: '[x,y,...]' (float32 values, exact round
    trip; a halfvec column casts it) or a bit string for ``bit`` storage (values are packed bits)."""
    if v.storage == "bit":
        return Bit(np.unpackbits(np.asarray(values, dtype=np.uint8))[: v.dimensions].astype(bool)).to_text()
    return Vector(np.asarray(values, dtype=np.float32)).to_text()
