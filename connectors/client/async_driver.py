"""The asyncio client: grpc.aio calls on the event loop, every decision in ``session``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import grpc
import numpy as np

from connectors.client.channel import PROBE_TIMEOUT_S, ClientBase
from connectors.client.errors import ItemFailure, code_name, reachable, stream_error, translate
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

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        attempt = 0
        while True:
            try:
                return await method(request, timeout=self._timeout(timeout), metadata=self.metadata)
            except grpc.RpcError as err:
                error = translate(err)
            await asyncio.sleep(self._call_retry(error, attempt))  # raises the error when it is not sent again
            attempt += 1

    async def info(self) -> pb.InfoResponse:
        return await self._call(self.stub.Info, pb.InfoRequest())

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
        resp = await self._call(self._embed_call, embed_request(items, options), optional_seconds("timeout", timeout))
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
        return chunk_lists(await self._call(self.stub.Embed, request, optional_seconds("timeout", timeout)))

    async def rerank(self, query: ItemLike, documents: Sequence[ItemLike], *, instruction: str | None = None,
                     top_k: int | None = None, allow_partial: bool = False,
                     timeout: float | None = None) -> RerankResult:
        request = rerank_request(query, documents, instruction, top_k, allow_partial)
        return rerank_result(await self._call(self.stub.Rerank, request, optional_seconds("timeout", timeout)))

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
        call = self.stub.EmbedStream(_requests(session, stream, source, pulling, wake), timeout=timeout,
                                     metadata=self.metadata)
        watcher = asyncio.ensure_future(self._watch(session, stream, call))
        try:
            async for result in call:
                if session.fingerprint is None:  # the first answer: the metadata has come
                    self.last_fingerprint = session.announced(await call.initial_metadata())
                rows = session.received(stream, result, time.monotonic())
                wake.set()
                for row in rows:
                    yield row
        except grpc.RpcError as err:
            session.failed(stream, stream_error(err))
        except asyncio.CancelledError:
            if stream.stall is None:  # not our cancel: the caller's task is being cancelled
                raise
        finally:
            session.stop(stream)
            wake.set()
            watcher.cancel()
            call.cancel()

    async def _watch(self, session: StreamSession, stream: Stream, call: Any) -> None:
        """The stream's clock: the session decides when to probe and when to cancel."""
        while True:
            await asyncio.sleep(session.tick_every)
            action = session.tick(stream, time.monotonic())
            if action is Watch.PROBE:
                answered = reachable(await self._probe())
                action = session.probed(stream, answered, time.monotonic())
            if action is Watch.CANCEL:
                call.cancel()
            if action in (Watch.CANCEL, Watch.STOP):
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
