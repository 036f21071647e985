"""Joint-embedding ingestion: each object's text, images and video embedded as ONE Qwen3-VL item.

Weaviate's modules embed every field apart and average the vectors; a joint embedding lets
the model see caption and picture together. ``ingest`` streams the items to qvl over gRPC
(``EmbedStream``: the service batches them), then inserts the objects in batches of ``batch_size``
(``insert_many``: one gRPC batch request each, two in flight while embedding goes on), the
embedding stored as the collection's ``joint`` named vector. With a ``key`` each object's id
follows from it, so ingesting again replaces the objects instead of adding copies.

(Not weaviate-client's ``collection.batch``: its sender waits up to a second for a batch to fill
before it sends a partial one, so every ingest cost at least a second, one object too.)
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from weaviate.classes.data import DataObject
from weaviate.collections import Collection
from weaviate.util import generate_uuid5

from connectors.client import Client
from connectors.progress import Progress
from connectors.weaviate.collections import JOINT_VECTOR, collection_fields, collection_fingerprint
from connectors.weaviate.objects import IngestError, Inserts, KeyFn, ProgressFn, key_value, media_b64, object_item
from connectors.weaviate.part_ingest import collection_layout, ingest_parts
from qvl_proto import vectorizer_pb2 as pb

log = logging.getLogger("qvl.weaviate.ingest")


def object_uuid(collection_name: str, key: Any) -> str:
    """The id of the object whose key is ``key`` in that collection: Weaviate's ``generate_uuid5`` of the
    key's text, namespaced by the collection's name (so anyone can compute it, and the same key in two
    collections names two objects)."""
    return generate_uuid5(key, collection_name)


def weaviate_properties(obj: Mapping[str, Any], fields: Mapping[str, list[str]]) -> dict[str, Any]:
    """The object as Weaviate stores it: media fields as base64 text, the rest unchanged."""
    media = set(fields.get("image", [])) | set(fields.get("video", []))
    return {k: (media_b64(v) if k in media and v is not None else v) for k, v in obj.items()}


class _Reader:
    """The objects as items, in order: how many were read (``seen``), those whose embedding is on its
    way (``pending``), and those refused on reading (appended to ``failed``)."""

    def __init__(self, collection: str, fields: Mapping[str, list[str]], key: str | KeyFn | None,
                 failed: list[dict[str, Any]]) -> None:
        self.collection, self.fields, self.key, self.failed = collection, fields, key, failed
        self.pending: deque[tuple[int, Mapping[str, Any], str]] = deque()
        self.keyed: dict[str, int] = {}  # id -> the index of the object that has it (key given: ids repeat)
        self.seen = 0

    def items(self, objects: Iterable[Mapping[str, Any]]) -> Iterator[pb.Item]:
        for index, obj in enumerate(objects):
            self.seen = index + 1
            try:
                item = object_item(obj, self.fields, index=index)
                object_id = self._object_id(obj, index)
            except IngestError as exc:
                self.failed.append({"index": index, "stage": "read", "error": str(exc)})
                continue
            self.pending.append((index, obj, object_id))
            yield item

    def _object_id(self, obj: Mapping[str, Any], index: int) -> str:
        if self.key is None:
            return str(uuidlib.uuid4())
        value = key_value(obj, self.key, index=index)
        object_id = object_uuid(self.collection, value)
        if object_id in self.keyed:  # in one batch the later copy would silently win
            raise IngestError(f"object {index}: key {value!r} repeats object {self.keyed[object_id]}'s")
        self.keyed[object_id] = index
        return object_id


def ingest(
    collection: Collection,
    objects: Iterable[Mapping[str, Any]],
    *,
    qvl: Client,
    instruction: str | None = None,
    dimensions: int | None = None,
    fields: Mapping[str, list[str]] | None = None,
    batch_size: int = 64,
    max_in_flight: int = 256,
    total: int | None = None,
    progress: ProgressFn | None = None,
    key: str | KeyFn | None = None,
    chunking: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Embed each object's fields as one item with qvl and insert it with its ``joint`` vector.

    ``objects`` are property dicts (media as bytes or base64); ``fields`` maps "text",
    "image", "video" to property names (default: read from the collection). ``instruction``
    and ``dimensions`` go to qvl (``search`` must use the same ``dimensions``). ``key`` (a property
    name, or a function of the object) makes the ids deterministic (``object_uuid``): ingesting the
    same keys again replaces those objects, so a re-run updates instead of duplicating; an object
    without a key, or repeating an earlier object's key in this run, is refused. Without ``key`` the
    ids are random. A bad object (unreadable media, a Weaviate refusal) is reported and the others go
    on. Returns ``{"inserted" (objects stored, new or replaced), "failed": [{"index", "stage", "error"}],
    "uuids" (input order, None where it failed), "seconds", "objects_per_s"}``. ``chunking``
    (docs/documents.md) fills a collection of parts instead: ``part_ingest.ingest_parts``.
    """
    if chunking is not None or collection_layout(collection)[0] is not None:
        return ingest_parts(collection, objects, qvl=qvl, chunking=chunking, key=key, instruction=instruction,
                            dimensions=dimensions, fields=fields, batch_size=batch_size,
                            max_in_flight=max_in_flight, total=total, progress=progress)
    fields = dict(fields) if fields is not None else collection_fields(collection)
    # A collection pinned to a model (create_collection) takes no vector another model computed.
    fingerprint = collection_fingerprint(collection)
    started = time.monotonic()
    failed: list[dict[str, Any]] = []
    uuids: dict[int, str] = {}
    reader = _Reader(collection.name, fields, key, failed)
    inserts = Inserts(collection, failed, uuids)

    def store(index: int, obj: Mapping[str, Any], object_id: Any, result: Any) -> None:
        uuids[index] = object_id
        inserts.add(index, DataObject(properties=weaviate_properties(obj, fields), uuid=object_id,
                                      vector={JOINT_VECTOR: np.asarray(result, dtype=np.float32).tolist()}))

    inserts.run(qvl.embed_stream(reader.items(objects), dimensions=dimensions, instruction=instruction,
                                 max_in_flight=max_in_flight, fingerprint=fingerprint),
                reader.pending, store, batch_size=batch_size, total=total, progress=progress, noun="objects",
                meter=Progress(f"ingested objects into {collection.name}", total, logger=log))
    seconds = time.monotonic() - started
    return {
        "inserted": len(uuids),
        "failed": failed,
        "uuids": [uuids.get(i) for i in range(reader.seen)],
        "seconds": round(seconds, 3),
        "objects_per_s": round(len(uuids) / seconds, 2) if seconds > 0 else None,
    }
