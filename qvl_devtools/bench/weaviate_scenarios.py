"""``qvl bench --scenario weaviate-ingest`` / ``weaviate-voyage-ingest``: objects/s through
Weaviate's batch API with qvl behind the module, against qvl's own ``EmbedStream`` on the same
items, in the same run.

Each object is a caption and a JPEG. ``weaviate-ingest`` uses the local multi2vec-clip (one
``/vectorize`` call per object); ``weaviate-voyage-ingest`` the per-collection multi2vec-voyageai
pointed at qvl by baseURL, with qvl behind a token (one ``/v1/multimodalembeddings`` call per
object, the key sent as the client's ``X-VoyageAI-Api-Key`` header). Both modules embed the two
fields apart (voyage sends each field value as its own input, and qvl's route makes each input
one item: two vectors, averaged by Weaviate), 2 x GOMAXPROCS calls at once, so the baseline
streams the same two items per object. ``ratio`` = Weaviate's objects/s over the stream's (target
>= 0.7): what Weaviate's path costs on top of the model. ``weaviate-ingest`` also reports the
joint-embedding path (``ingest``: one item per object).
"""

from __future__ import annotations

import base64
import statistics
import time
from typing import Any

from connectors.client import Client
from connectors.progress import Progress
from connectors.weaviate.collections import api_key_headers, create_collection
from connectors.weaviate.ingest import ingest
from qvl_devtools.bench import workloads
from qvl_devtools.bench.models import TINY_DIR
from qvl_devtools.launchers.service import ServiceProcess
from qvl_devtools.launchers.weaviate import API_MODULES, WeaviateServer, connect, module_env

WARMUP = 8
ROUNDS = 3
TOKEN = "bench-token"


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
                     module: str = "multi2vec-clip") -> tuple[float, int]:
    """Seconds to insert ``objects`` with the batch API (Weaviate calls qvl per object), and failures."""
    create_collection(client, name, module=module, text_fields=["caption"], image_fields=["image"],
                      service_url=service_url, rerank=False, replace=True)
    col = client.collections.get(name)
    rows = [{"caption": o["caption"], "image": base64.b64encode(o["image"]).decode("ascii")} for o in objects]
    start = time.perf_counter()
    with col.batch.fixed_size(batch_size=64, concurrent_requests=2) as batch:
        for row in rows:
            batch.add_object(properties=row)
    seconds = time.perf_counter() - start
    failed = len(col.batch.failed_objects)
    if failed:
        raise RuntimeError(f"{module}: {failed} objects failed in collection {name!r}: "
                           f"{col.batch.failed_objects[0].message}")
    return seconds, failed


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


def _alternate(client: Any, qvl: Client, warm: list[dict[str, Any]], measured: list[dict[str, Any]],
               service_url: str, module: str, prefix: str, progress: Progress) -> dict[str, Any]:
    """A warm-up, then ROUNDS alternating Weaviate inserts and streams of ``measured``: medians, so
    one slow moment on a shared machine moves one round only. Collections ``{prefix}0..``."""
    _weaviate_insert(client, "BenchWarm", warm, service_url, module)
    _stream(qvl, warm)
    progress.advance()
    t_weaviate: list[float] = []
    t_stream: list[float] = []
    for r in range(ROUNDS):
        t_weaviate.append(_weaviate_insert(client, f"{prefix}{r}", measured, service_url, module)[0])
        t_stream.append(_stream(qvl, measured))
        progress.advance()
    n = len(measured)
    weaviate_rate = n / statistics.median(t_weaviate)
    stream_rate = n / statistics.median(t_stream)
    return {
        "items": n,
        "objects": n,
        "items_per_object": 2,
        "image_size": "320x240 JPEG",
        "rounds": ROUNDS,
        "weaviate_objects_per_s": round(weaviate_rate, 2),
        "baseline_objects_per_s": round(stream_rate, 2),
        "ratio": weaviate_rate / stream_rate,
        "weaviate_objects_per_s_rounds": [round(n / t, 2) for t in t_weaviate],
        "baseline_objects_per_s_rounds": [round(n / t, 2) for t in t_stream],
        "objects_stored": len(client.collections.get(f"{prefix}0")),
    }


def run_weaviate_scenario(args: Any) -> dict[str, Any]:
    n = getattr(args, "items", None) or 128
    objects = _objects(n + WARMUP, getattr(args, "seed", 0))
    warm, measured = objects[:WARMUP], objects[WARMUP:]
    progress = Progress("bench weaviate-ingest", total=2 + ROUNDS, every=0)
    with _service(args) as svc:
        started = time.perf_counter()
        with WeaviateServer(env=module_env(svc.http_url)) as server, Client(svc.grpc_target) as qvl:
            weaviate_start_s = time.perf_counter() - started
            client = connect(server)
            try:
                result = _alternate(client, qvl, warm, measured, svc.http_url, "multi2vec-clip", "BenchModule",
                                    progress)
                create_collection(client, "BenchJoint", text_fields=["caption"], image_fields=["image"],
                                  service_url=svc.http_url, module_vector=False, joint_vector=True, rerank=False,
                                  replace=True)
                joint = ingest(client.collections.get("BenchJoint"), measured, qvl=qvl, batch_size=64)
                if joint["failed"]:
                    raise RuntimeError(f"weaviate-ingest: joint ingestion failed: {joint['failed'][0]}")
                progress.advance()
            finally:
                client.close()
    progress.finish()
    return {
        **result,
        "joint_ingest_objects_per_s": round(joint["objects_per_s"] or 0.0, 2),
        "weaviate_start_seconds": round(weaviate_start_s, 2),
        "weaviate_batch": "fixed_size(batch_size=64, concurrent_requests=2); Weaviate sends 2 x CPU module calls",
    }


def run_voyage_scenario(args: Any) -> dict[str, Any]:
    """``weaviate-voyage-ingest``: the same as ``weaviate-ingest`` through multi2vec-voyageai."""
    n = getattr(args, "items", None) or 128
    objects = _objects(n + WARMUP, getattr(args, "seed", 0))
    warm, measured = objects[:WARMUP], objects[WARMUP:]
    progress = Progress("bench weaviate-voyage-ingest", total=1 + ROUNDS, every=0)
    module = "multi2vec-voyageai"
    # No module variable names qvl: the collection's baseURL does, the client's header holds the token.
    with (_service(args, token=TOKEN) as svc, WeaviateServer(env=module_env(modules=API_MODULES)) as server,
          Client(svc.grpc_target, token=TOKEN) as qvl):
        client = connect(server, headers=api_key_headers(TOKEN))
        try:
            result = _alternate(client, qvl, warm, measured, svc.http_url, module, "BenchVoyage", progress)
        finally:
            client.close()
    progress.finish()
    return {
        **result,
        "module": module,
        "token": True,
        "weaviate_batch": "fixed_size(batch_size=64, concurrent_requests=2); Weaviate sends 2 x GOMAXPROCS "
                          "module calls, one object (two inputs) each",
    }
