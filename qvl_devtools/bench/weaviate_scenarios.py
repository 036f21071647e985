"""``qvl bench --scenario weaviate-ingest`` / ``weaviate-voyage-ingest``: objects/s through
Weaviate's batch API with qvl behind the module, against qvl's own ``EmbedStream`` on the same
items, in the same run.

Each object is a caption and a JPEG. ``weaviate-ingest`` uses the local multi2vec-clip (one
``/vectorize`` call per object); ``weaviate-voyage-ingest`` the per-collection multi2vec-voyageai
pointed at qvl by baseURL, with qvl behind a token (one ``/v1/multimodalembeddings`` call per
object, the key sent as the client's ``X-VoyageAI-Api-Key`` header). Both modules embed the two
fields apart (voyage sends each field value as its own input, and qvl's route makes each input
one item: two vectors, averaged by Weaviate), so the baseline streams the same two items per
object. ``ratio`` = Weaviate's objects/s over the stream's (target >= 0.7): what Weaviate's path
costs on top of the model.

Weaviate vectorizes 2 x GOMAXPROCS objects of a batch at once. Those calls wait on qvl, not on
Weaviate's CPUs, so each scenario runs twice, each time on a fresh Weaviate: with Weaviate's and
the client's defaults (GOMAXPROCS = the CPU count, 2 batches in flight), and tuned (GOMAXPROCS = 4
x the CPU count, 4 batches in flight: enough module calls in flight for qvl to batch, one batch
writing while the next is vectorized). The tuned figures are the result; ``weaviate_defaults``
holds the others. Each phase reports the cores (CPU seconds per second) that qvl's two processes,
Weaviate, the benchmark's client and the whole machine used: on a small machine Weaviate's own
work comes out of the model's cores. ``weaviate-ingest`` also reports the joint-embedding path
(``ingest``: one item per object).
"""

from __future__ import annotations

import base64
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.client import Client
from connectors.progress import Progress
from connectors.weaviate.collections import api_key_headers, create_collection, service_fingerprint
from connectors.weaviate.ingest import ingest
from qvl_devtools.bench import workloads
from qvl_devtools.bench.cpu_usage import CpuMeter
from qvl_devtools.bench.models import TINY_DIR
from qvl_devtools.launchers.service import ServiceProcess
from qvl_devtools.launchers.weaviate import API_MODULES, WeaviateServer, connect, module_env

WARMUP = 8
ROUNDS = 5
OBJECTS = 512  # enough that a round lasts seconds: a batch import's start and end weigh little
TOKEN = "bench-token"


@dataclass(frozen=True)
class Layout:
    """How Weaviate and its client are set for the import."""

    name: str
    gomaxprocs: int | None  # Weaviate's GOMAXPROCS; None: Go's default, the CPU count
    concurrent_requests: int  # the client's batches in flight

    def describe(self) -> str:
        procs = f"GOMAXPROCS={self.gomaxprocs}" if self.gomaxprocs else "GOMAXPROCS unset"
        return (f"Weaviate {procs}; fixed_size(batch_size=64, concurrent_requests={self.concurrent_requests})")


def layouts() -> tuple[Layout, Layout]:
    cpus = os.cpu_count() or 1
    return Layout("weaviate_defaults", None, 2), Layout("tuned", 4 * cpus, 4)


def _service(args: Any, token: str | None = None) -> ServiceProcess:
    model = getattr(args, "model", None)
    if not model:
        if getattr(args, "shape", "tiny") != "tiny":
            raise ValueError("weaviate-ingest runs a qvl serve subprocess: pass --model for shapes other than tiny")
        from qvl_devtools.tiny_model import build_checkpoint
        model = str(build_checkpoint(TINY_DIR))
    env = {"QVL_DEVICE": getattr(args, "device", None) or "cpu", "QVL_LOG_LEVEL": "WARNING"}
    if getattr(args, "batch_tokens", None):
        env["QVL_BATCH_TOKENS"] = str(args.batch_tokens)
    return ServiceProcess(embedding_model=model, reranker_model=None, env=env, token=token)  # started by ``with``


def _objects(n: int, seed: int) -> list[dict[str, Any]]:
    captions = workloads.texts(n, 6, 16, seed)
    images = workloads.jpeg_images(n, 320, 240, seed=seed)
    return [{"caption": c, "image": i} for c, i in zip(captions, images, strict=True)]


def _weaviate_insert(client: Any, name: str, objects: list[dict[str, Any]], service_url: str,
                     module: str, concurrent_requests: int, fingerprint: str) -> float:
    """Seconds to insert ``objects`` with the batch API (Weaviate calls qvl per object)."""
    create_collection(client, name, module=module, text_fields=["caption"], image_fields=["image"],
                      service_url=service_url, rerank=False, replace=True, fingerprint=fingerprint)
    col = client.collections.get(name)
    rows = [{"caption": o["caption"], "image": base64.b64encode(o["image"]).decode("ascii")} for o in objects]
    start = time.perf_counter()
    with col.batch.fixed_size(batch_size=64, concurrent_requests=concurrent_requests) as batch:
        for row in rows:
            batch.add_object(properties=row)
    seconds = time.perf_counter() - start
    failed = col.batch.failed_objects
    if failed:
        raise RuntimeError(f"{module}: {len(failed)} objects failed in collection {name!r}: {failed[0].message}")
    return seconds


def _stream(qvl: Client, objects: list[dict[str, Any]]) -> float:
    items: list[Any] = []
    for o in objects:
        items += [o["caption"], {"image": o["image"]}]
    start = time.perf_counter()
    results = list(qvl.embed_stream(items))
    seconds = time.perf_counter() - start
    if len(results) != len(items) or any(not hasattr(r, "shape") for r in results):
        raise RuntimeError("weaviate-ingest: the EmbedStream baseline lost or failed items")
    return seconds


def _mean_cores(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.fmean(s[k] for s in samples), 2) for k in samples[0]}


def _alternate(client: Any, qvl: Client, meter: CpuMeter, warm: list[dict[str, Any]],
               measured: list[dict[str, Any]], service_url: str, module: str, layout: Layout,
               progress: Progress) -> dict[str, Any]:
    """A warm-up, then ROUNDS alternating Weaviate inserts and streams of ``measured``: medians, so
    one slow moment on a shared machine moves one round only. Collections ``Bench{layout}{r}``."""
    prefix = "Bench" + layout.name.title().replace("_", "")
    pin = service_fingerprint(qvl)
    _weaviate_insert(client, f"{prefix}Warm", warm, service_url, module, layout.concurrent_requests, pin)
    _stream(qvl, warm)
    t_weaviate: list[float] = []
    t_stream: list[float] = []
    cores_weaviate: list[dict[str, float]] = []
    cores_stream: list[dict[str, float]] = []
    for r in range(ROUNDS):
        meter.start()
        t_weaviate.append(_weaviate_insert(client, f"{prefix}{r}", measured, service_url, module,
                                           layout.concurrent_requests, pin))
        cores_weaviate.append(meter.stop())
        meter.start()
        t_stream.append(_stream(qvl, measured))
        cores_stream.append(meter.stop())
        progress.advance()
    n = len(measured)
    weaviate_rate = n / statistics.median(t_weaviate)
    stream_rate = n / statistics.median(t_stream)
    return {
        "layout": layout.describe(),
        "weaviate_objects_per_s": round(weaviate_rate, 2),
        "baseline_objects_per_s": round(stream_rate, 2),
        "ratio": weaviate_rate / stream_rate,
        "weaviate_objects_per_s_rounds": [round(n / t, 2) for t in t_weaviate],
        "baseline_objects_per_s_rounds": [round(n / t, 2) for t in t_stream],
        "cores_during_weaviate": _mean_cores(cores_weaviate),
        "cores_during_baseline": _mean_cores(cores_stream),
        "objects_stored": len(client.collections.get(f"{prefix}0")),
    }


def _run(args: Any, scenario: str, module: str, weaviate_env: Callable[[ServiceProcess], dict[str, str]],
         token: str | None,
         tuned_extra: Callable[[Any, ServiceProcess, Client, list[dict[str, Any]]], dict[str, Any]] | None = None,
         ) -> dict[str, Any]:
    n = getattr(args, "items", None) or OBJECTS
    objects = _objects(n + WARMUP, getattr(args, "seed", 0))
    warm, measured = objects[:WARMUP], objects[WARMUP:]
    steps = 2 * ROUNDS + (1 if tuned_extra else 0)
    progress = Progress(f"bench {scenario}", total=steps, every=0)
    results: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    with _service(args, token=token) as svc, Client(svc.grpc_target, token=token) as qvl:
        for layout in layouts():
            env = weaviate_env(svc)
            if layout.gomaxprocs:
                env["GOMAXPROCS"] = str(layout.gomaxprocs)
            with WeaviateServer(env=env) as server:
                client = connect(server, headers=api_key_headers(token) if token else None)
                try:
                    pids = svc.pids()
                    meter = CpuMeter({"qvl_request_process": pids[:1], "qvl_model_process": pids[1:],
                                      "weaviate": [server.pid or 0], "bench_client": [os.getpid()]})
                    results[layout.name] = _alternate(client, qvl, meter, warm, measured, svc.http_url, module,
                                                      layout, progress)
                    if tuned_extra and layout.name == "tuned":
                        extra = tuned_extra(client, svc, qvl, measured)
                        progress.advance()
                finally:
                    client.close()
    progress.finish()
    tuned = results["tuned"]
    return {**tuned, **extra, "objects": n, "items_per_object": 2, "image_size": "320x240 JPEG", "rounds": ROUNDS,
            "weaviate_defaults": results["weaviate_defaults"]}


def _joint(client: Any, svc: ServiceProcess, qvl: Client, measured: list[dict[str, Any]]) -> dict[str, Any]:
    create_collection(client, "BenchJoint", text_fields=["caption"], image_fields=["image"],
                      service_url=svc.http_url, module_vector=False, joint_vector=True, rerank=False, replace=True,
                      fingerprint=service_fingerprint(qvl))
    joint = ingest(client.collections.get("BenchJoint"), measured, qvl=qvl, batch_size=64)
    if joint["failed"]:
        raise RuntimeError(f"weaviate-ingest: joint ingestion failed: {joint['failed'][0]}")
    return {"joint_ingest_objects_per_s": round(joint["objects_per_s"] or 0.0, 2)}


def run_weaviate_scenario(args: Any) -> dict[str, Any]:
    """``weaviate-ingest``: the local multi2vec-clip, its URL from Weaviate's environment."""
    return _run(args, "weaviate-ingest", "multi2vec-clip", lambda svc: module_env(svc.http_url), None, _joint)


def run_voyage_scenario(args: Any) -> dict[str, Any]:
    """``weaviate-voyage-ingest``: multi2vec-voyageai by baseURL, qvl behind a token. No Weaviate
    variable names qvl: the collection's baseURL does, the client's header holds the token."""
    result = _run(args, "weaviate-voyage-ingest", "multi2vec-voyageai", lambda _: module_env(modules=API_MODULES),
                  TOKEN)
    return {**result, "module": "multi2vec-voyageai", "token": True}
