"""The Python client of the qvl gRPC API (sync ``Client`` and asyncio ``AsyncClient``).

The target is any gRPC target: ``host:port``, several replicas as ``ipv4:10.0.0.1:50051,10.0.0.2:50051``
(or ``ipv6:[::1]:50051,...``), or ``dns:///qvl.internal:50051`` for a name with one address per
replica. Calls are spread over the replicas with gRPC's own ``round_robin`` policy, and gRPC's
client-side health checking (``grpc.health.v1``, which ``qvl serve`` serves) leaves out a replica
that is starting, draining or gone. A call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED,
or that a replica shutting down CANCELLED, is retried (on another replica); an ``embed_stream``
whose replica dies sends the items it had not had answered again on a new stream. Embedding is
idempotent (the same item gives the same vector on any replica running the same checkpoint), so
retrying is safe, and each result is handed on exactly once.

Items are dicts: ``{"text": str | [str], "image": bytes | [bytes], "video": bytes,
"frames": [bytes], "image_uri": str | [str], "video_uri": str, "document": bytes (a PDF),
"document_uri": str, "page": int, "start_s": float, "end_s": float, "instruction": str}``, or a
plain string for a text item (``page`` selects a page of the document, ``start_s`` / ``end_s`` a
span of the video file: docs/documents.md).
"""

from __future__ import annotations

import asyncio
import json
import math
import numbers
import random
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc

ItemLike = str | Mapping[str, Any]
ENCODINGS = {"float32": pb.FLOAT32, "float16": pb.FLOAT16, "int8": pb.INT8, "binary": pb.BINARY}
# Text past the service's QVL_EMBED_MAX_LENGTH: refused ("none"), or cut at the "start" or the "end".
TRUNCATE = {"end": pb.TRUNCATE_END, "none": pb.TRUNCATE_NONE, "start": pb.TRUNCATE_START}
ITEM_KEYS = ("text", "image", "video", "frames", "image_uri", "video_uri", "document", "document_uri", "page",
             "start_s", "end_s", "instruction")
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
MAX_MESSAGE = 256 * 1024 * 1024
# A call or stream that failed with these is sent again (another replica, or the same one back).
# CANCELLED: gRPC's server cancels a call that reaches it in the instant it shuts down (a draining
# replica closing its port); this client never cancels a call whose answer it still waits for.
RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
STREAM_RETRY = {code.name for code in RETRY}
# The service's reason (ItemError.reason, the "qvl-reason" trailer) for work that never reached the
# model: see ``not_ready``.
NOT_READY = "NOT_READY"
# The metadata key of every embed answer: the fingerprint of the model that computed it (issue 23).
FINGERPRINT_KEY = "qvl-model-fingerprint"
SERVICE_NAME = "qvl.v1.Vectorizer"
# round_robin over every address the target resolves to, each watched with grpc.health.v1: a
# replica that is NOT_SERVING (loading, draining, restarting its model process) gets no calls.
# (pick_first, gRPC's default, would send everything to the first address that connects.)
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE_NAME}}



def as_list(value: Any) -> list[Any]:
    """None -> [], a list or tuple -> a list, anything else -> [it] (one part or many)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]

def not_ready(code: str, reason: str | None) -> bool:
    """The one rule for a failure that never reached the model (the replica was starting, draining or
    restarting its model process): not the item's fault, and safe to send to another replica. Read
    from the service's typed reason, never its words. Other UNAVAILABLE failures (the model process
    died with the item in it) are the item's."""
    return code == "UNAVAILABLE" and reason == NOT_READY


def reason_name(value: int) -> str | None:
    """The name of an ``ItemError.reason`` (None when unset or unknown to these stubs)."""
    try:
        return pb.ErrorReason.Name(value) if value else None
    except ValueError:  # a reason added by a newer service: nothing this client acts on
        return None


class QvlClientError(Exception):
    """A failed call: ``code`` is the gRPC status name, ``index`` the item it concerns (if one),
    ``limit`` the service's limit that refused it (the ``QVL_*`` setting that raises it, or
    ``"dimensions"``), ``reason`` the service's reason (see ``not_ready``)."""

    def __init__(self, message: str, *, code: str, index: int | None = None, limit: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.index = index
        self.limit = limit
        self.reason = reason


class InvalidInput(QvlClientError):
    """The request (or the item at ``index``) is bad; retrying will not help."""


class InvalidArgument(InvalidInput, ValueError):
    """An argument of a client method (or the item at ``index``) is out of range or of the wrong
    type; nothing was sent."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message, code="INVALID_ARGUMENT", index=index)


UINT32_MAX = 2 ** 32 - 1


def _whole(name: str, value: Any, *, least: int, most: int = UINT32_MAX, note: str = "") -> int:
    """``value`` as an int within [least, most], or ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not least <= value <= most:
        bound = f"at least {least}" if most == UINT32_MAX else f"between {least} and {most}"
        raise InvalidArgument(f"{name} must be a whole number {bound}{note}, got {value!r}")
    return int(value)


def _seconds(name: str, value: Any) -> float:
    """A positive, finite number of seconds, or ``InvalidArgument`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _timeout(value: Any) -> float | None:
    return None if value is None else _seconds("timeout", value)


class TransientError(QvlClientError):
    """UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED after the retries: try again later."""


class Unauthenticated(QvlClientError):
    """The service requires a token and this one is missing or wrong."""


@dataclass
class ItemFailure:
    """A per-item error from ``embed_stream`` (the stream goes on)."""

    index: int
    message: str
    code: str
    limit: str | None = None  # the service's limit that refused it (as QvlClientError.limit)
    reason: str | None = None  # the service's reason (as QvlClientError.reason; see ``not_ready``)


@dataclass
class RerankResult:
    scores: np.ndarray  # document order; NaN where a document failed
    ranking: list[tuple[int, float]]  # (index, score), best first
    errors: dict[int, str] = field(default_factory=dict)


def to_item(item: ItemLike, index: int | None = None, *, what: str | None = None) -> pb.Item:
    """The wire form of an item; a wrong key or value raises ``InvalidArgument`` naming the item
    (``index``, its place in the call, or ``what`` it is) and the key."""
    if isinstance(item, pb.Item):
        return item
    if isinstance(item, str):
        return pb.Item(parts=[pb.Part(text=item)])
    where = what or ("item" if index is None else f"item {index}")
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"{where}: an item is a str or a dict with the keys {', '.join(ITEM_KEYS)}, "
                              f"got {type(item).__name__}", index)
    unknown = [k for k in item if k not in ITEM_KEYS]
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r}; an item's keys are {', '.join(ITEM_KEYS)}",
                              index)
    parts: list[pb.Part] = []
    key = ""
    try:
        # Videos, images, then texts: the order of the item's parts in the model's prompt.
        for key in ("video", "frames", "video_uri", "image", "image_uri", "document", "document_uri", "text"):
            parts += _parts(key, item.get(key), item)
        key = "instruction"
        return pb.Item(parts=parts, instruction=item.get("instruction"))
    except (TypeError, ValueError):  # a value of the wrong type (protobuf's own words name no key)
        raise InvalidArgument(f"{where}: {key!r} {_expected(key)}, got {_kind(item.get(key))}", index) from None


def _parts(key: str, value: Any, item: Mapping[str, Any]) -> list[pb.Part]:
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


def _items(items: Sequence[ItemLike]) -> list[pb.Item]:
    return [to_item(item, i) for i, item in enumerate(items)]


def _truncated(resp: pb.EmbedResponse) -> dict[int, int]:
    """Item index -> tokens cut, for the items the service cut to its maximum length."""
    return {i: e.truncated_tokens for i, e in enumerate(resp.embeddings) if e.truncated_tokens}




@dataclass
class Chunk:
    """One part of an item split by chunking: its vector, and where it lies in the source
    (``{"page": n}``, ``{"start_s", "end_s"}`` or ``{"char_start", "char_end"}``)."""

    vector: np.ndarray
    locator: dict[str, float | int]


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


def chunks_of(message: pb.Chunks) -> list[Chunk]:
    return [Chunk(embedding_array(c.embedding),
                  {field.name: value for field, value in c.locator.ListFields()}) for c in message.chunks]


def embedding_array(e: pb.Embedding) -> np.ndarray:
    """float32/float16 as float arrays, int8 as int8 (scale in ``Client.last_scales``), binary as packed uint8."""
    if e.encoding == pb.FLOAT32:
        return np.asarray(e.values, dtype=np.float32)
    if e.encoding == pb.FLOAT16:
        return np.frombuffer(e.packed, dtype="<f2").astype(np.float16)
    if e.encoding == pb.INT8:
        return np.frombuffer(e.packed, dtype=np.int8).copy()
    return np.frombuffer(e.packed, dtype=np.uint8).copy()


def _options(dimensions: int | None, encoding: str, normalize: bool, instruction: str | None,
             allow_partial: bool = False, truncate: str = "end",
             chunking: Mapping[str, Any] | None = None, fingerprint: str | None = None) -> pb.EmbedOptions:
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"encoding must be one of {sorted(ENCODINGS)}, got {encoding!r}")
    if truncate not in TRUNCATE:
        raise InvalidArgument(f"truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
    if dimensions is not None:
        dimensions = _whole("dimensions", dimensions, least=1,
                            note=" (the service accepts 32 up to its model's size)")
    return pb.EmbedOptions(dimensions=dimensions, encoding=ENCODINGS[encoding], normalize=normalize,
                           instruction=instruction, allow_partial=allow_partial, truncate=TRUNCATE[truncate],
                           chunking=None if chunking is None else chunking_message(chunking), fingerprint=fingerprint)


def _rerank_request(query: ItemLike, documents: Sequence[ItemLike], instruction: str | None, top_k: int | None,
                    allow_partial: bool) -> pb.RerankRequest:
    if top_k is not None:
        top_k = _whole("top_k", top_k, least=1)
    return pb.RerankRequest(query=to_item(query, what="query"), documents=_items(documents),
                            instruction=instruction, top_k=top_k, allow_partial=allow_partial)


def _stream_limits(max_in_flight: Any, timeout: Any) -> tuple[int, float | None]:
    return _whole("max_in_flight", max_in_flight, least=1), _timeout(timeout)


def _item_index(message: str) -> int | None:
    """The service names items as "item N: ..."."""
    if message.startswith("item "):
        head = message[5:].split(":", 1)[0].split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def _translate(err: grpc.RpcError) -> QvlClientError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(err)
    kind: type[QvlClientError] = QvlClientError
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        kind = InvalidInput
    elif code in TRANSIENT:
        kind = TransientError
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        kind = Unauthenticated
    # The service names the refusing limit and the item in trailing metadata (older ones: only
    # in the message, as "item N: ...").
    trailers = dict(_trailing_metadata(err))
    item = trailers.get("qvl-item")
    index = int(item) if item is not None and item.isdigit() else _item_index(message)
    return kind(message, code=code.name, index=index, limit=trailers.get("qvl-limit"),
                reason=trailers.get("qvl-reason"))


def _fingerprint_of(metadata: Any) -> str | None:
    """The answering model's fingerprint in a call's initial metadata (key, value pairs in both the
    sync and the asyncio API); None from a service older than fingerprints."""
    for key, value in metadata or ():
        if key == FINGERPRINT_KEY:
            return str(value)
    return None


def _status_lost(err: grpc.RpcError) -> bool:
    """grpc.aio reports a stream that the server ended while a request was still being written as
    INTERNAL "Internal error from Core", in place of the server's own status (grpc/grpc#36066):
    seen in about 1 stream in 6 that a replica cancels as it shuts down."""
    try:
        debug = err.debug_error_string() if hasattr(err, "debug_error_string") else ""
    except Exception:  # no debug string on this error
        return False
    return (err.code() == grpc.StatusCode.INTERNAL and debug.startswith('Failed "execute_batch"')
            and "SendMessageOperation" in debug)


def _lost_status() -> TransientError:
    """What a lost status is taken for: the server ended the stream while it was being fed, as a
    replica shutting down or refusing the stream does, so its unanswered items are sent again."""
    return TransientError("the stream ended while items were being sent, and grpc.aio lost the service's "
                          "status (grpc/grpc#36066)", code="UNAVAILABLE")


def _trailing_metadata(err: grpc.RpcError) -> list[tuple[str, str]]:
    try:
        got = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    except Exception:  # an error raised before the call had trailers (e.g. a closed channel)
        return []
    return [(str(k), v if isinstance(v, str) else v.decode("utf-8", "replace")) for k, v in (got or ())]


def _backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    return random.uniform(0, min(cap, base * 2 ** attempt))  # full jitter


def _rerank_result(resp: pb.RerankResponse) -> RerankResult:
    return RerankResult(scores=np.asarray(resp.scores, dtype=np.float32),
                        ranking=[(r.index, r.score) for r in resp.ranking],
                        errors={e.index: e.message for e in resp.errors})


class _InOrder:
    """Stream results (which arrive in any order) handed back in input order."""

    def __init__(self) -> None:
        self.pending: dict[int, np.ndarray | list[Chunk] | ItemFailure] = {}
        self.next = 0

    def add(self, result: pb.EmbedStreamResult) -> list[np.ndarray | list[Chunk] | ItemFailure]:
        if result.HasField("error"):
            self.pending[result.seq] = ItemFailure(int(result.seq), result.error.message, result.error.code,
                                                   result.error.limit or None, reason_name(result.error.reason))
        elif result.HasField("chunks"):
            self.pending[result.seq] = chunks_of(result.chunks)
        else:
            self.pending[result.seq] = embedding_array(result.embedding)
        ready = []
        while self.next in self.pending:
            ready.append(self.pending.pop(self.next))
            self.next += 1
        return ready


_END = object()
# One stream-stream call starts at a time in a process: grpcio 1.78 was seen to crash (SIGSEGV in its
# C core) when two threads started streams on their own channels at once (a worker's lanes at
# start-up: about 1 start in 40). Starting is quick; the streams then run side by side.
_STREAM_START = threading.Lock()


class _StreamBooks:
    """What one ``embed_stream`` has taken from its items and not had answered, kept across the
    gRPC streams it opens. A stream that fails (its replica died) or that a replica could not serve
    (starting, draining) is followed by another that sends those items again under the same seq,
    first; each seq's result is handed on once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the books (the reader of results and the sender share them)
        self.open: dict[int, pb.Item] = {}  # seq -> item, in seq order: taken, not answered
        self.next_seq = 0
        self.exhausted = False
        self.refused: InvalidArgument | None = None  # an item that could not be sent: the stream stops there
        self.fingerprint: str | None = None  # of the model the first stream announced

    def pinned(self, options: pb.EmbedOptions) -> pb.EmbedOptions:
        """The options of a further stream: pinned to the model that answered the first, so that a
        retry on another replica (a rolling upgrade) never mixes two models' vectors in one run."""
        if self.fingerprint is None or options.HasField("fingerprint"):
            return options
        out = pb.EmbedOptions()
        out.CopyFrom(options)
        out.fingerprint = self.fingerprint
        return out

    def announced(self, metadata: Any) -> None:
        if self.fingerprint is None:
            self.fingerprint = _fingerprint_of(metadata)

    def unsent(self, sent: set[int]) -> tuple[int, pb.Item] | None:
        """The first open item this stream has not sent yet."""
        with self.lock:
            for seq, item in self.open.items():
                if seq not in sent:
                    return seq, item
        return None

    def add(self, raw: ItemLike) -> tuple[int, pb.Item] | None:
        """The item under its seq, or None (and nothing more is taken) when it cannot be sent."""
        try:
            item = to_item(raw, self.next_seq)
        except InvalidArgument as exc:  # a wrong key or value: the caller's code, not the service
            self.refused, self.exhausted = exc, True
            return None
        with self.lock:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.open[seq] = item
        return seq, item

    def answered(self, seq: int) -> bool:
        """Closes ``seq``; False for one that was not open (never handed on twice)."""
        with self.lock:
            return self.open.pop(seq, None) is not None

    @property
    def finished(self) -> bool:
        with self.lock:
            return self.exhausted and not self.open


def _not_ready(result: pb.EmbedStreamResult) -> bool:
    """A per-item result saying the item never reached this replica's model."""
    return result.HasField("error") and not_ready(result.error.code, reason_name(result.error.reason))


def _unfinished(books: _StreamBooks, progressed: bool) -> tuple[QvlClientError, bool]:
    """Why a stream that ended without error left items open (the replica could not take them)."""
    with books.lock:
        waiting = len(books.open)
    return (TransientError(f"the service could not take {waiting} items now (starting or draining)",
                           code=grpc.StatusCode.UNAVAILABLE.name), progressed)


class _Base:
    def __init__(self, target: str, *, token: str | None = None, timeout: float = 120.0, retries: int = 6,
                 root_certificates: bytes | None = None, tls: bool = False, stall_timeout: float = 120.0,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.timeout = _seconds("timeout", timeout)
        self.retries = _whole("retries", retries, least=0)
        self.stall_timeout = _seconds("stall_timeout", stall_timeout)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # Keepalive finds a dead connection in seconds; a short reconnect backoff finds a service
        # that came back (gRPC's default backoff grows to two minutes).
        defaults = {"grpc.max_send_message_length": MAX_MESSAGE, "grpc.max_receive_message_length": MAX_MESSAGE,
                    "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 5_000,
                    "grpc.keepalive_permit_without_calls": 1, "grpc.http2.max_pings_without_data": 0,
                    "grpc.max_reconnect_backoff_ms": 5_000, "grpc.service_config": json.dumps(SERVICE_CONFIG)}
        self.options = list({**defaults, **dict(channel_options)}.items())
        self.credentials = grpc.ssl_channel_credentials(root_certificates) if (tls or root_certificates) else None
        self.retried = 0  # calls and streams sent again (RETRY)
        self.last_truncated: dict[int, int] = {}  # the last embed's cut items: index -> tokens cut
        # The fingerprint of the model that answered the last embed / embed_stream (metadata
        # "qvl-model-fingerprint"); None before, or from a service older than fingerprints.
        self.last_fingerprint: str | None = None
        self.closed = False

    def _retry_stream(self, ended: tuple[QvlClientError, bool], attempt: int) -> int:
        """The next attempt number for a stream that ended with ``ended`` (error, whether it
        answered anything), or raises the error when it is not retried."""
        error, progressed = ended
        attempt = 0 if progressed else attempt
        if error.code not in STREAM_RETRY or attempt >= self.retries or self.closed:
            raise error
        self.retried += 1
        return attempt + 1


class Client(_Base):
    """Blocking client. Retries UNAVAILABLE, RESOURCE_EXHAUSTED and CANCELLED with jittered backoff."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.channel = (grpc.secure_channel(target, self.credentials, options=self.options) if self.credentials
                        else grpc.insecure_channel(target, options=self.options))
        self.stub = pb_grpc.VectorizerStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout if timeout is None else timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                translated = _translate(err)
                if err.code() not in RETRY or attempt >= self.retries or self.closed:
                    raise translated from None
                self.retried += 1
                time.sleep(_backoff(attempt))
                attempt += 1

    def info(self) -> pb.InfoResponse:
        return self._call(self.stub.Info, pb.InfoRequest())

    def wait_ready(self, timeout: float = 120.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def embed(self, items: Sequence[ItemLike], *, dimensions: int | None = None, encoding: str = "float32",
              normalize: bool = True, instruction: str | None = None, truncate: str = "end",
              timeout: float | None = None, fingerprint: str | None = None) -> np.ndarray:
        """One row per item (float32 by default; int8 / packed binary as integer arrays).

        ``truncate``: an item past the service's maximum length is cut at the "end" (the default)
        or the "start" of its text, or refused ("none": ``InvalidInput`` with ``limit``
        QVL_EMBED_MAX_LENGTH); ``last_truncated`` then maps each cut item's index to the tokens cut.
        With ``fingerprint`` the service refuses (FAILED_PRECONDITION) unless its model has that
        fingerprint; ``last_fingerprint`` says which model answered.
        """
        options = _options(dimensions, encoding, normalize, instruction, truncate=truncate, fingerprint=fingerprint)
        request = pb.EmbedRequest(items=_items(items), options=options)
        resp, call = self._call(self.stub.Embed.with_call, request, _timeout(timeout))
        self.last_fingerprint = _fingerprint_of(call.initial_metadata())
        self.last_scales = np.asarray([e.scale for e in resp.embeddings], dtype=np.float32)
        self.last_truncated = _truncated(resp)
        return np.stack([embedding_array(e) for e in resp.embeddings]) if resp.embeddings else np.zeros((0, 0))

    def embed_chunks(self, items: Sequence[ItemLike], *, chunking: Mapping[str, Any], dimensions: int | None = None,
                     encoding: str = "float32", normalize: bool = True, instruction: str | None = None,
                     timeout: float | None = None) -> list[list[Chunk]]:
        """Each item split by ``chunking`` (docs/documents.md): per item, its chunks in order."""
        options = _options(dimensions, encoding, normalize, instruction, chunking=chunking)
        request = pb.EmbedRequest(items=[to_item(i) for i in items], options=options)
        resp = self._call(self.stub.Embed, request, _timeout(timeout))
        return [chunks_of(c) for c in resp.chunks]

    def rerank(self, query: ItemLike, documents: Sequence[ItemLike], *, instruction: str | None = None,
               top_k: int | None = None, allow_partial: bool = False, timeout: float | None = None) -> RerankResult:
        request = _rerank_request(query, documents, instruction, top_k, allow_partial)
        return _rerank_result(self._call(self.stub.Rerank, request, _timeout(timeout)))

    def embed_stream(self, items: Iterable[ItemLike], *, dimensions: int | None = None, encoding: str = "float32",
                     normalize: bool = True, instruction: str | None = None, truncate: str = "end",
                     max_in_flight: int = 256, timeout: float | None = None,
                     chunking: Mapping[str, Any] | None = None, fingerprint: str | None = None,
                     ) -> Iterator[np.ndarray | list[Chunk] | ItemFailure]:
        """Results in input order, with at most ``max_in_flight`` items sent and not yet answered.

        With ``chunking``, each item's result is its list of ``Chunk``s. A bad item yields an
        ``ItemFailure`` and the stream goes on. When the stream fails with
        UNAVAILABLE, RESOURCE_EXHAUSTED or CANCELLED (its replica died, refused it or shut down), or
        the replica answers items as not ready (``not_ready``), a new stream (round_robin: another
        replica) sends the unanswered items again, up to ``retries`` times in a row without an answer; after that the
        failure raises (items not yet answered were not embedded). A stream that answers nothing
        for ``stall_timeout`` seconds while items are outstanding raises at once. An item the client
        cannot send (an unknown key, a value of the wrong type) raises ``InvalidArgument`` naming it
        once the items before it are handed on. ``truncate`` as in ``embed`` (a refused item is an
        ``ItemFailure`` with ``limit``).

        ``fingerprint`` pins the model (items another model would embed come back as failures with
        reason MODEL_MISMATCH); without it, the model the first stream announces is pinned for the
        streams that follow (``last_fingerprint``).
        """
        options = _options(dimensions, encoding, normalize, instruction, truncate=truncate, chunking=chunking,
                           fingerprint=fingerprint)
        max_in_flight, timeout = _stream_limits(max_in_flight, timeout)
        books = _StreamBooks()
        source = iter(items)
        pulling = threading.Lock()  # one sender pulls from ``source`` at a time (an old stream's may linger)
        order = _InOrder()
        attempt = 0
        while True:
            ended = yield from self._one_stream(books, source, pulling, order, books.pinned(options), max_in_flight,
                                                timeout, resend_unready=attempt < self.retries)
            if ended is None:
                if books.refused is not None:
                    raise books.refused
                return
            attempt = self._retry_stream(ended, attempt)
            time.sleep(_backoff(attempt - 1))

    def _one_stream(self, books: _StreamBooks, source: Iterator[ItemLike], pulling: threading.Lock,
                    order: _InOrder, options: pb.EmbedOptions, max_in_flight: int, timeout: float | None,
                    resend_unready: bool
                    ) -> Generator[np.ndarray | ItemFailure, None, tuple[QvlClientError, bool] | None]:
        """One gRPC stream of an ``embed_stream``; returns None when every item is answered, else
        (the error it ended with, whether it answered anything)."""
        window = threading.Semaphore(max_in_flight)
        done = threading.Event()  # the stream is over: send nothing more
        halt = threading.Event()  # the replica is draining: send nothing more, let it finish
        progress = {"last": time.monotonic(), "sent": 0, "received": 0, "stalled": False}

        def stopped() -> bool:
            return done.is_set() or halt.is_set()

        def next_item(sent: set[int]) -> tuple[int, pb.Item] | None:
            with pulling:
                got = books.unsent(sent)  # items an earlier stream left unanswered go first
                if got is None and not stopped() and not books.exhausted:
                    raw = next(source, _END)
                    if raw is _END:
                        books.exhausted = True
                    else:
                        got = books.add(raw)
            return got

        def requests() -> Iterator[pb.EmbedStreamRequest]:
            sent: set[int] = set()
            while (got := next_item(sent)) is not None:
                while not window.acquire(timeout=0.1):
                    if stopped():
                        return
                if stopped():
                    return
                if progress["sent"] == progress["received"]:
                    progress["last"] = time.monotonic()  # idle time while nothing was outstanding is no stall
                progress["sent"] += 1
                seq, item = got
                # The first message of each stream carries the options (the service applies them
                # to the messages that have none).
                yield pb.EmbedStreamRequest(seq=seq, item=item, options=None if sent else options)
                sent.add(seq)

        with _STREAM_START:
            call = self.stub.EmbedStream(requests(), timeout=timeout, metadata=self.metadata)

        def watchdog() -> None:
            while not done.wait(1.0):
                outstanding = progress["sent"] > progress["received"]
                if outstanding and time.monotonic() - progress["last"] > self.stall_timeout:
                    progress["stalled"] = True
                    call.cancel()
                    return

        threading.Thread(target=watchdog, name="qvl-stream-watchdog", daemon=True).start()
        answered = False
        try:
            for result in call:
                progress["received"] += 1
                progress["last"] = time.monotonic()
                window.release()
                if books.fingerprint is None:
                    books.announced(call.initial_metadata())
                    self.last_fingerprint = books.fingerprint
                if resend_unready and _not_ready(result):
                    halt.set()  # this replica cannot take items now: the next stream sends them again
                    continue
                if books.answered(result.seq):
                    answered = True
                    yield from order.add(result)
        except grpc.RpcError as err:
            if progress["stalled"]:
                raise TransientError(f"the stream answered nothing for {self.stall_timeout} s; cancelled",
                                     code="DEADLINE_EXCEEDED") from None
            return _translate(err), answered
        finally:
            done.set()
            call.cancel()
        return None if books.finished else _unfinished(books, answered)


class AsyncClient(_Base):
    """asyncio client with the same methods as ``Client``."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.channel = (grpc.aio.secure_channel(target, self.credentials, options=self.options)
                        if self.credentials else grpc.aio.insecure_channel(target, options=self.options))
        self.stub = pb_grpc.VectorizerStub(self.channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        await self.channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self.timeout if timeout is None else timeout,
                                    metadata=self.metadata)
            except grpc.RpcError as err:
                translated = _translate(err)
                if err.code() not in RETRY or attempt >= self.retries or self.closed:
                    raise translated from None
                self.retried += 1
                await asyncio.sleep(_backoff(attempt))
                attempt += 1

    async def info(self) -> pb.InfoResponse:
        return await self._call(self.stub.Info, pb.InfoRequest())

    async def embed(self, items: Sequence[ItemLike], *, dimensions: int | None = None, encoding: str = "float32",
                    normalize: bool = True, instruction: str | None = None, truncate: str = "end",
                    timeout: float | None = None, fingerprint: str | None = None) -> np.ndarray:
        options = _options(dimensions, encoding, normalize, instruction, truncate=truncate, fingerprint=fingerprint)
        request = pb.EmbedRequest(items=_items(items), options=options)

        async def with_metadata(message: pb.EmbedRequest, **kwargs: Any) -> pb.EmbedResponse:
            call = self.stub.Embed(message, **kwargs)
            response = await call
            self.last_fingerprint = _fingerprint_of(await call.initial_metadata())
            return response

        resp = await self._call(with_metadata, request, _timeout(timeout))
        self.last_truncated = _truncated(resp)
        return np.stack([embedding_array(e) for e in resp.embeddings]) if resp.embeddings else np.zeros((0, 0))

    async def embed_chunks(self, items: Sequence[ItemLike], *, chunking: Mapping[str, Any],
                           dimensions: int | None = None, encoding: str = "float32", normalize: bool = True,
                           instruction: str | None = None, timeout: float | None = None) -> list[list[Chunk]]:
        options = _options(dimensions, encoding, normalize, instruction, chunking=chunking)
        request = pb.EmbedRequest(items=[to_item(i) for i in items], options=options)
        resp = await self._call(self.stub.Embed, request, _timeout(timeout))
        return [chunks_of(c) for c in resp.chunks]

    async def rerank(self, query: ItemLike, documents: Sequence[ItemLike], *, instruction: str | None = None,
                     top_k: int | None = None, allow_partial: bool = False,
                     timeout: float | None = None) -> RerankResult:
        request = _rerank_request(query, documents, instruction, top_k, allow_partial)
        return _rerank_result(await self._call(self.stub.Rerank, request, _timeout(timeout)))

    async def embed_stream(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *,
                           dimensions: int | None = None, encoding: str = "float32", normalize: bool = True,
                           instruction: str | None = None, truncate: str = "end", max_in_flight: int = 256,
                           timeout: float | None = None, chunking: Mapping[str, Any] | None = None,
                           fingerprint: str | None = None,
                           ) -> AsyncIterator[np.ndarray | list[Chunk] | ItemFailure]:
        """As ``Client.embed_stream`` (without the stall timeout): unanswered items are sent again
        on a new stream after UNAVAILABLE (or as ``RETRY`` says), up to ``retries`` times in a row."""
        options = _options(dimensions, encoding, normalize, instruction, truncate=truncate, chunking=chunking,
                           fingerprint=fingerprint)
        max_in_flight, timeout = _stream_limits(max_in_flight, timeout)

        async def each() -> AsyncIterator[ItemLike]:
            if isinstance(items, AsyncIterable):
                async for it in items:
                    yield it
            else:
                for it in items:
                    yield it

        books = _StreamBooks()
        source = each()
        pulling = asyncio.Lock()
        order = _InOrder()
        attempt = 0
        while True:
            ended: tuple[QvlClientError, bool] | None = None
            async for row in self._one_stream(books, source, pulling, order, books.pinned(options), max_in_flight,
                                              timeout, attempt < self.retries):
                if isinstance(row, tuple):
                    ended = row
                else:
                    yield row
            if ended is None:
                if books.refused is not None:
                    raise books.refused
                return
            attempt = self._retry_stream(ended, attempt)
            await asyncio.sleep(_backoff(attempt - 1))

    async def _one_stream(self, books: _StreamBooks, source: AsyncIterator[ItemLike], pulling: asyncio.Lock,
                          order: _InOrder, options: pb.EmbedOptions, max_in_flight: int, timeout: float | None,
                          resend_unready: bool
                          ) -> AsyncIterator[np.ndarray | ItemFailure | tuple[QvlClientError, bool]]:
        """One gRPC stream; its last value is (error, answered anything) when it left items open."""
        window = asyncio.Semaphore(max_in_flight)
        stop = asyncio.Event()

        async def next_item(sent: set[int]) -> tuple[int, pb.Item] | None:
            async with pulling:
                got = books.unsent(sent)
                if got is None and not stop.is_set() and not books.exhausted:
                    try:
                        got = books.add(await anext(source))
                    except StopAsyncIteration:
                        books.exhausted = True
            return got

        async def requests() -> AsyncIterator[pb.EmbedStreamRequest]:
            sent: set[int] = set()
            while (got := await next_item(sent)) is not None:
                await window.acquire()
                if stop.is_set():
                    return
                seq, item = got
                yield pb.EmbedStreamRequest(seq=seq, item=item, options=None if sent else options)
                sent.add(seq)

        call = self.stub.EmbedStream(requests(), timeout=timeout, metadata=self.metadata)
        answered = False
        try:
            async for result in call:
                window.release()
                if books.fingerprint is None:
                    books.announced(await call.initial_metadata())
                    self.last_fingerprint = books.fingerprint
                if resend_unready and _not_ready(result):
                    stop.set()
                    continue
                if books.answered(result.seq):
                    answered = True
                    for row in order.add(result):
                        yield row
        except grpc.RpcError as err:
            yield (_lost_status() if _status_lost(err) else _translate(err)), answered
            return
        finally:
            stop.set()
            window.release()  # a sender waiting for the window sees the stop
            call.cancel()
        if not books.finished:
            yield _unfinished(books, answered)
