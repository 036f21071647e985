"""What both ingests share (``ingest``: one object per source; ``part_ingest``: one per part): the
error that names an object, media values, keys, and ``Inserts``, the pipelined ``insert_many``."""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from weaviate.classes.data import DataObject
from weaviate.collections import Collection
from weaviate.collections.classes.batch import BatchObjectReturn
from weaviate.exceptions import WeaviateBaseError

from connectors.client import ItemFailure, QvlClientError, as_list
from connectors.progress import Progress
from qvl_proto import vectorizer_pb2 as pb

KeyFn = Callable[[Mapping[str, Any]], Any]
ProgressFn = Callable[[int, int | None], None]
StoreFn = Callable[[int, Any, Any, Any], None]  # (index, object, key, the answer): adds its objects


class IngestError(ValueError):
    """An object could not be turned into an item; the message names the object and field."""


def media_bytes(value: bytes | str, *, what: str) -> bytes:
    """Raw bytes of a media value given as bytes or as (standard) base64 text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if not isinstance(value, str):
        raise IngestError(f"{what} holds {type(value).__name__}, not bytes or base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IngestError(f"{what} is not valid base64") from None


def media_b64(value: bytes | str) -> str:
    """The base64 text Weaviate stores in a ``blob`` property."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def key_value(obj: Mapping[str, Any], key: str | KeyFn, *, index: int) -> Any:
    """The object's key: the value of the property named ``key``, or what ``key(obj)`` returns."""
    value = obj.get(key) if isinstance(key, str) else key(obj)
    if value is None or value == "":
        what = f"key property {key!r}" if isinstance(key, str) else "the key function's value"
        raise IngestError(f"object {index}: {what} is missing or empty")
    return value


def object_item(obj: Mapping[str, Any], fields: Mapping[str, list[str]], *, index: int = 0) -> pb.Item:
    """One Qwen3-VL item from an object's fields: videos, images, documents (a chunked collection's PDF),
    then texts, each role's fields in the order given (under text chunking the split text comes last)."""
    parts: list[pb.Part] = []
    for field in fields.get("video", []):
        for v in as_list(obj.get(field)):
            parts.append(pb.Part(video=media_bytes(v, what=f"object {index}: video field {field!r}")))
    for field in fields.get("image", []):
        for v in as_list(obj.get(field)):
            parts.append(pb.Part(image=media_bytes(v, what=f"object {index}: image field {field!r}")))
    for field in fields.get("document", []):
        for v in as_list(obj.get(field)):
            parts.append(pb.Part(document=media_bytes(v, what=f"object {index}: document field {field!r}")))
    for field in fields.get("text", []):
        for v in as_list(obj.get(field)):
            if not isinstance(v, str):
                raise IngestError(f"object {index}: text field {field!r} holds {type(v).__name__}, not str")
            parts.append(pb.Part(text=v))
    return pb.Item(parts=parts)


class Inserts:
    """Embedded objects into Weaviate, ``insert_many`` a chunk at a time, at most ``IN_FLIGHT``
    chunks sent and unanswered; a refused object leaves ``uuids`` and joins ``failed`` (stage
    "insert", named by its index)."""

    IN_FLIGHT = 2

    def __init__(self, collection: Collection, failed: list[dict[str, Any]], uuids: dict[int, Any]) -> None:
        self.collection, self.failed, self.uuids = collection, failed, uuids
        self.chunk: list[tuple[int, DataObject[Any, Any]]] = []
        self.pool = ThreadPoolExecutor(self.IN_FLIGHT, thread_name_prefix="qvl-ingest-insert")
        self.sent: deque[tuple[list[int], Future[BatchObjectReturn]]] = deque()

    def add(self, index: int, obj: DataObject[Any, Any]) -> None:
        self.chunk.append((index, obj))

    def send(self) -> None:
        if not self.chunk:
            return
        while len(self.sent) >= self.IN_FLIGHT:
            self._settle(*self.sent.popleft())
        indices, objects = [i for i, _ in self.chunk], [o for _, o in self.chunk]
        self.sent.append((indices, self.pool.submit(self.collection.data.insert_many, objects)))
        self.chunk = []

    def finish(self) -> None:
        self.send()
        while self.sent:
            self._settle(*self.sent.popleft())
        self.pool.shutdown()

    def _settle(self, indices: list[int], future: Future[BatchObjectReturn]) -> None:
        try:
            errors = {k: e.message for k, e in future.result().errors.items()}
        except WeaviateBaseError as exc:  # every object of the chunk refused, or the request failed
            errors = dict.fromkeys(range(len(indices)), str(exc))
        for k, message in sorted(errors.items()):
            index = indices[k]
            self.uuids.pop(index, None)
            self.failed.append({"index": index, "stage": "insert", "error": f"object {index}: {message}"})

    def run(self, results: Iterable[Any], pending: deque[tuple[int, Any, Any]], store: StoreFn, *,
            batch_size: int, meter: Progress, progress: ProgressFn | None, total: int | None, noun: str) -> None:
        """Both ingests' loop: each answer (in input order) with its pending object, a failure recorded,
        a vector handed to ``store`` (which ``add``s), a full chunk sent. If the stream itself breaks, the
        objects already embedded are still inserted and the error names the first unanswered object
        (counted here, not read from ``pending``: the stream's sending thread may be reading one)."""
        done = answered = 0
        try:
            for result in results:
                index, obj, value = pending.popleft()
                answered = index + 1
                if isinstance(result, ItemFailure):
                    self.failed.append({"index": index, "stage": "embed", "error": f"object {index}: {result.message}"})
                else:
                    store(index, obj, value, result)
                    if len(self.chunk) >= batch_size:
                        self.send()
                done += 1
                meter.advance()
                if progress is not None:
                    progress(done, total)
        except QvlClientError as exc:
            self.finish()
            raise IngestError(f"collection {self.collection.name!r}: the embedding stream failed at object "
                              f"{answered} after {len(self.uuids)} embedded {noun}; objects {answered} and later "
                              f"were not inserted: {exc}") from exc
        self.finish()
        meter.finish()
        self.failed.sort(key=lambda f: f["index"])
