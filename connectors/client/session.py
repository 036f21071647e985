"""One ``embed_stream`` as state and decisions, without I/O: no grpc, no threads, no asyncio.

The sync and async drivers feed a ``StreamSession`` what happened (an item pulled from the
caller's iterable, a message about to be sent, a result, a stream's end, the clock) and do what
it decides; so the two drivers cannot drift. It keeps:

- the books: every item taken from the caller and not yet answered, under its sequence number
  (its position in the input), kept across the gRPC streams the session opens;
- the release: results arrive in any order and are handed on in input order, each once;
- the resend decision: a stream that failed as ``errors.resent`` says (its replica died, refused
  it or shut down), or that a replica answered as not ready, is followed by another that sends
  the unanswered items first, up to ``retries`` streams in a row without an answer;
- the model pin: the streams after the first are pinned to the model the first one announced
  (unless the caller pinned one), so a retry on a replica of another model is refused, not mixed;
- the stall decision: a stream with items out that answers nothing for ``stall_timeout`` seconds
  is cancelled and raises ``StreamStalled``; with ``stall_probe``, one quiet for that long has the
  service asked on a new connection, and is cancelled when nobody answers there. A cancelled call
  whose receive is still blocked ``cancel_grace`` seconds later is ended by force (once): a cancel
  was seen not to wake a receive blocked in gRPC (the sync driver closes and replaces the channel,
  the async one also interrupts the task that waits).

Not thread-safe: the sync driver holds one lock around every call.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.client.errors import (
    InvalidArgument,
    ItemFailure,
    QvlClientError,
    StreamStalled,
    TransientError,
    backoff,
    not_ready,
    reason_name,
    resent,
)
from connectors.client.items import Chunk, ItemLike, ItemRefused, fingerprint_of, stream_row, to_item
from qvl_proto import vectorizer_pb2 as pb

Row = np.ndarray | list[Chunk] | ItemFailure  # with chunking, an item's result is its chunks


class Step(enum.Enum):
    """What a stream's sender does next, when it has no item to send."""

    PULL = "pull"  # take the next item from the caller's iterable, then ``pulled``
    END = "end"  # send nothing more on this stream


class Watch(enum.Enum):
    """What a stream's watcher does after ``tick`` (or ``probed``)."""

    WAIT = "wait"  # look again in ``tick_every`` seconds
    PROBE = "probe"  # ask the service on a new connection, then ``probed``
    CANCEL = "cancel"  # cancel the call (the stream's end raises the stall)
    CLOSE = "close"  # the cancel did not end the call's receive: end it by force, then stop
    STOP = "stop"  # the stream is over: stop watching


@dataclass
class Stream:
    """One gRPC stream of a session."""

    resend_unready: bool  # items answered as not ready are sent again (retries are left)
    last: float  # the last progress: a result, or an item sent while none was out
    options: pb.EmbedOptions  # sent with its first message
    todo: deque[int] = field(default_factory=deque)  # items earlier streams left unanswered: sent first
    sent: int = 0
    received: int = 0
    answered: bool = False  # it answered an item (the retries in a row start again)
    first: bool = True  # the next message is its first: it carries the options
    halted: bool = False  # the replica said not ready: send nothing more, let it answer the rest
    over: bool = False  # the call ended
    probing_since: float = -math.inf  # when the last probe began
    error: QvlClientError | None = None  # how the call failed
    stall: StreamStalled | None = None  # why the session cancelled it
    cancelled_at: float = math.inf  # when the session cancelled it
    # Since when the driver's reader has been waiting for the next result (None: it is not, it
    # is handing a row on). Set by the reader alone, without the driver's lock.
    receiving_since: float | None = None
    closing: bool = False  # ended by force: the last thing the watcher does

    @property
    def stopped(self) -> bool:
        return self.over or self.halted or self.stall is not None


def _refused_as_not_ready(result: pb.EmbedStreamResult) -> bool:
    """A per-item result saying the item never reached this replica's model."""
    return result.HasField("error") and not_ready(result.error.code, reason_name(result.error.reason))


def prepare(raw: ItemLike) -> pb.Item | Exception:
    """``raw`` as the message it is sent as, or why it cannot be sent (``pulled`` takes either). Pure,
    and apart from ``pulled``: it copies media, so a driver runs it outside its lock."""
    try:
        return to_item(raw)  # its refusal names no item yet: ``pulled`` gives it the item's seq
    except (TypeError, ValueError) as exc:
        return exc


def call_retry(error: QvlClientError, attempt: int, *, retries: int, closed: bool, rng: Any = random) -> float:
    """The wait before a unary call that failed ``attempt + 1`` times is sent again; raises
    ``error`` when it is not sent again."""
    if not resent(error) or attempt >= retries or closed:
        raise error
    return backoff(attempt, rng=rng)


class StreamSession:
    """The books, release, resend and stall decisions of one ``embed_stream`` (see the module)."""

    def __init__(self, options: pb.EmbedOptions, *, max_in_flight: int, retries: int, stall_timeout: float,
                 stall_probe: float | None = None, cancel_grace: float = 3.0, rng: Any = random) -> None:
        self.options = options
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.stall_timeout = stall_timeout
        self.stall_probe = stall_probe
        self.cancel_grace = cancel_grace
        self.rng = rng
        # How often a watcher looks: often enough to act within a quarter of the shorter limit.
        self.tick_every = min(1.0, stall_timeout / 4, (stall_probe or math.inf) / 2)
        self.open: dict[int, pb.Item] = {}  # seq -> item, in seq order: taken, not answered
        self.next_seq = 0
        self.exhausted = False  # the caller's iterable gave its last item (or failed, or a bad one)
        self.failure: BaseException | None = None  # raised once the items before it are handed on
        self.pending: dict[int, Row] = {}  # answered, waiting for an earlier item
        self.released = 0  # the next seq to hand on
        self.attempt = 0  # streams in a row that ended without an answer
        self.current: Stream | None = None
        self.fingerprint: str | None = None  # of the model the first stream announced
        self.truncated: dict[int, int] = {}  # seq -> text tokens the service cut, of the items it cut

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.open

    # ---- a stream's life ----
    def start(self, now: float) -> Stream:
        """A new stream: it sends the items earlier ones left unanswered first."""
        self.current = Stream(resend_unready=self.attempt < self.retries, last=now, options=self._pinned(),
                              todo=deque(self.open))
        return self.current

    def _pinned(self) -> pb.EmbedOptions:
        """The options of a new stream: pinned to the model an earlier one announced (a retry that
        lands on a replica of another model, in a rolling upgrade, never mixes two models' vectors)."""
        if self.fingerprint is None or self.options.HasField("fingerprint"):
            return self.options
        pinned = pb.EmbedOptions()
        pinned.CopyFrom(self.options)
        pinned.fingerprint = self.fingerprint
        return pinned

    def announced(self, metadata: Any) -> str | None:
        """A stream's initial metadata (the driver reads it once a result came, while ``fingerprint``
        is None): the answering model's fingerprint, kept from the first stream that names one."""
        if self.fingerprint is None:
            self.fingerprint = fingerprint_of(metadata)
        return self.fingerprint

    def stop(self, stream: Stream) -> None:
        """The call is over (ended, failed or abandoned): its sender sends nothing more."""
        stream.over = True

    def failed(self, stream: Stream, error: QvlClientError) -> None:
        stream.error = error

    def ended(self, stream: Stream, *, closed: bool) -> float | None:
        """After the call ended: None when every item is answered, else the wait before the next
        stream; raises what is not sent again (or the caller's failure once nothing is left)."""
        stream.over = True
        error = stream.error
        # Every item answered: done, unless the call then failed in a way that is never sent again.
        if self.finished and (error is None or stream.stall is not None or resent(error)):
            if self.failure is not None:
                raise self.failure
            return None
        if stream.stall is not None:  # our cancel reads as CANCELLED, which would be sent again
            raise stream.stall
        error = error or TransientError(
            f"the service could not take {len(self.open)} items now (starting or draining)", code="UNAVAILABLE")
        attempt = 0 if stream.answered else self.attempt
        if not resent(error) or attempt >= self.retries or closed:
            raise error
        self.attempt = attempt + 1
        return backoff(attempt, rng=self.rng)

    # ---- sending ----
    def next_send(self, stream: Stream) -> int | Step:
        """The seq ``stream`` sends next, or PULL (an item from the caller first), or END."""
        while stream.todo:
            seq = stream.todo.popleft()
            if seq in self.open:
                return seq
        return Step.END if stream.stopped or self.exhausted else Step.PULL

    def pulled(self, stream: Stream, item: pb.Item | Exception) -> int | Step:
        """The caller's next item (``prepare``d), taken into the books: its seq, for ``stream`` to
        send, or END (``stream`` stopped meanwhile, or the item cannot be sent)."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        if isinstance(item, Exception):  # nothing after it is taken: it raises once those before are handed on
            named = item.at(seq) if isinstance(item, ItemRefused) else InvalidArgument(f"item {seq}: {item}", index=seq)
            self.source_ended(named)
            return Step.END
        self.open[seq] = item
        if stream is self.current and not stream.stopped:
            return seq
        if self.current is not None and not self.current.stopped:
            self.current.todo.append(seq)  # a lingering sender of an earlier stream took it
        return Step.END

    def source_ended(self, failure: BaseException | None = None) -> Step:
        """The caller's iterable has no more items (``failure``: it raised that)."""
        self.exhausted = True
        if failure is not None and self.failure is None:
            self.failure = failure
        return Step.END

    def may_send(self, stream: Stream) -> bool:
        """Whether the sender goes on (a free place in the window, or the stream stopped)."""
        return stream.stopped or stream.sent - stream.received < self.max_in_flight

    def request(self, stream: Stream, seq: int, now: float) -> pb.EmbedStreamRequest | None:
        """The message that sends ``seq`` on ``stream`` (None: the stream stopped; send nothing)."""
        item = self.open.get(seq)
        if stream.stopped or item is None:
            return None
        if stream.sent == stream.received:
            stream.last = now  # idle time while nothing was out is no stall
        stream.sent += 1
        # The first message of each stream carries the options (the service applies them to the
        # messages that have none).
        options, stream.first = (stream.options if stream.first else None), False
        return pb.EmbedStreamRequest(seq=seq, item=item, options=options)

    # ---- receiving ----
    def received(self, stream: Stream, result: pb.EmbedStreamResult, now: float) -> list[Row]:
        """A result: the rows now ready to hand on, in input order."""
        stream.received += 1
        stream.last = now
        if stream.resend_unready and _refused_as_not_ready(result):
            stream.halted = True  # this replica cannot take items now: the next stream sends them again
            return []
        if self.open.pop(result.seq, None) is None:
            return []  # not open: never handed on twice
        stream.answered = True
        if result.HasField("embedding") and result.embedding.truncated_tokens:
            self.truncated[result.seq] = result.embedding.truncated_tokens
        self.pending[result.seq] = stream_row(result)
        ready = []
        while self.released in self.pending:
            ready.append(self.pending.pop(self.released))
            self.released += 1
        return ready

    # ---- stalls ----
    def tick(self, stream: Stream, now: float) -> Watch:
        """The watcher's look at ``stream`` (every ``tick_every`` seconds)."""
        if stream.over or stream.closing:
            return Watch.STOP
        if stream.stall is not None:  # cancelled, and the call has not ended yet
            since = stream.receiving_since
            # A reader that is handing a row on (the caller holds it) is not blocked by gRPC.
            if since is None or now - max(since, stream.cancelled_at) < self.cancel_grace:
                return Watch.WAIT
            stream.closing = True
            return Watch.CLOSE
        if stream.sent <= stream.received and not self.open:
            return Watch.WAIT  # nothing out or owed: waiting on the caller, not on the service
        # Owed items not yet sent count too: a stream whose transport never takes them (opened as
        # the service went away) is as stuck as one that waits for their answers.
        quiet = now - stream.last
        if quiet > self.stall_timeout:
            return self._cancel(stream, StreamStalled(
                f"the stream answered nothing for {self.stall_timeout:g} s; cancelled", unreachable=False), now)
        probe = self.stall_probe
        if probe is not None and quiet >= probe and now - stream.probing_since >= probe:
            stream.probing_since = now
            return Watch.PROBE
        return Watch.WAIT

    def probed(self, stream: Stream, reachable: bool, now: float) -> Watch:
        """After a probe: cancel when nobody answered on a new connection and the stream made no
        progress meanwhile."""
        if reachable or stream.over or stream.stall is not None or stream.last > stream.probing_since:
            return Watch.WAIT
        return self._cancel(stream, StreamStalled(
            f"the service did not answer on a new connection after the stream had waited "
            f"{now - stream.last:.1f} s for an answer; cancelled", unreachable=True), now)

    @staticmethod
    def _cancel(stream: Stream, stall: StreamStalled, now: float) -> Watch:
        stream.stall, stream.cancelled_at = stall, now
        return Watch.CANCEL
