"""The client's exceptions, the reading of a failed gRPC call, and THE retry table.

No grpc import: a failed call is read through the methods every ``grpc.RpcError`` has (code,
details, trailing metadata, debug string), so the stream session can use the table without
gRPC's runtime.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from qvl_proto import vectorizer_pb2 as pb

# ---- the retry table: which failures are sent again (one place for both clients) ----
# A call or stream that failed with these is sent again (another replica, or the same one back).
# CANCELLED: gRPC's server cancels a call that reaches it in the instant it shuts down (a draining
# replica closing its port); this client never cancels a call whose answer it still waits for.
RETRY = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"})
STREAM_RETRY = RETRY  # the same for a stream's unanswered items (the old name)
# What raises ``TransientError`` (try again later) once the retries are spent.
TRANSIENT = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
# "Not now" rather than "never" (the Postgres worker's rules, which may not import the client, keep
# the same codes in connectors/postgres/worker/attempts.py: its probe waits these out).
NOT_NOW = RETRY | TRANSIENT
# The service's reason (ItemError.reason, the "qvl-reason" trailer) for work that never reached the
# model: see ``not_ready``. An item answered so is sent again like an unanswered one.
NOT_READY = "NOT_READY"


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


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0, rng: Any = random) -> float:
    """The wait before sending again after ``attempt`` failures in a row (full jitter)."""
    return float(rng.uniform(0, min(cap, base * 2 ** attempt)))


# ---- exceptions ----
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
    type; it was not sent."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message, code="INVALID_ARGUMENT", index=index)


class TransientError(QvlClientError):
    """UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED after the retries: try again later."""


class StreamStalled(TransientError):
    """An ``embed_stream`` the client cancelled: it answered nothing for ``stall_timeout`` seconds
    (code DEADLINE_EXCEEDED), or, with ``stall_probe``, the service did not answer on a new
    connection while the stream waited (``unreachable``, code UNAVAILABLE). Raised at once, never
    sent again; items not yet handed on were not embedded."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message, code="UNAVAILABLE" if unreachable else "DEADLINE_EXCEEDED")
        self.unreachable = unreachable


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


def resent(error: QvlClientError) -> bool:
    """Whether a call or stream that ended with ``error`` is sent again (retries permitting)."""
    return error.code in RETRY and not isinstance(error, StreamStalled | InvalidArgument)


# ---- reading a failed call ----
def _item_index(message: str) -> int | None:
    """The service names items as "item N: ..."."""
    if message.startswith("item "):
        head = message[5:].split(":", 1)[0].split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def _trailing_metadata(err: Any) -> list[tuple[str, str]]:
    try:
        got = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    except Exception:  # an error raised before the call had trailers (e.g. a closed channel)
        return []
    return [(str(k), v if isinstance(v, str) else v.decode("utf-8", "replace")) for k, v in (got or ())]


def code_name(err: Any) -> str:
    """The status name of a ``grpc.RpcError`` ("UNKNOWN" when it has none)."""
    code = err.code() if hasattr(err, "code") else None
    return getattr(code, "name", None) or "UNKNOWN"


def translate(err: Any) -> QvlClientError:
    """A ``grpc.RpcError`` as this client's exception."""
    code = code_name(err)
    message = (err.details() if hasattr(err, "details") else None) or str(err)
    kind: type[QvlClientError] = QvlClientError
    if code == "INVALID_ARGUMENT":
        kind = InvalidInput
    elif code in TRANSIENT:
        kind = TransientError
    elif code == "UNAUTHENTICATED":
        kind = Unauthenticated
    # The service names the refusing limit and the item in trailing metadata (older ones: only
    # in the message, as "item N: ...").
    trailers = dict(_trailing_metadata(err))
    item = trailers.get("qvl-item")
    index = int(item) if item is not None and item.isdigit() else _item_index(message)
    return kind(message, code=code, index=index, limit=trailers.get("qvl-limit"), reason=trailers.get("qvl-reason"))


def status_lost(err: Any) -> bool:
    """grpc.aio reports a stream that the server ended while a request was still being written as
    INTERNAL "Internal error from Core", in place of the server's own status (grpc/grpc#36066):
    seen in about 1 stream in 6 that a replica cancels as it shuts down."""
    # The code first: the sync stub's debug_error_string() waits forever on a call cancelled
    # locally (it has none), as a stalled stream is.
    if code_name(err) != "INTERNAL":
        return False
    try:
        debug = err.debug_error_string() if hasattr(err, "debug_error_string") else ""
    except Exception:  # no debug string on this error
        return False
    return isinstance(debug, str) and debug.startswith('Failed "execute_batch"') and "SendMessageOperation" in debug


def stream_error(err: Any) -> QvlClientError:
    """How a stream's failure is read (both drivers): a lost status is taken for what it hides, the
    server ending the stream while it was being fed (a replica shutting down or refusing it), so
    the stream's unanswered items are sent again."""
    if status_lost(err):
        return TransientError("the stream ended while items were being sent, and grpc lost the service's "
                              "status (grpc/grpc#36066)", code="UNAVAILABLE")
    return translate(err)


def reachable(code: str | None) -> bool:
    """Whether a probe that ended with ``code`` (None: it succeeded) reached the service: anything
    but "nobody answered in time" says the service is there."""
    return code not in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
