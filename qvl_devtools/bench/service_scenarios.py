"""Service benchmarks: a real `qvl serve` subprocess, measured against its baseline in the same run."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from connectors.client import AsyncClient, Client
from connectors.progress import Progress
from qvl_devtools.bench import workloads
from qvl_devtools.bench.models import TINY_DIR, bench_checkpoint, bench_settings
from qvl_devtools.launchers.service import ServiceProcess
from vectorizer_service.core.items import Item
from vectorizer_service.model.embedder import Embedder


def _service(args: Any) -> ServiceProcess:
    model = getattr(args, "model", None) or str(TINY_DIR)
    if not getattr(args, "model", None):
        from qvl_devtools.tiny_model import build_checkpoint
        build_checkpoint(TINY_DIR)
    env = {"QVL_DEVICE": args.device or "cpu", "QVL_LOG_LEVEL": "WARNING"}
    return ServiceProcess(embedding_model=model, reranker_model=model, env=env)


def _async_clients(target: str, texts: list[str], clients: int) -> tuple[float, float]:
    """Seconds for ``texts`` one by one from one client, and from ``clients`` concurrent clients
    (asyncio clients on one loop: on a small machine they take less CPU from the service)."""

    async def run() -> tuple[float, float]:
        pool = [AsyncClient(target) for _ in range(clients)]
        try:
            await pool[0].embed(texts[:8])
            start = time.perf_counter()
            for t in texts:
                await pool[0].embed([t])
            t_seq = time.perf_counter() - start

            async def one(i: int) -> None:
                for t in texts[i::clients]:
                    await pool[i].embed([t])

            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(clients)))
            return t_seq, time.perf_counter() - start
        finally:
            for client in pool:
                await client.close()

    return asyncio.run(run())


def _thread_clients(target: str, texts: list[str], clients: int) -> tuple[float, float]:
    """The same with blocking clients, one thread each."""
    pool = [Client(target) for _ in range(clients)]
    try:
        pool[0].embed(texts[:8])
        start = time.perf_counter()
        for t in texts:
            pool[0].embed([t])
        t_seq = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as threads:
            list(threads.map(lambda i: [pool[i].embed([t]) for t in texts[i::clients]], range(clients)))
        return t_seq, time.perf_counter() - start
    finally:
        for client in pool:
            client.close()


def grpc_concurrent(args: Any) -> dict[str, Any]:
    n = args.items or 1024
    texts = workloads.texts(n, 8, 48, args.seed)
    progress = Progress("bench grpc-concurrent", total=3, every=0)
    with _service(args) as svc:
        t_seq, t_conc = _async_clients(svc.grpc_target, texts, 32)
        progress.advance()
        th_seq, th_conc = _thread_clients(svc.grpc_target, texts, 32)
        progress.advance()
        rss_start = svc.rss()
        # Sustained overload: far more than the queue admits, for a while; memory must stay flat.
        rss_samples = []
        big = workloads.jpeg_images(4, seed=args.seed)
        clients = [Client(svc.grpc_target) for _ in range(32)]
        with ThreadPoolExecutor(64) as pool:
            for _round in range(3):
                list(pool.map(lambda i: _overload_call(clients[i % 32], big), range(256)))
                rss_samples.append(svc.rss())
        for cl in clients:
            cl.close()
        progress.finish()
    return {"items": n, "items_per_s": n / t_conc, "baseline_items_per_s": n / t_seq, "speedup": t_seq / t_conc,
            "clients": 32, "client": "AsyncClient x 32 on one event loop (baseline: one AsyncClient)",
            "threaded_clients": {"items_per_s": n / th_conc, "baseline_items_per_s": n / th_seq,
                                 "speedup": th_seq / th_conc},
            "memory": "RSS of the request process and the model process, summed",
            "service_rss_bytes": rss_start, "service_rss_overload_bytes": rss_samples,
            "rss_growth_during_overload_bytes": rss_samples[-1] - rss_samples[0],
            "peak_memory_bytes": max([rss_start, *rss_samples])}


def _overload_call(client: Client, images: list[bytes]) -> str:
    try:
        client.embed([{"image": b} for b in images] * 8, timeout=60)
        return "OK"
    except Exception as exc:  # RESOURCE_EXHAUSTED after the client's retries is the point
        return type(exc).__name__


def _stream_vs_local(embedder: Embedder, target: str, items: list[dict[str, Any]]) -> dict[str, float]:
    local_items = [Item(texts=[d["text"]], images=[d["image"]] if "image" in d else []) for d in items]
    embedder.embed(local_items[:8])
    start = time.perf_counter()
    local = embedder.embed(local_items)
    t_local = time.perf_counter() - start
    with Client(target) as c:
        list(c.embed_stream(items[:16]))
        start = time.perf_counter()
        streamed = list(c.embed_stream(items))
        t_stream = time.perf_counter() - start
    agreement = min(float(np.dot(a.values, b)) for a, b in zip(local, streamed, strict=True))  # type: ignore[union-attr, arg-type]
    return {"items_per_s": len(items) / t_stream, "baseline_items_per_s": len(items) / t_local,
            "ratio": t_local / t_stream, "agreement_min_cos": agreement}


def grpc_stream(args: Any) -> dict[str, Any]:
    """Bulk ingestion as the Postgres worker does it: rows of an image and its caption.

    Short texts alone are reported too: there the per-message cost of gRPC in Python, not the
    model, sets the pace.
    """
    n = args.items or 256
    captions = workloads.texts(n, 6, 24, args.seed)
    images = workloads.jpeg_images(32, 320, 240, seed=args.seed)
    rows = [{"text": captions[i], "image": images[i % len(images)]} for i in range(n)]
    texts = [{"text": t} for t in workloads.texts(4 * n, 8, 48, args.seed + 1)]
    settings = bench_settings(args)
    embedder = Embedder(bench_checkpoint(args.shape, settings, model=getattr(args, "model", None)), settings)
    with _service(args) as svc:
        main = _stream_vs_local(embedder, svc.grpc_target, rows)
        text_only = _stream_vs_local(embedder, svc.grpc_target, texts)
    return {"items": n, "workload": "image (320x240 JPEG) + caption per item", **main,
            "text_only": {"items": len(texts), **text_only}}


def _one_at_a_time_vs_concurrent(host: str, port: int, path: str, bodies: list[bytes],
                                  concurrency: int) -> dict[str, float]:
    """Keep-alive connections, one per worker, as Weaviate's Go client keeps them. The standard
    library's client: on a 2-core machine a heavier client (httpx takes ~1 ms a call) would
    take its CPU from the service under test."""
    local = threading.local()

    def post(body: bytes) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, port, timeout=120)
        local.conn.request("POST", path, body=body)  # no Content-Type, like Weaviate's modules
        response = local.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}")

    for body in bodies[:8]:
        post(body)
    start = time.perf_counter()
    for body in bodies:
        post(body)
    t_seq = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    t_conc = time.perf_counter() - start
    return {"items_per_s": len(bodies) / t_conc, "baseline_items_per_s": len(bodies) / t_seq,
            "speedup": t_seq / t_conc}


def http_weaviate(args: Any) -> dict[str, Any]:
    """Weaviate's multi2vec-clip way: one object per request (its caption and its picture; and
    caption-only objects apart), from 2 x CPU-count workers, no Content-Type; vs one at a time."""
    n = args.items or 256
    concurrency = 2 * (os.cpu_count() or 1)
    images = [base64.b64encode(b).decode() for b in workloads.jpeg_images(16, 320, 240, seed=args.seed)]
    captions = workloads.texts(n, 4, 12, args.seed)
    objects = [json.dumps({"texts": [captions[i]], "images": [images[i % len(images)]]}).encode() for i in range(n)]
    text_objects = [json.dumps({"texts": [c]}).encode() for c in workloads.texts(4 * n, 4, 12, args.seed + 1)]
    with _service(args) as svc:
        main = _one_at_a_time_vs_concurrent("127.0.0.1", svc.http_port, "/vectorize", objects, concurrency)
        text_only = _one_at_a_time_vs_concurrent("127.0.0.1", svc.http_port, "/vectorize", text_objects, concurrency)
    return {"items": n, "workload": "one object per request: a caption and a 320x240 JPEG",
            "concurrency": concurrency, **main, "text_only": {"items": len(text_objects), **text_only}}


def run_service_scenario(args: Any) -> dict[str, Any]:
    return {"grpc-concurrent": grpc_concurrent, "grpc-stream": grpc_stream,
            "http-weaviate": http_weaviate}[args.scenario](args)
