"""Chunked ingestion (issue 21): each source becomes one Weaviate object per page, video window or text
passage, its vector qvl's embedding of that part (``EmbedStream`` with ``chunking``: the service splits,
renders and batches), stored as the collection's vectors so that its module's nearText / nearImage and
its reranker work on the parts as on any objects.

A part's id follows from (key, ``chunk_seq``) (``part_uuid``): ingesting a source again replaces its
parts, and once they are in, its parts past the new count (a document that now has fewer pages) are
deleted. A source that fails (a bad PDF, a Weaviate refusal) keeps whatever parts it had and is named
in ``failed``; its neighbours are written.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter
from weaviate.collections import Collection
from weaviate.collections.classes.batch import BatchObjectReturn
from weaviate.exceptions import WeaviateBaseError

from connectors.client import Chunk, Client
from connectors.progress import Progress
from connectors.weaviate.collections import (
    JOINT_VECTOR,
    MODULE_VECTOR,
    CollectionError,
    collection_fields,
    collection_fingerprint,
)
from connectors.weaviate.objects import IngestError, Inserts, KeyFn, key_value, media_b64, object_item
from connectors.weaviate.part_schema import CHUNK_SEQ, SOURCE_KEY, PartLayout, chunking_type, part_uuid, read_layout
from qvl_proto import vectorizer_pb2 as pb

log = logging.getLogger("qvl.weaviate.ingest")


def collection_layout(collection: Collection) -> tuple[PartLayout | None, list[str]]:
    """(how the collection splits its sources (None: not chunked), the names of its vectors)."""
    try:
        config = collection.config.get()
    except Exception as exc:
        raise CollectionError(f"reading the schema of collection {collection.name!r} failed: {exc}") from exc
    layout = read_layout({p.name: p.description or "" for p in config.properties})
    return layout, sorted(config.vector_config or {})


def checked_layout(collection: Collection, chunking: Mapping[str, Any] | None,
                   key: str | KeyFn | None) -> tuple[PartLayout, list[str]]:
    """The collection's layout and the vectors a part fills, once ``chunking`` and ``key`` fit it."""
    layout, vectors = collection_layout(collection)
    name = collection.name
    if layout is None:
        raise IngestError(f"collection {name!r} holds no parts: create it with create_collection(..., chunking=...) "
                          "to ingest with chunking")
    if chunking is None:
        raise IngestError(f"collection {name!r} holds parts ({layout.chunking!r} of field {layout.field!r}): "
                          f"ingest with chunking={{'type': {layout.chunking!r}, ...}}")
    try:
        kind = chunking_type(chunking)
    except ValueError as exc:
        raise IngestError(f"collection {name!r}: {exc}") from None
    if kind != layout.chunking:
        raise IngestError(f"collection {name!r} holds {layout.chunking!r} parts of field {layout.field!r}, "
                          f"not chunking {kind!r}")
    if key is None:
        raise IngestError(f"collection {name!r}: ingesting parts needs key= (a part's id follows from its "
                          "source's key and sequence)")
    filled = [v for v in vectors if v in (MODULE_VECTOR, JOINT_VECTOR)]
    return layout, filled


def part_fields(fields: Mapping[str, list[str]], layout: PartLayout) -> dict[str, list[str]]:
    """The fields that make a source's item: under text chunking the split text last (the service splits
    the item's last text), under pages the PDF as the document."""
    out = {role: list(fs) for role, fs in fields.items()}
    if layout.role == "text":
        out["text"] = [f for f in out["text"] if f != layout.field] + [layout.field]
    elif layout.role == "document":
        out["document"] = [layout.field]
    return out


def part_objects(collection: str, obj: Mapping[str, Any], key: Any, chunks: list[Chunk], layout: PartLayout,
                 fields: Mapping[str, list[str]], vectors: list[str],
                 key_property: str | None) -> list[DataObject[Any, Any]]:
    """A source's parts as Weaviate objects: the source's properties (not the split PDF or video: one
    copy per part would be heavy; a passage in place of the split text), its key, sequence and locator.
    A key property named ``id`` (Weaviate reserves the name) lives on as ``source_key`` alone."""
    media = set(fields.get("image", [])) | set(fields.get("video", []))
    dropped = {layout.field} if layout.role != "text" else set()
    dropped |= {"id"} if key_property == "id" else set()
    base = {k: (media_b64(v) if k in media and v is not None else v) for k, v in obj.items() if k not in dropped}
    out = []
    for seq, chunk in enumerate(chunks):
        props = {**base, SOURCE_KEY: str(key), CHUNK_SEQ: seq, **chunk.locator}
        if layout.role == "text":
            props[layout.field] = obj[layout.field][int(chunk.locator["char_start"]):int(chunk.locator["char_end"])]
        vector = np.asarray(chunk.vector, dtype=np.float32).tolist()
        out.append(DataObject(properties=props, uuid=part_uuid(collection, key, seq),
                              vector=dict.fromkeys(vectors, vector)))
    return out


class PartInserts(Inserts):
    """``Inserts`` for parts: a source's parts go in one ``insert_many`` chunk; once it is answered, the
    stale parts of each source written whole are deleted (one ``delete_many`` per chunk)."""

    def __init__(self, collection: Collection, failed: list[dict[str, Any]], uuids: dict[int, Any]) -> None:
        super().__init__(collection, failed, uuids)
        self.counts: dict[int, tuple[str, int]] = {}  # source index -> (key, its number of parts)
        self.removed = 0

    def add_source(self, index: int, key: Any, objects: list[DataObject[Any, Any]]) -> None:
        self.counts[index] = (str(key), len(objects))
        for obj in objects:
            self.add(index, obj)

    def _settle(self, indices: list[int], future: Future[BatchObjectReturn]) -> None:
        before = len(self.failed)
        super()._settle(indices, future)
        refused = {f["index"] for f in self.failed[before:]}
        if len(refused) < len(self.failed) - before:  # one entry per source, not per refused part
            kept = {f["index"]: f for f in reversed(self.failed[before:])}
            self.failed[before:] = sorted(kept.values(), key=lambda f: f["index"])
        written = [self.counts.pop(i) for i in sorted(set(indices)) if i not in refused]
        if written:
            self._remove_stale(written, sorted(set(indices) - refused))

    def _remove_stale(self, written: list[tuple[str, int]], indices: list[int]) -> None:
        where = Filter.any_of([Filter.by_property(SOURCE_KEY).equal(key) & Filter.by_property(CHUNK_SEQ)
                               .greater_or_equal(count) for key, count in written])
        try:
            result = self.collection.data.delete_many(where=where)
            self.removed += int(result.successful)
            if not result.failed:
                return
            error = f"{result.failed} stale parts were not deleted"
        except WeaviateBaseError as exc:
            error = f"deleting stale parts failed: {exc}"
        for index in indices:  # written, but older parts past the new count may remain
            self.failed.append({"index": index, "stage": "remove", "error": f"object {index}: {error}"})


class PartReader:
    """The sources as items, in order, each with its key; one refused on reading joins ``failed``."""

    def __init__(self, fields: Mapping[str, list[str]], layout: PartLayout, key: str | KeyFn,
                 failed: list[dict[str, Any]]) -> None:
        self.fields, self.layout, self.key, self.failed = fields, layout, key, failed
        self.pending: deque[tuple[int, Mapping[str, Any], Any]] = deque()
        self.keys: dict[str, int] = {}
        self.seen = 0

    def items(self, objects: Iterable[Mapping[str, Any]]) -> Iterator[pb.Item]:
        for index, obj in enumerate(objects):
            self.seen = index + 1
            try:
                self._check_split(obj, index)
                item = object_item(obj, self.fields, index=index)
                value = key_value(obj, self.key, index=index)
                if str(value) in self.keys:  # in one run the later copy would silently win
                    raise IngestError(f"object {index}: key {value!r} repeats object {self.keys[str(value)]}'s")
            except IngestError as exc:
                self.failed.append({"index": index, "stage": "read", "error": str(exc)})
                continue
            self.keys[str(value)] = index
            self.pending.append((index, obj, value))
            yield item

    def _check_split(self, obj: Mapping[str, Any], index: int) -> None:
        """A source holds one value in the split field (without one, text chunking would split another
        text, a title, and the service could not name the field)."""
        field, value = self.layout.field, obj.get(self.layout.field)
        if value is None or (isinstance(value, str | bytes | bytearray | list | tuple) and len(value) == 0):
            raise IngestError(f"object {index}: field {field!r}, which this collection splits into "
                              f"{self.layout.chunking!r} parts, is missing or empty")
        if isinstance(value, list | tuple):
            raise IngestError(f"object {index}: field {field!r} holds {len(value)} values; a source has one "
                              f"{self.layout.role} to split")


def ingest_parts(collection: Collection, objects: Iterable[Mapping[str, Any]], *, qvl: Client,
                 chunking: Mapping[str, Any] | None, key: str | KeyFn | None, instruction: str | None = None,
                 dimensions: int | None = None, fields: Mapping[str, list[str]] | None = None,
                 batch_size: int = 64, max_in_flight: int = 256, total: int | None = None,
                 progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """``ingest(..., chunking=...)`` into a collection made with ``create_collection(..., chunking=...)``.

    ``chunking``: ``{"type": "pages"}``, ``{"type": "video", "seconds": 10, "overlap": 0}`` or ``{"type":
    "text", "tokens": 512, "overlap": 64}`` (docs/documents.md), of the collection's type. One object per
    part of each source, its id from ``key`` (required) and ``chunk_seq``, with ``source_key``,
    ``chunk_seq`` and the locator (``page``; ``start_s`` / ``end_s``; ``char_start`` / ``char_end``); the
    source's parts past the new count are deleted. The other arguments as ``ingest``'s. Returns
    ``{"inserted" (sources written), "parts", "removed" (stale parts deleted), "failed": [{"index",
    "stage", "error"}], "uuids" (each source's part ids, None where it failed), "seconds", "objects_per_s"}``.
    """
    layout, vectors = checked_layout(collection, chunking, key)
    assert key is not None and chunking is not None  # checked_layout refuses them missing
    fields = part_fields(dict(fields) if fields is not None else collection_fields(collection), layout)
    fingerprint = collection_fingerprint(collection)  # the pin: no vector of another model goes in
    started = time.monotonic()
    failed: list[dict[str, Any]] = []
    uuids: dict[int, list[str]] = {}
    reader = PartReader(fields, layout, key, failed)
    inserts = PartInserts(collection, failed, uuids)

    def store(index: int, obj: Mapping[str, Any], value: Any, result: Any) -> None:
        parts = part_objects(collection.name, obj, value, list(result), layout, fields, vectors,
                             key if isinstance(key, str) else None)
        uuids[index] = [str(p.uuid) for p in parts]
        inserts.add_source(index, value, parts)

    inserts.run(qvl.embed_stream(reader.items(objects), dimensions=dimensions, instruction=instruction,
                                 max_in_flight=max_in_flight, fingerprint=fingerprint, chunking=chunking),
                reader.pending, store, batch_size=batch_size, total=total, progress=progress, noun="sources",
                meter=Progress(f"ingested sources into {collection.name}", total, logger=log))
    seconds = time.monotonic() - started
    written = list(uuids)  # the sources whose parts are all in (Inserts drops a refused one)
    return {"inserted": len(written), "parts": sum(len(uuids[i]) for i in written), "removed": inserts.removed,
            "failed": failed, "uuids": [uuids.get(i) for i in range(reader.seen)],
            "seconds": round(seconds, 3), "objects_per_s": round(len(written) / seconds, 2) if seconds > 0 else None}
