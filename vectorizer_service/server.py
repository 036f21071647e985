"""`qvl serve`: gRPC and HTTP on one event loop, in front of the model process (``engine``).

This process never imports torch: it admits requests, prepares text, and answers; the model
process batches and computes. If the model process dies, in-flight calls fail with UNAVAILABLE
(clients retry), health turns NOT_SERVING, and it is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from grpc_health.v1 import health_pb2

from vectorizer_service.api.grpc_service import SERVICE_NAME, build_grpc_server
from vectorizer_service.api.http_app import build_http_app
from vectorizer_service.core.call_context import CallContext, EmbedOptions
from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.freed_memory import limit_malloc_arenas
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.serving.dispatcher import Dispatcher
from vectorizer_service.serving.model_link import ModelLink
from vectorizer_service.serving.model_process_link import ModelProcessFailed

log = logging.getLogger("qvl.server")
# Named, not imported: importing it here would load torch into the request process.
MODEL_PROCESS = "vectorizer_service.engine.model_process:run_model_process"
# How long a connection whose close has begun (idle, or its answer sent) may take to finish it:
# flushing, and over TLS the goodbye, which a client that is not reading never answers.
GOODBYE_S = 1.0
WARMUP_IMAGE = (  # a 32x32 grey PNG: warm-up touches the vision tower too
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00 \x00\x00\x00 \x08\x00\x00\x00\x00V\x11%(\x00\x00\x00"
    b"\x12IDATx\x9cc\xb8\x0f\x04\x8c\xa3`\x14\x0cs\x00\x00\xc1\x8c\x1f\xe1\x01\xd9\xc9\x8f\x00\x00\x00\x00IEND\xaeB`\x82"
)


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM starts our drain, not an immediate exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def close_by(self, serving: asyncio.Task[None], deadline: float) -> None:
        """Stop serving (``serving`` is the task of ``serve()``), and abort the connections that
        would keep it open: any still there at ``deadline`` (loop time), and one whose close has
        begun after GOODBYE_S. uvicorn closes an idle keep-alive connection at once, but over TLS
        asyncio then waits up to 30 s (its ssl_shutdown_timeout) for the peer's goodbye, which an
        idle client (a PL/Python backend between calls) never sends; that connection holds nothing."""
        loop = asyncio.get_running_loop()
        closing_since: dict[int, float] = {}
        self.should_exit = True
        while not serving.done():
            now = loop.time()
            late = now >= deadline
            for conn in list(self.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is None:
                    continue
                if transport.is_closing():
                    closing_since.setdefault(id(transport), now)
                if late or now - closing_since.get(id(transport), now) >= GOODBYE_S:
                    transport.abort()
            if late:
                self.force_exit = True  # uvicorn's own "stop waiting" (its second Ctrl+C)
            await asyncio.wait({serving}, timeout=0.05)
        await serving


async def warm_up(dispatcher: Dispatcher) -> None:
    """One embedding and one rerank through the whole path before reporting SERVING."""
    started = time.perf_counter()
    # A context per task: a context is answered by one model (CallContext.fingerprint).
    if "embed" in dispatcher.models:
        await dispatcher.embed([Item(texts=["warm-up"]), Item(images=[WARMUP_IMAGE])], EmbedOptions(),
                               CallContext.within(600))
    if "rerank" in dispatcher.models:
        await dispatcher.rerank(Item(texts=["warm-up"]), [Item(texts=["a"]), Item(images=[WARMUP_IMAGE])], None, None,
                                CallContext.within(600))
    log.info("warmed up", extra={"seconds": round(time.perf_counter() - started, 3)})


def log_serving(dispatcher: Dispatcher, settings: Settings, before: dict[str, str] | None = None) -> None:
    """The models served and their fingerprints; after a restart, a warning when they changed (the
    checkpoint was replaced on disk): vectors stored before come from another model."""
    now = {task: dispatcher.fingerprint(task) for task in ("embed", "rerank")}
    extra = {"embedding_model": settings.embedding_model, "embedding_fingerprint": now["embed"] or None,
             "reranker_model": settings.reranker_model, "reranker_fingerprint": now["rerank"] or None}
    if before is not None and before != now:
        log.warning("serving another model than before the restart: answers now carry the new fingerprints, "
                    "and requests pinned to the old ones are refused", extra={**extra, "before": before})
    else:
        log.info("serving", extra=extra)


class Service:
    """The listeners, their readiness, and the model process behind them."""

    def __init__(self, settings: Settings, log_level: str, log_format: str, link: ModelLink | None = None) -> None:
        self.settings = settings
        self.dispatcher = Dispatcher(settings, MODEL_PROCESS, log_level=log_level, log_format=log_format, link=link)
        self.app, self.http_service = build_http_app(self.dispatcher, settings)
        self.health: Any = None
        self.stopping = False

    async def set_serving(self, serving: bool) -> None:
        self.http_service.ready = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def bring_up(self) -> None:
        await self.dispatcher.start()
        if self.settings.warmup:
            await warm_up(self.dispatcher)
        await self.set_serving(True)

    async def supervise(self) -> None:
        """Start the model process again whenever it exits; while it keeps failing (to start, or
        soon after starting), wait longer between tries, up to a minute."""
        delay = 1.0
        up_since = time.monotonic()
        while True:
            await self.dispatcher.link.exited.wait()
            if self.stopping:
                return
            self.dispatcher.stop_accepting()
            before = {task: self.dispatcher.fingerprint(task) for task in ("embed", "rerank")}
            await self.set_serving(False)
            delay = 1.0 if time.monotonic() - up_since > 60 else min(delay * 2, 60.0)
            while not self.stopping:
                log.error("the model process exited; starting it again", extra={"retry_in_seconds": delay})
                await asyncio.sleep(delay)
                try:
                    await self.bring_up()
                    up_since = time.monotonic()
                    log_serving(self.dispatcher, self.settings, before)
                    break
                except (ModelProcessFailed, QvlError) as exc:  # failed to load, or died warming up
                    log.error("the model process failed to start", extra={"error": str(exc)})
                    delay = min(delay * 2, 60.0)


async def serve(settings: Settings, log_level: str = "INFO", log_format: str = "json", *,
                link: ModelLink | None = None, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT, or until ``stop`` is set where the caller gives one (then no
    signal handler is installed: tests run the service on a thread of their own process, with
    ``link`` standing in for the model process)."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    # Listeners come up first: /ready answers 503 and health NOT_SERVING while the models load.
    service = Service(settings, log_level, log_format, link)
    dispatcher = service.dispatcher
    tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)} if settings.tls_cert else {}
    http = HttpServer(uvicorn.Config(service.app, host=settings.host, port=settings.http_port, log_config=None,
                                     access_log=False, timeout_keep_alive=75, lifespan="off", **tls))
    http_task = asyncio.create_task(http.serve())
    grpc_server, service.health = await build_grpc_server(dispatcher, settings)
    await grpc_server.start()
    log.info("listening", extra={"grpc": f"{settings.host}:{settings.grpc_port}",
                                 "http": f"{settings.host}:{settings.http_port}"})

    starting = asyncio.create_task(service.bring_up())
    await asyncio.wait({starting, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        log.error("cannot serve: the models did not load", extra={"error": str(starting.exception())})
        await grpc_server.stop(grace=None)
        http.should_exit = True
        await http_task
        return 1
    supervisor = asyncio.create_task(service.supervise())
    if starting.done():
        log_serving(service.dispatcher, settings)

    await stop.wait()
    service.stopping = True
    log.info("draining", extra={"grace_seconds": settings.drain_seconds, "in_flight": dispatcher.admitted})
    await service.set_serving(False)
    notice_ends = loop.time() + settings.drain_notice_seconds
    drain_ends = loop.time() + settings.drain_seconds
    drained = await dispatcher.drain(settings.drain_seconds)
    # Closing the ports at once would cancel calls already on their way (gRPC cancels a call that
    # arrives as its server stops); health watches and balancers need a moment to turn away.
    await asyncio.sleep(max(0.0, notice_ends - loop.time()))
    await grpc_server.stop(grace=1.0)
    # Answers still being sent get what is left of the drain grace (at least a goodbye's time).
    await http.close_by(http_task, max(drain_ends, loop.time() + GOODBYE_S))
    supervisor.cancel()
    starting.cancel()
    await dispatcher.close()
    log.info("stopped", extra={"drained": drained})
    return 0 if drained else 1


def run(settings: Settings, log_level: str = "INFO", log_format: str = "json") -> int:
    limit_malloc_arenas()  # the whole process's allocator: set by the process's entry, not by serve()
    return asyncio.run(serve(settings, log_level, log_format))
