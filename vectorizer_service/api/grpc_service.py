"""The gRPC API (qvl.v1.Vectorizer) on grpc.aio, plus health, reflection and token auth."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from vectorizer_service.api.bearer import bearer_matches
from vectorizer_service.api.grpc_stream import EmbedStreamSession, embed_options
from vectorizer_service.api.item_codecs import (
    chunking_from_proto,
    chunks_to_proto,
    embedding_to_proto,
    item_error,
    item_from_proto,
)
from vectorizer_service.api.service_info import service_info
from vectorizer_service.core.call_context import CallContext
from vectorizer_service.core.errors import (
    InputError,
    QvlError,
)
from vectorizer_service.core.items import check_item_count
from vectorizer_service.core.model_identity import FINGERPRINT_KEY
from vectorizer_service.core.ranking import check_rerank_request
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving import metrics
from vectorizer_service.serving.dispatcher import Dispatcher

log = logging.getLogger("qvl.grpc")
SERVICE_NAME = "qvl.v1.Vectorizer"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` (the scheme in any case) on every call except
    health checks."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            metrics.ERRORS.labels("unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self.deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self.deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(details)
        if bearer_matches(dict(details.invocation_metadata or ()).get("authorization"), self.token):
            return await continuation(details)
        return self.deny_stream if details.method.endswith("/EmbedStream") else self.deny_unary


class VectorizerServicer(pb_grpc.VectorizerServicer):
    def __init__(self, dispatcher: Dispatcher, settings: Settings) -> None:
        self.dispatcher = dispatcher
        self.settings = settings

    def _context(self, context: grpc.aio.ServicerContext) -> CallContext:
        remaining = context.time_remaining()
        limit = self.settings.request_timeout_s
        return CallContext.within(limit if remaining is None else min(remaining, limit))

    async def _fail(self, context: grpc.aio.ServicerContext, endpoint: str, err: QvlError) -> NoReturn:
        """Counts the failure and aborts the call (``context.abort`` raises)."""
        code = grpc.StatusCode[err.code]
        metrics.REQUESTS.labels(endpoint, code.name).inc()
        metrics.ERRORS.labels(code.name.lower()).inc()
        trailers: list[tuple[str, str]] = []
        if isinstance(err, InputError):  # what to change, for callers that need not parse the message
            if err.limit is not None:
                trailers.append(("qvl-limit", err.limit))
            if err.item is not None:
                trailers.append(("qvl-item", str(err.item)))
        if err.error_reason is not None:
            trailers.append(("qvl-reason", err.error_reason.value))
        await context.abort(code, str(err), trailing_metadata=tuple(trailers))

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        started = time.perf_counter()
        wire, held = self.dispatcher.admission.wire, 0
        try:
            size = request.ByteSize()
            held = wire.hold_or_refuse(size)
            options = embed_options(request.options)
            chunking = chunking_from_proto(request.options)
            ctx = self._context(context)
            if chunking is None:
                # Admission is decided on the message's size before its media are copied into items.
                results = await self.dispatcher.embed(
                    lambda: [item_from_proto(it, i, self.settings) for i, it in enumerate(request.items)], options,
                    ctx, size_hint=(len(request.items), size))
            else:
                check_item_count(len(request.items), self.settings)
                items = [item_from_proto(it, i, self.settings) for i, it in enumerate(request.items)]
                results = await self.dispatcher.embed_chunks(items, options, chunking, ctx)
            errors = [(i, r) for i, r in enumerate(results) if isinstance(r, QvlError)]
            for _, err in errors:
                if err.fails_call(request.options.allow_partial):
                    raise err
        except QvlError as err:
            await self._fail(context, "grpc.Embed", err)
        finally:
            wire.release(held)
        # Before the answer: which model computed it (a stream sends it before its first result too).
        await context.send_initial_metadata(((FINGERPRINT_KEY, ctx.fingerprint),))
        response = pb.EmbedResponse(model=self.dispatcher.model_name("embed"))
        for r in results:
            if chunking is not None:
                response.chunks.append(pb.Chunks() if isinstance(r, QvlError) else chunks_to_proto(r))
            else:
                response.embeddings.append(pb.Embedding() if isinstance(r, QvlError) else embedding_to_proto(r))
        response.errors.extend(item_error(i, e) for i, e in errors)
        metrics.REQUESTS.labels("grpc.Embed", "OK").inc()
        metrics.LATENCY.labels("grpc.Embed").observe(time.perf_counter() - started)
        return response

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        started = time.perf_counter()
        wire, held = self.dispatcher.admission.wire, 0
        try:
            held = wire.hold_or_refuse(request.ByteSize())
            top_k = request.top_k if request.HasField("top_k") else None
            check_rerank_request(len(request.documents), top_k, self.settings)  # before any document is copied
            query = item_from_proto(request.query, 0, self.settings)
            docs = [item_from_proto(d, i, self.settings) for i, d in enumerate(request.documents)]
            instruction = request.instruction if request.HasField("instruction") else None
            ctx = self._context(context)
            result = await self.dispatcher.rerank(query, docs, instruction, top_k, ctx)
            for err in result.errors.values():
                if err.fails_call(request.allow_partial):
                    raise err
        except QvlError as err:
            await self._fail(context, "grpc.Rerank", err)
        finally:
            wire.release(held)
        await context.send_initial_metadata(((FINGERPRINT_KEY, ctx.fingerprint),))
        response = pb.RerankResponse(
            scores=[math.nan if s is None else s for s in result.scores],
            ranking=[pb.Ranked(index=i, score=result.scores[i] or 0.0) for i in result.ranking],
            errors=[item_error(i, e) for i, e in sorted(result.errors.items())],
            model=self.dispatcher.model_name("rerank"),
        )
        metrics.REQUESTS.labels("grpc.Rerank", "OK").inc()
        metrics.LATENCY.labels("grpc.Rerank").observe(time.perf_counter() - started)
        return response

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        return service_info(self.dispatcher, self.settings)

    async def EmbedStream(self, request_iterator: AsyncIterator[pb.EmbedStreamRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EmbedStreamResult]:
        session = EmbedStreamSession(self.dispatcher, self.settings, self._context(context))
        announced = False
        async for result in session.run(request_iterator):
            if not announced:
                # The first answered group fixed the stream's model (CallContext.fingerprint): later
                # items from another model are refused, never mixed into this stream.
                fingerprint = session.ctx.fingerprint or self.dispatcher.fingerprint("embed")
                if fingerprint:
                    await context.send_initial_metadata(((FINGERPRINT_KEY, fingerprint),))
                    session.ctx.fingerprint = fingerprint
                announced = True
            yield result

async def build_grpc_server(dispatcher: Dispatcher,
                            settings: Settings) -> tuple[grpc.aio.Server, health_aio.HealthServicer]:
    interceptors = [AuthInterceptor(settings.token)] if settings.token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", settings.max_request_bytes),
                 ("grpc.max_send_message_length", settings.max_request_bytes),
                 ("grpc.so_reuseport", 0),
                 # clients ping every 10 s to find dead connections; let them
                 ("grpc.keepalive_permit_without_calls", 1),
                 ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                 ("grpc.http2.max_ping_strikes", 0)],
    )
    pb_grpc.add_VectorizerServicer_to_server(VectorizerServicer(dispatcher, settings), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["Vectorizer"].full_name, "grpc.health.v1.Health", reflection.SERVICE_NAME),
        server)
    address = f"{settings.host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key:
        creds = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        server.add_secure_port(address, creds)
    else:
        server.add_insecure_port(address)
    return server, health
