"""The Weaviate half of ``qvl demo``: a temporary Weaviate wired to a running qvl service.

``run_weaviate_demo(http_url, grpc_target)`` starts Weaviate with the per-collection API modules
enabled (no variable names qvl), stores sample pictures with captions in a collection whose
multi2vec-voyageai and reranker-cohere reach qvl by baseURL (the ``fields`` vector; ``ingest`` adds
qvl's joint vector), prints nearText (with the proof that its query was embedded with the query
instruction), nearImage and joint searches with rerank scores, stops Weaviate and returns the
printed rows.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import MetadataQuery, Rerank

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, api_key_headers, create_collection, module_base_url
from connectors.weaviate.ingest import ingest
from connectors.weaviate.search import search
from qvl_devtools.demo_media import sample_media
from qvl_devtools.launchers.weaviate import WeaviateServer, connect, module_env

COLLECTION = "QvlDemoMedia"
TEXT_QUERIES = ("circles", "a panoramic view")


def sample_pictures() -> list[dict[str, Any]]:
    """The sample pictures with captions: ``[{"name", "caption", "image": bytes}]``."""
    return [{k: m[k] for k in ("name", "caption", "image")} for m in sample_media(videos=False)]


def _row(kind: str, query: str, rank: int, props: dict[str, Any], distance: float | None,
         score: float | None) -> dict[str, Any]:
    return {"source": "weaviate", "kind": kind, "query": query, "rank": rank, "name": props.get("name"),
            "caption": props.get("caption"), "distance": distance, "rerank_score": score}


def _print(rows: Sequence[dict[str, Any]], title: str, out: Callable[[str], None]) -> None:
    out(title)
    for r in rows:
        score = "-" if r["rerank_score"] is None else f"{r['rerank_score']:.4f}"
        distance = "-" if r["distance"] is None else f"{r['distance']:.4f}"
        out(f"  {r['rank']}. {r['name']:<22} {r['caption']!r:<30} distance {distance}  rerank {score}")


def _cos(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _instructions(qvl: Client) -> tuple[str, str]:
    """The service's document and query instructions (gRPC Info)."""
    [model] = [m for m in qvl.info().models if m.task == "embed"]
    return model.default_instruction, model.query_instruction


def run_weaviate_demo(http_url: str, grpc_target: str, *, pictures: Sequence[dict[str, Any]] | None = None,
                      k: int = 3, token: str | None = None, out: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the Weaviate demo against the service at ``http_url`` (HTTP) / ``grpc_target`` (gRPC).

    ``pictures``: ``[{"name", "caption", "image": bytes}]`` (default: the sample media). ``token``:
    the service's token, sent by the Weaviate client as the API modules' key. Returns the printed
    rows: ``{"source", "kind", "query", "rank", "name", "caption", "distance", "rerank_score"}``.
    """
    pictures = list(pictures) if pictures is not None else sample_pictures()
    rows: list[dict[str, Any]] = []
    # Weaviate's API modules refuse to call without some key; a service without a token takes any.
    headers = api_key_headers(token or "qvl-without-a-token")
    with WeaviateServer(env=module_env(http_url)) as server, Client(grpc_target, token=token) as qvl:
        client = connect(server, headers=headers)
        try:
            create_collection(client, COLLECTION, text_fields=["caption"], image_fields=["image"],
                              service_url=http_url, joint_vector=True, replace=True, token=token,
                              properties=[Property(name="name", data_type=DataType.TEXT)])
            col = client.collections.get(COLLECTION)
            report = ingest(col, pictures, qvl=qvl)  # Weaviate's module vector + qvl's joint vector
            if report["failed"]:
                raise RuntimeError(f"demo: storing pictures in {COLLECTION} failed: {report['failed'][0]['error']}")
            out(f"Weaviate {server.url}: {report['inserted']} pictures in {COLLECTION} (multi2vec-voyageai and "
                f"reranker-cohere, baseURL {module_base_url(http_url, 'multi2vec-voyageai')})")
            document, query = _instructions(qvl)

            for text in TEXT_QUERIES:
                found = col.query.near_text(query=text, limit=k, target_vector=MODULE_VECTOR,
                                            rerank=Rerank(prop="caption", query=text), include_vector=True,
                                            return_metadata=MetadataQuery(distance=True))
                part = [_row("nearText", text, i + 1, o.properties, o.metadata.distance, o.metadata.rerank_score)
                        for i, o in enumerate(found.objects)]
                _print(part, f'GraphQL nearText "{text}", rerank(property: "caption")', out)
                rows += part
                # The proof: Weaviate's distance to the best hit is 1 - cos(qvl's QUERY embedding of the
                # text, the stored vector), not what the document instruction would give.
                top = found.objects[0]
                [as_query], [as_document] = (qvl.embed([text], instruction=i) for i in (query, document))
                stored = top.vector[MODULE_VECTOR]
                out(f"    distance {top.metadata.distance:.6f} = 1 - cos(qvl query embedding, stored vector) "
                    f"{1 - _cos(as_query, stored):.6f}; with the document instruction it would be "
                    f"{1 - _cos(as_document, stored):.6f}: the query instruction {query!r} was used")

            probe = pictures[0]
            found = col.query.near_image(near_image=base64.b64encode(probe["image"]).decode("ascii"), limit=k,
                                         target_vector=MODULE_VECTOR,
                                         rerank=Rerank(prop="image", query=TEXT_QUERIES[0]),
                                         return_properties=["name", "caption"],
                                         return_metadata=MetadataQuery(distance=True))
            part = [_row("nearImage", probe["name"], i + 1, o.properties, o.metadata.distance, o.metadata.rerank_score)
                    for i, o in enumerate(found.objects)]
            _print(part, f'GraphQL nearImage {probe["name"]}, rerank(property: "image", query: "{TEXT_QUERIES[0]}") '
                   "(the blob scored as an image)", out)
            rows += part

            text = TEXT_QUERIES[0]
            found_rows = search(col, text, qvl=qvl, k=k)
            part = [_row("joint", text, i + 1, r["properties"], r["distance"], r["score"])
                    for i, r in enumerate(found_rows)]
            _print(part, f'Joint embeddings (caption + image as one item) "{text}", reranked by qvl on both', out)
            rows += part
        finally:
            client.close()
    return rows
