"""The blocking client: gRPC calls on threads, every decision in ``session``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any

import grpc
import numpy as np

from connectors.client.channel import PROBE_TIMEOUT_S, ClientBase
from connectors.client.errors import ItemFailure, TransientError, code_name, reachable, stream_error, translate
from connectors.client.items import (
    Chunk,
    ItemLike,
    RerankResult,
    chunk_lists,
    embeddings,
    fingerprint_of,
    rerank_result,
    truncated,
)
from connectors.client.options import embed_options, embed_request, optional_seconds, rerank_request, stream_limits
from connectors.client.session import Row, Step, Stream, StreamSession, Watch, prepare
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc

log = logging.getLogger("qvl.client")

_END = object()
# One stream-stream call starts at a time in a process: grpcio 1.78 was seen to crash (SIGSEGV in its
# C core) when two threads started streams on their own channels at once (a worker's lanes at
# start-up: about 1 start in 40). Starting is quick; the streams then run side by side.
_STREAM_START = threading.Lock()


class Client(ClientBase):
    """Blocking client. Retries UNAVAILABLE, RESOURCE_EXHAUSTED and CANCELLED with jittered backoff."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._swap = threading.Lock()  # the channel is closed, or replaced, by one thread at a time
        self.channel = self._new_channel(self.options)
        self.stub = pb_grpc.VectorizerStub(self.channel)

    def _new_channel(self, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self.credentials:
            return grpc.secure_channel(self.target, self.credentials, options=options)
        return grpc.insecure_channel(self.target, options=options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._swap:
            self.closed = True
            self.channel.close()

    def _replace_channel(self, stale: grpc.Channel) -> None:
        """A new channel for the calls to come, then ``stale`` closed: every call still on it ends
        (CANCELLED, sent again as any CANCELLED is), the stalled one whose cancel did not end it too."""
        with self._swap:
            if self.closed or self.channel is not stale:
                return
            self.channel = self._new_channel(self.options)
            self.stub = pb_grpc.VectorizerStub(self.channel)
        stale.close()  # outside the lock: ``close`` need not wait on it
        log.warning("a cancelled stream had not ended after %g s; its channel was closed and replaced",
                    self.cancel_grace, extra={"target": self.target})

    def _replaced(self, channel: grpc.Channel) -> TransientError | None:
        """A call that could not start on ``channel`` (ValueError: it is closed) is sent again when a
        stalled stream's channel was replaced meanwhile (not when the client was closed)."""
        if self.closed or channel is self.channel:
            return None
        return TransientError("the client's channel was replaced as the call started", code="CANCELLED")

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """``method`` (a path from the client, as "stub.Info": looked up at each attempt, on the
        channel of that moment) with retries."""
        attempt = 0
        while True:
            channel = self.channel
            try:
                return attrgetter(method)(self)(request, timeout=self._timeout(timeout), metadata=self.metadata)
            except grpc.RpcError as err:
                error = translate(err)
            except ValueError:
                if (replaced := self._replaced(channel)) is None:
                    raise
                error = replaced
            time.sleep(self._call_retry(error, attempt))  # raises the error when it is not sent again
            attempt += 1

    def info(self) -> pb.InfoResponse:
        return self._call("stub.Info", pb.InfoRequest())

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until the channel is connected (a replica serving); ``grpc.FutureTimeoutError`` after ``timeout``."""
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
        options = embed_options(dimensions, encoding, normalize, instruction, truncate=truncate,
                                fingerprint=fingerprint)
        request = embed_request(items, options)
        resp, call = self._call("stub.Embed.with_call", request, optional_seconds("timeout", timeout))
        self.last_fingerprint = fingerprint_of(call.initial_metadata())
        rows, self.last_scales = embeddings(resp)
        self.last_truncated = truncated(resp)
        return rows

    def embed_chunks(self, items: Sequence[ItemLike], *, chunking: Mapping[str, Any], dimensions: int | None = None,
                     encoding: str = "float32", normalize: bool = True, instruction: str | None = None,
                     timeout: float | None = None) -> list[list[Chunk]]:
        """Each item split by ``chunking`` (docs/documents.md): per item, its chunks in order."""
        options = embed_options(dimensions, encoding, normalize, instruction, chunking=chunking)
        request = embed_request(items, options)
        return chunk_lists(self._call("stub.Embed", request, optional_seconds("timeout", timeout)))

    def rerank(self, query: ItemLike, documents: Sequence[ItemLike], *, instruction: str | None = None,
               top_k: int | None = None, allow_partial: bool = False, timeout: float | None = None) -> RerankResult:
        request = rerank_request(query, documents, instruction, top_k, allow_partial)
        return rerank_result(self._call("stub.Rerank", request, optional_seconds("timeout", timeout)))

    def embed_stream(self, items: Iterable[ItemLike], *, dimensions: int | None = None, encoding: str = "float32",
                     normalize: bool = True, instruction: str | None = None, truncate: str = "end",
                     max_in_flight: int = 256, timeout: float | None = None,
                     chunking: Mapping[str, Any] | None = None, fingerprint: str | None = None,
                     ) -> Iterator[np.ndarray | list[Chunk] | ItemFailure]:
        """Results in input order, with at most ``max_in_flight`` items sent and not yet answered.

        With ``chunking``, each item's result is its list of ``Chunk``s. ``truncate`` as in ``embed``
        (a refused item is an ``ItemFailure`` with ``limit``; ``last_truncated`` holds each cut item's
        input index and tokens cut by the time its result is handed on). A bad item yields an ``ItemFailure``
        and the stream goes on. When the stream fails with
        UNAVAILABLE, RESOURCE_EXHAUSTED or CANCELLED (its replica died, refused it or shut down), or
        the replica answers items as not ready (``not_ready``), a new stream (round_robin: another
        replica) sends the unanswered items again, up to ``retries`` times in a row without an answer; after that the
        failure raises (items not yet answered were not embedded). A stream that answers nothing
        for ``stall_timeout`` seconds while items are outstanding raises ``StreamStalled`` at once
        (so does one the ``stall_probe`` finds the service gone for). An item that cannot be sent
        raises ``InvalidArgument`` naming it, and an exception of ``items`` itself is raised as it
        is, each after the results of the items before it.

        ``fingerprint`` pins the model (items another model would embed come back as failures with
        reason MODEL_MISMATCH); without it, the model the first stream announces is pinned for the
        streams that follow (``last_fingerprint``).
        """
        options = embed_options(dimensions, encoding, normalize, instruction, truncate=truncate, chunking=chunking,
                                fingerprint=fingerprint)
        max_in_flight, timeout = stream_limits(max_in_flight, timeout)
        session = self._session(options, max_in_flight)
        self.last_truncated = session.truncated  # filled as results come, before each is handed on
        source = iter(items)
        lock = threading.Lock()  # the session's (the reader, the sender and the watcher share it)
        pulling = threading.Lock()  # one sender pulls from ``source`` at a time (an old stream's may linger)
        while True:
            with lock:
                stream = session.start(time.monotonic())
            yield from self._one_stream(session, stream, source, lock, pulling, timeout)
            with lock:
                delay = session.ended(stream, closed=self.closed)  # raises what is not sent again
            if delay is None:
                return
            self.retried += 1
            time.sleep(delay)

    def _one_stream(self, session: StreamSession, stream: Stream, source: Iterator[ItemLike], lock: threading.Lock,
                    pulling: threading.Lock, timeout: float | None) -> Generator[Row, None, None]:
        """One gRPC stream of an ``embed_stream``: its results handed on as the session releases them."""
        wake = threading.Event()  # the window may have room, or the stream stopped
        over = threading.Event()
        requests = _requests(session, stream, source, lock, pulling, wake)
        channel = self.channel
        try:
            with _STREAM_START:
                call = self._open_stream(channel, requests, timeout)
        except ValueError:
            if (replaced := self._replaced(channel)) is None:
                raise
            with lock:
                session.failed(stream, replaced)
            return
        threading.Thread(target=self._watch, args=(session, stream, lock, call, over, channel),
                         name="qvl-stream-watch", daemon=True).start()
        try:
            for result in _results(stream, call):
                if session.fingerprint is None:  # the first answer: the metadata has come
                    metadata = call.initial_metadata()
                    with lock:
                        self.last_fingerprint = session.announced(metadata)
                with lock:
                    rows = session.received(stream, result, time.monotonic())
                wake.set()
                yield from rows
        except grpc.RpcError as err:
            with lock:
                session.failed(stream, stream_error(err))
        finally:
            with lock:
                session.stop(stream)
            over.set()
            wake.set()
            call.cancel()

    def _open_stream(self, channel: grpc.Channel, requests: Iterator[pb.EmbedStreamRequest],
                     timeout: float | None) -> Any:
        """An ``EmbedStream`` call on ``channel`` (a seam: tests/unit/test_client_stall.py gives it a
        call whose cancel does not wake its receive)."""
        return pb_grpc.VectorizerStub(channel).EmbedStream(requests, timeout=timeout, metadata=self.metadata)

    def _watch(self, session: StreamSession, stream: Stream, lock: threading.Lock, call: Any,
               over: threading.Event, channel: grpc.Channel) -> None:
        """The stream's clock: the session decides when to probe, to cancel, and to close the channel
        of a call the cancel did not end."""
        while not over.wait(session.tick_every):
            with lock:
                action = session.tick(stream, time.monotonic())
            if action is Watch.PROBE:
                answered = reachable(self._probe())
                with lock:
                    action = session.probed(stream, answered, time.monotonic())
            if action is Watch.CANCEL:
                call.cancel()
            elif action is Watch.CLOSE:
                self._replace_channel(channel)
            if action in (Watch.CLOSE, Watch.STOP):
                return

    def _probe(self) -> str | None:
        """``Info`` on a new channel: None when it answered, else its status name."""
        channel = self._new_channel(self.probe_options)
        try:
            pb_grpc.VectorizerStub(channel).Info(pb.InfoRequest(), timeout=PROBE_TIMEOUT_S, metadata=self.metadata)
            return None
        except grpc.RpcError as err:
            return code_name(err)
        finally:
            channel.close()


def _results(stream: Stream, call: Iterable[pb.EmbedStreamResult]) -> Iterator[pb.EmbedStreamResult]:
    """The call's results; ``stream.receiving_since`` says while the reader waits in gRPC for one."""
    results = iter(call)
    while True:
        stream.receiving_since = time.monotonic()
        try:
            result = next(results)
        except StopIteration:
            return
        finally:
            stream.receiving_since = None
        yield result


def _requests(session: StreamSession, stream: Stream, source: Iterator[ItemLike], lock: threading.Lock,
              pulling: threading.Lock, wake: threading.Event) -> Iterator[pb.EmbedStreamRequest]:
    """The messages of one stream (gRPC's sending thread runs this)."""
    while True:
        with pulling:
            with lock:
                step = session.next_send(stream)
            if step is Step.PULL:
                try:
                    raw = next(source, _END)  # the caller's iterable: may block, so outside the lock
                except Exception as exc:  # the caller's own error: raised to the caller, not into gRPC
                    raw, failure = _END, exc
                else:
                    failure = None
                item = None if raw is _END else prepare(raw)
                with lock:
                    step = session.source_ended(failure) if item is None else session.pulled(stream, item)
        if step is Step.END:
            return
        while True:
            wake.clear()
            with lock:
                if session.may_send(stream):
                    break
            wake.wait()
        with lock:
            request = session.request(stream, step, time.monotonic())
        if request is None:
            return
        yield request
