"""The asyncio client: grpc.aio calls on the event loop, every decision in ``session``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
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


class AsyncClient(ClientBase):
    """asyncio client with the same methods as ``Client``."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.channel = self._new_channel(self.options)
        self.stub = pb_grpc.VectorizerStub(self.channel)

    def _new_channel(self, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self.credentials:
            return grpc.aio.secure_channel(self.target, self.credentials, options=options)
        return grpc.aio.insecure_channel(self.target, options=options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        await self.channel.close()

    async def _replace_channel(self, stale: grpc.aio.Channel) -> None:
        """As ``Client._replace_channel`` (one event loop: no lock)."""
        if self.closed or self.channel is not stale:
            return
        self.channel = self._new_channel(self.options)
        self.stub = pb_grpc.VectorizerStub(self.channel)
        log.warning("a cancelled stream had not ended after %g s; its channel was closed and replaced",
                    self.cancel_grace, extra={"target": self.target})
        # Shielded: the stalled stream ends as the close cancels it, and its end cancels this watcher.
        await asyncio.shield(stale.close())

    def _replaced(self, channel: grpc.aio.Channel) -> TransientError | None:
        """As ``Client._replaced`` (grpc.aio raises UsageError on a closed channel)."""
        if self.closed or channel is self.channel:
            return None
        return TransientError("the client's channel was replaced as the call started", code="CANCELLED")

    async def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """As ``Client._call``: ``method`` looked up at each attempt."""
        attempt = 0
        while True:
            channel = self.channel
            try:
                return await attrgetter(method)(self)(request, timeout=self._timeout(timeout), metadata=self.metadata)
            except grpc.RpcError as err:
                error = translate(err)
            except (grpc.aio.UsageError, asyncio.CancelledError):
                # On a replaced channel: grpc.aio refuses a new call, and cancels one in flight as it
                # closes it (not this task: that one is being cancelled itself).
                task = asyncio.current_task()
                if (task is not None and task.cancelling()) or (replaced := self._replaced(channel)) is None:
                    raise
                error = replaced
            await asyncio.sleep(self._call_retry(error, attempt))  # raises the error when it is not sent again
            attempt += 1

    async def info(self) -> pb.InfoResponse:
        return await self._call("stub.Info", pb.InfoRequest())

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """As ``Client.wait_ready`` (``grpc.FutureTimeoutError`` after ``timeout``)."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise grpc.FutureTimeoutError(f"{self.target} was not ready within {timeout:g} s") from None

    async def embed(self, items: Sequence[ItemLike], *, dimensions: int | None = None, encoding: str = "float32",
                    normalize: bool = True, instruction: str | None = None, truncate: str = "end",
                    timeout: float | None = None, fingerprint: str | None = None) -> np.ndarray:
        """As ``Client.embed`` (``last_scales``, ``last_truncated``, ``last_fingerprint``)."""
        options = embed_options(dimensions, encoding, normalize, instruction, truncate=truncate,
                                fingerprint=fingerprint)
        resp = await self._call("_embed_call", embed_request(items, options), optional_seconds("timeout", timeout))
        rows, self.last_scales = embeddings(resp)
        self.last_truncated = truncated(resp)
        return rows

    async def _embed_call(self, request: pb.EmbedRequest, **kwargs: Any) -> pb.EmbedResponse:
        """One ``Embed`` call, the answering model's fingerprint read from its metadata."""
        call = self.stub.Embed(request, **kwargs)
        response = await call
        self.last_fingerprint = fingerprint_of(await call.initial_metadata())
        return response

    async def embed_chunks(self, items: Sequence[ItemLike], *, chunking: Mapping[str, Any],
                           dimensions: int | None = None, encoding: str = "float32", normalize: bool = True,
                           instruction: str | None = None, timeout: float | None = None) -> list[list[Chunk]]:
        """As ``Client.embed_chunks``."""
        options = embed_options(dimensions, encoding, normalize, instruction, chunking=chunking)
        request = embed_request(items, options)
        return chunk_lists(await self._call("stub.Embed", request, optional_seconds("timeout", timeout)))

    async def rerank(self, query: ItemLike, documents: Sequence[ItemLike], *, instruction: str | None = None,
                     top_k: int | None = None, allow_partial: bool = False,
                     timeout: float | None = None) -> RerankResult:
        request = rerank_request(query, documents, instruction, top_k, allow_partial)
        return rerank_result(await self._call("stub.Rerank", request, optional_seconds("timeout", timeout)))

    async def embed_stream(self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], *,
                           dimensions: int | None = None, encoding: str = "float32", normalize: bool = True,
                           instruction: str | None = None, truncate: str = "end", max_in_flight: int = 256,
                           timeout: float | None = None, chunking: Mapping[str, Any] | None = None,
                           fingerprint: str | None = None) -> AsyncIterator[np.ndarray | list[Chunk] | ItemFailure]:
        """As ``Client.embed_stream`` (the same session decides: resends, stalls, the stall probe;
        ``chunking``: each item's chunks; ``fingerprint``: the model pin)."""
        options = embed_options(dimensions, encoding, normalize, instruction, truncate=truncate, chunking=chunking,
                                fingerprint=fingerprint)
        max_in_flight, timeout = stream_limits(max_in_flight, timeout)
        session = self._session(options, max_in_flight)
        self.last_truncated = session.truncated  # filled as results come, before each is handed on
        source = _each(items)
        pulling = asyncio.Lock()  # one sender pulls from ``source`` at a time (an old stream's may linger)
        while True:
            stream = session.start(time.monotonic())
            # aclosing: a caller that stops reading ends the call now, not when the generator is collected.
            async with aclosing(self._one_stream(session, stream, source, pulling, timeout)) as rows:
                async for row in rows:
                    yield row
            delay = session.ended(stream, closed=self.closed)  # raises what is not sent again
            if delay is None:
                return
            self.retried += 1
            await asyncio.sleep(delay)

    async def _one_stream(self, session: StreamSession, stream: Stream, source: AsyncIterator[ItemLike],
                          pulling: asyncio.Lock, timeout: float | None) -> AsyncIterator[Row]:
        """One gRPC stream of an ``embed_stream``: its results handed on as the session releases them."""
        wake = asyncio.Event()  # the window may have room, or the stream stopped
        channel = self.channel
        try:
            call = self._open_stream(channel, _requests(session, stream, source, pulling, wake), timeout)
        except grpc.aio.UsageError:
            if (replaced := self._replaced(channel)) is None:
                raise
            session.failed(stream, replaced)
            return
        reader = asyncio.current_task()  # the caller's task, which waits for the results
        watcher = asyncio.ensure_future(self._watch(session, stream, call, channel, reader))
        try:
            async for result in _results(stream, call):
                if session.fingerprint is None:  # the first answer: the metadata has come
                    self.last_fingerprint = session.announced(await call.initial_metadata())
                rows = session.received(stream, result, time.monotonic())
                wake.set()
                for row in rows:
                    yield row
        except grpc.RpcError as err:
            session.failed(stream, stream_error(err))
        except asyncio.CancelledError:
            if stream.closing and reader is not None:
                reader.uncancel()  # the watcher interrupted the reader (Watch.CLOSE): taken back
            # Our cancel of the call reads as CancelledError too; the caller's task being cancelled
            # (by itself, or also) raises.
            if stream.stall is None or (reader is not None and reader.cancelling()):
                raise
        finally:
            session.stop(stream)
            wake.set()
            watcher.cancel()
            call.cancel()

    def _open_stream(self, channel: grpc.aio.Channel, requests: AsyncIterator[pb.EmbedStreamRequest],
                     timeout: float | None) -> Any:
        """An ``EmbedStream`` call on ``channel`` (the seam of ``Client._open_stream``)."""
        return pb_grpc.VectorizerStub(channel).EmbedStream(requests, timeout=timeout, metadata=self.metadata)

    async def _watch(self, session: StreamSession, stream: Stream, call: Any, channel: grpc.aio.Channel,
                     reader: asyncio.Task[Any] | None) -> None:
        """The stream's clock: the session decides when to probe, to cancel, and to end by force a
        call the cancel did not end (grpc.aio's channel close does not end a stream read by another
        task: the reader's wait is interrupted, and the channel replaced)."""
        while True:
            await asyncio.sleep(session.tick_every)
            action = session.tick(stream, time.monotonic())
            if action is Watch.PROBE:
                answered = reachable(await self._probe())
                action = session.probed(stream, answered, time.monotonic())
            if action is Watch.CANCEL:
                call.cancel()
            elif action is Watch.CLOSE:
                if reader is not None:
                    reader.cancel()
                await self._replace_channel(channel)
            if action in (Watch.CLOSE, Watch.STOP):
                return

    async def _probe(self) -> str | None:
        """``Info`` on a new channel: None when it answered, else its status name."""
        channel = self._new_channel(self.probe_options)
        try:
            await pb_grpc.VectorizerStub(channel).Info(pb.InfoRequest(), timeout=PROBE_TIMEOUT_S,
                                                       metadata=self.metadata)
            return None
        except grpc.RpcError as err:
            return code_name(err)
        finally:
            await channel.close()


async def _each(items: Iterable[ItemLike] | AsyncIterable[ItemLike]) -> AsyncIterator[ItemLike]:
    if isinstance(items, AsyncIterable):
        async for it in items:
            yield it
    else:
        for it in items:
            yield it


async def _results(stream: Stream, call: AsyncIterable[pb.EmbedStreamResult]) -> AsyncIterator[pb.EmbedStreamResult]:
    """As the sync driver's ``_results``."""
    results = aiter(call)
    while True:
        stream.receiving_since = time.monotonic()
        try:
            result = await anext(results)
        except StopAsyncIteration:
            return
        finally:
            stream.receiving_since = None
        yield result


async def _requests(session: StreamSession, stream: Stream, source: AsyncIterator[ItemLike],
                    pulling: asyncio.Lock, wake: asyncio.Event) -> AsyncIterator[pb.EmbedStreamRequest]:
    """The messages of one stream."""
    while True:
        async with pulling:
            step = session.next_send(stream)
            if step is Step.PULL:
                try:
                    step = session.pulled(stream, prepare(await anext(source)))
                except StopAsyncIteration:
                    step = session.source_ended()
                except Exception as exc:  # the caller's own error: raised to the caller, not into gRPC
                    step = session.source_ended(exc)
        if step is Step.END:
            return
        while not session.may_send(stream):
            wake.clear()
            await wake.wait()
        request = session.request(stream, step, time.monotonic())
        if request is None:
            return
        yield request
