"""``qvl bench --scenario failover``: one ``EmbedStream`` over two replicas (gRPC ``round_robin``
with health checking, ``connectors.client``); the replica serving it (round_robin puts one
stream on one replica) is SIGKILLed 2 s into it.

Reported: items lost (must be 0), duplicates or misplaced results (must be 0; every result is
checked against the survivor's embedding of its own item), the longest gap between two results,
the streams the client sent again, and items/s with the kill against the same stream over the
same two replicas without one (measured first, in the same run).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from connectors.client import Client, ItemFailure
from connectors.progress import Progress
from qvl_devtools.bench import workloads
from qvl_devtools.bench.models import TINY_DIR
from qvl_devtools.launchers.service import ServiceProcess

KILL_AFTER_S = 2.0


def _replica(args: Any) -> ServiceProcess:
    model = getattr(args, "model", None)
    if not model:
        if getattr(args, "shape", "tiny") != "tiny":
            raise ValueError("failover runs qvl serve subprocesses: pass --model for shapes other than tiny")
        from qvl_devtools.tiny_model import build_checkpoint
        model = str(build_checkpoint(TINY_DIR))
    env = {"QVL_DEVICE": getattr(args, "device", None) or "cpu", "QVL_LOG_LEVEL": "WARNING"}
    return ServiceProcess(embedding_model=model, reranker_model=None, env=env)


def _items_done(replica: ServiceProcess) -> float:
    """Items the replica has embedded so far (its ``qvl_items_total{task="embed"}``)."""
    with urllib.request.urlopen(f"{replica.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r'^qvl_items_total\{task="embed"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _kill_busiest(replicas: Sequence[ServiceProcess], before: Sequence[float], killed: list[ServiceProcess]) -> None:
    """SIGKILL the replica serving the stream (round_robin put it on one): the one whose item
    count grew since the stream began."""
    grown = [_items_done(r) - b for r, b in zip(replicas, before, strict=True)]
    victim = replicas[grown.index(max(grown))]
    victim.stop(sig=9)
    killed.append(victim)


def _stream(target: str, items: list[Any], replicas: Sequence[ServiceProcess], kill: bool) -> dict[str, Any]:
    """Stream ``items``; with ``kill``, SIGKILL the replica serving it KILL_AFTER_S after the first result."""
    results: list[np.ndarray | ItemFailure] = []
    arrivals: list[float] = []
    killer: threading.Timer | None = None
    killed: list[ServiceProcess] = []
    before = [_items_done(r) for r in replicas]
    with Client(target) as client:
        client.wait_ready()
        start = time.perf_counter()
        for result in client.embed_stream(iter(items)):
            now = time.perf_counter()
            if kill and killer is None:
                killer = threading.Timer(KILL_AFTER_S, _kill_busiest, args=(replicas, before, killed))
                killer.start()
            results.append(result)
            arrivals.append(now)
        seconds = time.perf_counter() - start
        retried = client.retried
    if killer is not None:
        killer.join()
    gaps = np.diff([start, *arrivals]) if arrivals else np.array([0.0])
    return {"results": results, "seconds": seconds, "longest_gap_s": float(gaps.max()), "retried": retried,
            "killed": killed}


def run_failover_scenario(args: Any) -> dict[str, Any]:
    n = getattr(args, "items", None) or 3000
    seed = getattr(args, "seed", 0)
    # Texts of varied length and a few images: enough work for the stream to outlast the kill.
    items: list[Any] = list(workloads.texts(n - n // 10, 8, 48, seed))
    items += [{"image": img} for img in workloads.jpeg_images(n // 10, 96, 72, seed=seed)]
    progress = Progress("bench failover", total=3, every=0)
    with _replica(args) as a, _replica(args) as b:
        target = f"ipv4:{a.grpc_target},{b.grpc_target}"
        calm = _stream(target, items, [a, b], kill=False)
        progress.advance()
        failover = _stream(target, items, [a, b], kill=True)
        progress.advance()
        if not failover["killed"]:
            raise RuntimeError("failover: the stream ended before a replica was killed; pass more --items")
        survivor_replica = b if failover["killed"][0] is a else a
        with Client(survivor_replica.grpc_target) as survivor:
            reference = [survivor.embed(items[i:i + 256]) for i in range(0, len(items), 256)]
        progress.advance()
    progress.finish()
    want = np.concatenate([np.asarray(r, dtype=np.float64) for r in reference])
    got = failover["results"]
    failed = sum(isinstance(r, ItemFailure) for r in got)
    vectors = [(i, np.asarray(r, dtype=np.float64)) for i, r in enumerate(got) if not isinstance(r, ItemFailure)]
    # A result that is not its own item's vector (a duplicate handed on twice, a shifted one) is counted.
    misplaced = sum(1 for i, v in vectors if float(v @ want[i] / (np.linalg.norm(v) * np.linalg.norm(want[i])))
                    < 0.9999)
    extra = max(0, len(got) - len(items))
    return {
        "items": len(items),
        "replicas": 2,
        "kill_after_s": KILL_AFTER_S,
        "items_lost": len(items) - len(got) + failed,
        "items_failed": failed,
        "duplicates_or_misplaced": misplaced + extra,
        "longest_gap_s": round(failover["longest_gap_s"], 3),
        "longest_gap_s_without_kill": round(calm["longest_gap_s"], 3),
        "streams_sent_again": failover["retried"],
        "items_per_s": round(len(items) / failover["seconds"], 2),
        "items_per_s_without_kill": round(len(items) / calm["seconds"], 2),
        "ratio": (len(items) / failover["seconds"]) / (len(items) / calm["seconds"]),
        "stream_seconds": round(failover["seconds"], 2),
    }
