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
span of the video file: docs/documents.md). An item the client cannot send raises
``InvalidArgument`` naming the item and the key.

The parts: ``errors`` (exceptions, the reading of a failed call, the retry table), ``items`` and
``options`` (what is sent, checked first), ``session`` (one ``embed_stream``'s books and decisions,
without I/O), ``channel`` (the settings both clients share), ``sync_driver`` and ``async_driver``.
"""

from connectors.client.async_driver import AsyncClient
from connectors.client.channel import MAX_MESSAGE, SERVICE_CONFIG, SERVICE_NAME
from connectors.client.errors import (
    NOT_NOW,
    NOT_READY,
    RETRY,
    STREAM_RETRY,
    TRANSIENT,
    InvalidArgument,
    InvalidInput,
    ItemFailure,
    QvlClientError,
    StreamStalled,
    TransientError,
    Unauthenticated,
    not_ready,
    reason_name,
)
from connectors.client.items import (
    FINGERPRINT_KEY,
    ITEM_KEYS,
    Chunk,
    ItemLike,
    ItemRefused,
    RerankResult,
    as_list,
    chunks_of,
    embedding_array,
    to_item,
)
from connectors.client.options import ENCODINGS, TRUNCATE, UINT32_MAX, chunking_message
from connectors.client.sync_driver import Client

__all__ = [
    "ENCODINGS",
    "FINGERPRINT_KEY",
    "ITEM_KEYS",
    "MAX_MESSAGE",
    "NOT_NOW",
    "NOT_READY",
    "RETRY",
    "SERVICE_CONFIG",
    "SERVICE_NAME",
    "STREAM_RETRY",
    "TRANSIENT",
    "TRUNCATE",
    "UINT32_MAX",
    "AsyncClient",
    "Chunk",
    "Client",
    "InvalidArgument",
    "InvalidInput",
    "ItemFailure",
    "ItemLike",
    "ItemRefused",
    "QvlClientError",
    "RerankResult",
    "StreamStalled",
    "TransientError",
    "Unauthenticated",
    "as_list",
    "chunking_message",
    "chunks_of",
    "embedding_array",
    "not_ready",
    "reason_name",
    "to_item",
]
