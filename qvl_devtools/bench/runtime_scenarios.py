"""Runtime benchmarks: our pipeline vs the reference-style pipeline, same model, same inputs, one run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from connectors.progress import Progress
from qvl_devtools.bench import workloads
from qvl_devtools.bench.models import bench_checkpoint, bench_settings
from qvl_devtools.bench.reference_style import ReferenceStyle
from vectorizer_service.core.items import Item
from vectorizer_service.model.embedder import Embedder
from vectorizer_service.model.preprocessing import Encoded
from vectorizer_service.model.reranker import Reranker

# A rerank request carries 32 documents (what Weaviate sends at most per call).
DOCS_PER_QUERY = 32
# Default sizes (items) per scenario: small on CPU, GPU-sized elsewhere.
SIZES = {
    "embed-text": (256, 4096), "embed-image": (32, 1024), "embed-video": (8, 128),
    "rerank-text": (256, 2048), "rerank-image": (32, 512),
}


def _item(d: dict[str, Any]) -> Item:
    return Item(texts=list(d.get("texts", [])), images=list(d.get("images", [])),
                videos=list(d.get("videos", [])))


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _workload(scenario: str, n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Embedding items, or (query, documents) rows flattened as pairs for reranking."""
    if scenario == "embed-text":
        return [{"texts": [t]} for t in workloads.texts(n, 16, 256, seed)], None
    if scenario == "embed-image":
        return [{"images": [b]} for b in workloads.jpeg_images(n, seed=seed)], None
    if scenario == "embed-video":
        return [{"videos": [v]} for v in workloads.mp4_videos(n, frames=16, seed=seed)], None
    queries = [{"texts": [t]} for t in workloads.texts(max(1, n // DOCS_PER_QUERY), 8, 16, seed)]
    if scenario == "rerank-text":
        docs = [{"texts": [t]} for t in workloads.texts(n, 18, 22, seed + 1)]
    else:
        docs = [{"images": [b]} for b in workloads.jpeg_images(min(n, 64), seed=seed + 1)]
        docs = [docs[i % len(docs)] for i in range(n)]
    return queries, docs


def run_runtime_scenario(args: Any) -> dict[str, Any]:
    scenario = args.scenario
    settings = bench_settings(args)
    ckpt = bench_checkpoint(args.shape, settings, model=getattr(args, "model", None))
    device = ckpt.device
    cpu_size, gpu_size = SIZES[scenario]
    n = args.items or (gpu_size if device.type == "cuda" else cpu_size)
    reference = ReferenceStyle(ckpt, settings)
    progress = Progress(f"bench {scenario}", total=4, every=0)

    if scenario.startswith("embed"):
        items, _ = _workload(scenario, n, args.seed)
        embedder = Embedder(ckpt, settings)
        ours_items = [_item(d) for d in items]
        embedder.embed(ours_items[:4])
        reference.embed(items[:4])
        progress.advance()
        lengths = [e.length for e in embedder.prepare(ours_items) if isinstance(e, Encoded)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ours, t_ours = _timed(lambda: embedder.embed(ours_items), device)
        progress.advance()
        base, t_base = _timed(lambda: reference.embed(items), device)
        progress.advance()
        ours_mat = np.stack([r.values for r in ours])
        agreement = float((ours_mat * base.numpy()).sum(axis=1).min())
        units = len(items)
    else:
        queries, docs = _workload(scenario, n, args.seed)
        assert docs is not None
        reranker = Reranker(ckpt, settings)
        per_query = max(1, len(docs) // len(queries))
        groups = [(q, docs[i * per_query:(i + 1) * per_query]) for i, q in enumerate(queries)]
        reranker.rerank(_item(groups[0][0]), [_item(d) for d in groups[0][1][:4]])
        reference.rerank(groups[0][0], groups[0][1][:4])
        progress.advance()
        lengths = []
        for q, ds in groups:
            prepared = reranker.pairs(reranker.decode_query(_item(q)),
                                      reranker.decode_documents([_item(d) for d in ds]), None)
            lengths += [e.length for e in prepared if isinstance(e, Encoded)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ours, t_ours = _timed(lambda: [reranker.rerank(_item(q), [_item(d) for d in ds]).scores
                                       for q, ds in groups], device)
        progress.advance()
        base, t_base = _timed(lambda: [reference.rerank(q, ds) for q, ds in groups], device)
        progress.advance()
        flat = [(a, b) for o, r in zip(ours, base, strict=True) for a, b in zip(o, r, strict=True)]
        agreement = float(max(abs(a - b) for a, b in flat))
        units = sum(len(ds) for _, ds in groups)
    progress.finish()
    return {
        "items": units,
        "items_per_s": units / t_ours,
        "tokens_per_s": sum(lengths) / t_ours,
        "mean_tokens_per_item": sum(lengths) / max(1, len(lengths)),
        "baseline_items_per_s": units / t_base,
        "speedup": t_base / t_ours,
        "seconds": t_ours,
        "baseline_seconds": t_base,
        # min cosine (embedding) or max |score difference| (rerank) between our results and the baseline's
        "agreement_min_cos" if scenario.startswith("embed") else "agreement_max_abs_diff": agreement,
        "batch_tokens": settings.batch_tokens,
        "dtype": str(ckpt.dtype).replace("torch.", ""),
        "attention": ckpt.attention,
    }
