"""`qvl demo`: every part working together on this machine, with the tiny random-weight model.

1. the runtime: sample pictures, a video and texts embedded in one space; a similarity table
   and a rerank list;
2. the service (`qvl serve`) as a subprocess;
3. Postgres: a table of the sample media auto-embedded by triggers, queue and worker; two-stage
   `qvl.search` and `qvl.rerank` in SQL;
4. Weaviate: the same media through Weaviate's own modules wired to qvl; nearText/nearImage
   with rerank in GraphQL; a PDF's pages and a video's windows as objects, hits with their locators;
and the SQL and GraphQL results side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from connectors.progress import Progress
from qvl_devtools.demo_media import sample_media
from qvl_devtools.launchers.service import ServiceProcess
from qvl_devtools.tiny_model import build_checkpoint
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector
from vectorizer_service.model.served_models import load_models

TEXTS = ["concentric circles", "a striped pattern", "a short animated clip", "quarterly revenue report"]
BANNER = """\
qvl demo
========
The model here is a TINY Qwen3-VL checkpoint with RANDOM weights, built on this machine: every
number below comes from the real Qwen3-VL code path (vision tower, M-RoPE, last-token pooling,
yes/no reranking head) but carries no meaning. On a machine with a model hub, run
    qvl demo --embedding-model Qwen/Qwen3-VL-Embedding-2B --reranker-model Qwen/Qwen3-VL-Reranker-2B
(or serve them: qvl serve --embedding-model Qwen/Qwen3-VL-Embedding-2B --reranker-model Qwen/Qwen3-VL-Reranker-2B).
"""


def section(title: str, out: Callable[[str], None] = print) -> None:
    out("")
    out(title)
    out("-" * len(title))


def sample_items() -> list[tuple[str, Item]]:
    """The sample media (pictures, a frame-list video) and some texts, as items."""
    samples = [(m["name"], Item(images=[m["image"]]) if m["image"] else Item(videos=[m["frames"]]))
               for m in sample_media()]
    return samples + [(f'"{t}"', Item(texts=[t])) for t in TEXTS]


def runtime_part(embedding_model: str, reranker_model: str, out: Callable[[str], None] = print) -> None:
    settings = Settings(embedding_model=embedding_model, reranker_model=reranker_model)
    models = load_models(settings)
    assert models.embedder is not None and models.reranker is not None
    samples = sample_items()
    section("1. One embedding space: cosine similarity of pictures, a video and texts", out)
    started = time.perf_counter()
    vectors = models.embedder.embed([item for _, item in samples])
    seconds = time.perf_counter() - started
    mat = np.stack([v.values for v in vectors if isinstance(v, EncodedVector)])
    names = [n[:18] for n, _ in samples]
    out(" " * 20 + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, mat @ mat.T, strict=True):
        out(f"{name:<20}" + "".join(f"{x:9.3f}" for x in row))
    out(f"({len(samples)} items embedded in {seconds:.2f} s, {mat.shape[1]} dimensions)")

    section('2. Rerank: "concentric circles" against every sample', out)
    query = Item(texts=["concentric circles"])
    result = models.reranker.rerank(query, [item for _, item in samples])
    for rank, i in enumerate(result.ranking, 1):
        out(f"  {rank:2}. {samples[i][0]:<24} {result.scores[i]:.4f}")


def run_demo(args: argparse.Namespace) -> int:
    out = print
    workdir = Path(args.workdir)
    embedding_model = args.embedding_model or args.model
    reranker_model = args.reranker_model or args.model
    if not embedding_model or not reranker_model:
        tiny = str(build_checkpoint(workdir / "tiny-qwen3-vl"))
        embedding_model = embedding_model or tiny
        reranker_model = reranker_model or tiny
    out(BANNER)
    runtime_part(embedding_model, reranker_model, out)
    if args.runtime_only:
        return 0

    section("3. The service: qvl serve (gRPC + HTTP) as a subprocess", out)
    progress = Progress("demo: starting qvl serve", every=0)
    with ServiceProcess(embedding_model=embedding_model, reranker_model=reranker_model,
                        env={"QVL_LOG_LEVEL": "WARNING"}) as svc:
        progress.finish()
        out(f"  gRPC {svc.grpc_target}   HTTP {svc.http_url}   (Weaviate modules and the SQL functions call HTTP)")
        pg_rows = _postgres_part(svc, out)
        wv_rows = _weaviate_part(svc, out)
        _side_by_side(pg_rows, wv_rows, out)
    out("")
    out("Done: Postgres, Weaviate, the service and the worker were started and stopped by this demo.")
    return 0


def _postgres_part(svc: ServiceProcess, out: Callable[[str], None]) -> list[dict[str, Any]]:
    from qvl_devtools.demo.postgres_demo import run_postgres_demo

    section("4. Postgres: INSERT auto-embeds media columns; qvl.search and qvl.rerank in SQL", out)
    return run_postgres_demo(svc.http_url, svc.grpc_target, out=out)


def _weaviate_part(svc: ServiceProcess, out: Callable[[str], None]) -> list[dict[str, Any]]:
    from qvl_devtools.demo.weaviate_demo import run_weaviate_demo

    section("5. Weaviate: its own modules call qvl; nearText / nearImage with rerank; PDF pages and video clips", out)
    return run_weaviate_demo(svc.http_url, svc.grpc_target, out=out)


def _side_by_side(pg: list[dict[str, Any]], wv: list[dict[str, Any]], out: Callable[[str], None]) -> None:
    section("6. The same text queries, SQL (qvl.search) and GraphQL (nearText + rerank), side by side", out)
    pg_rows = [r for r in pg if r.get("kind") == "search"]
    wv_rows = [r for r in wv if r.get("kind") == "nearText"]
    for query in dict.fromkeys(r["query"] for r in pg_rows):
        left = [r for r in pg_rows if r["query"] == query]
        right = [r for r in wv_rows if r["query"] == query]
        out(f"  {'Postgres: ' + repr(query):<44} {'Weaviate: ' + repr(query)}")
        for i in range(max(len(left), len(right))):
            cell_l = _cell(left[i]) if i < len(left) else ""
            cell_r = _cell(right[i]) if i < len(right) else ""
            out(f"  {cell_l:<44} {cell_r}")


def _cell(row: dict[str, Any]) -> str:
    score = row.get("rerank_score")
    return f"{row.get('rank', '?')}. {str(row.get('name'))[:22]:<22} " + ("" if score is None else f"{score:.4f}")


if __name__ == "__main__":
    sys.exit(run_demo(argparse.Namespace(workdir=".cache/demo", model=None, embedding_model=None,
                                         reranker_model=None, runtime_only=True)))
