"""`qvl serve`: one process, one event loop, gRPC and HTTP in front of one dynamic batcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator

import torch
import uvicorn
from grpc_health.v1 import health_pb2

from .batcher import Batcher, CallContext, EmbedOptions
from .grpc_servicer import SERVICE_NAME, build_grpc_server
from .http_app import build_http_app
from .items import Item
from .memory import limit_malloc_arenas
from .model_loading import resolve_device
from .runtime import load_models
from .settings import Settings

log = logging.getLogger("qvl.server")
WARMUP_IMAGE = (  # a 32x32 grey PNG: warm-up touches the vision tower too
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00 \x00\x00\x00 \x08\x00\x00\x00\x00V\x11%(\x00\x00\x00"
    b"\x12IDATx\x9cc\xb8\x0f\x04\x8c\xa3`\x14\x0cs\x00\x00\xc1\x8c\x1f\xe1\x01\xd9\xc9\x8f\x00\x00\x00\x00IEND\xaeB`\x82"
)


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM starts our drain, not an immediate exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def warm_up(batcher: Batcher) -> None:
    """One embedding and one rerank through the whole path before reporting SERVING."""
    started = time.perf_counter()
    ctx = CallContext.within(600)
    if batcher.embedder is not None:
        await batcher.embed([Item(texts=["warm-up"]), Item(images=[WARMUP_IMAGE])], EmbedOptions(), ctx)
    if batcher.reranker is not None:
        await batcher.rerank(Item(texts=["warm-up"]), [Item(texts=["a"]), Item(images=[WARMUP_IMAGE])], None, None, ctx)
    log.info("warmed up", extra={"seconds": round(time.perf_counter() - started, 3)})


async def serve(settings: Settings) -> int:
    limit_malloc_arenas()
    # The model thread runs thousands of short torch calls, each giving the GIL away; with the
    # default 5 ms switch interval a busy event loop makes it wait 5 ms to get it back, each time.
    sys.setswitchinterval(settings.gil_switch_ms / 1000)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Listeners come up first: /ready answers 503 and health NOT_SERVING while the models load.
    batcher = Batcher(None, None, settings)
    app, http_service = build_http_app(batcher, settings)
    http = HttpServer(uvicorn.Config(app, host=settings.host, port=settings.http_port, log_config=None,
                                         access_log=False, timeout_keep_alive=75, lifespan="off"))
    http_task = asyncio.create_task(http.serve())
    grpc_server, health = await build_grpc_server(batcher, settings)
    await grpc_server.start()
    log.info("listening", extra={"grpc": f"{settings.host}:{settings.grpc_port}",
                                 "http": f"{settings.host}:{settings.http_port}"})

    if resolve_device(settings).type == "cpu":
        # The event loop, gRPC and the preprocessing pool need a core; OpenMP threads that
        # oversubscribe the machine spin and slow every batch down.
        torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
    models = await asyncio.to_thread(load_models, settings)
    batcher.embedder, batcher.reranker = models.embedder, models.reranker
    batcher.start()
    if settings.warmup:
        await warm_up(batcher)
    http_service.ready = True
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"embedding_model": settings.embedding_model, "reranker_model": settings.reranker_model})

    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.drain_seconds, "in_flight": batcher.admitted})
    http_service.ready = False
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    drained = await batcher.drain(settings.drain_seconds)
    await grpc_server.stop(grace=1.0)
    http.should_exit = True
    await http_task
    batcher.close()
    log.info("stopped", extra={"drained": drained})
    return 0 if drained else 1


def run(settings: Settings) -> int:
    return asyncio.run(serve(settings))
