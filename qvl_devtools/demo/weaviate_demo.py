"""The Weaviate half of ``qvl demo``: a temporary Weaviate wired to a running qvl service.

``run_weaviate_demo(http_url, grpc_target)`` starts Weaviate with the per-collection API modules
enabled (no variable names qvl), stores sample pictures with captions in a collection whose
multi2vec-voyageai and reranker-cohere reach qvl by baseURL (the ``fields`` vector; ``ingest`` adds
qvl's joint vector), prints nearText (with the proof that its query was embedded with the query
instruction), nearImage and joint searches with rerank scores, stops Weaviate and returns the
printed rows. Then issue 21: a three-page PDF and a 12-second video stored as parts (one object per
page, per 4-second window: ``ingest(..., chunking=...)``), found by nearImage and nearVideo with
their locators (page; start_s-end_s) and reranked by qvl over the parts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from weaviate.classes.config import DataType, Property
from weaviate.classes.query import MetadataQuery, NearMediaType, Rerank

from connectors.client import Client
from connectors.weaviate.collections import MODULE_VECTOR, api_key_headers, create_collection, module_base_url
from connectors.weaviate.ingest import ingest
from connectors.weaviate.search import search
from qvl_devtools.demo_media import sample_long_video, sample_media, sample_pdf, scene_video
from qvl_devtools.launchers.weaviate import WeaviateServer, connect, module_env

COLLECTION = "QvlDemoMedia"
PAGES, CLIPS = "QvlDemoPages", "QvlDemoClips"  # issue 21: a PDF's pages, a video's windows
WINDOW_S = 4
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
            rows += _parts_demo(client, qvl, http_url, token, k, out)
        finally:
            client.close()
    return rows


def _part_row(kind: str, query: str, rank: int, props: dict[str, Any], distance: float | None,
              score: float) -> dict[str, Any]:
    locator = ({"page": props["page"]} if kind == "page"
               else {"start_s": props["start_s"], "end_s": props["end_s"]})
    return {"source": "weaviate", "kind": kind, "query": query, "rank": rank, "name": props["source_key"],
            "caption": props.get("title"), "distance": distance, "rerank_score": score, "locator": locator}


def _print_parts(rows: Sequence[dict[str, Any]], title: str, out: Callable[[str], None]) -> None:
    out(title)
    for r in rows:
        where = (f"page {r['locator']['page']}" if r["kind"] == "page"
                 else f"{r['locator']['start_s']:.1f}-{r['locator']['end_s']:.1f} s")
        out(f"  {r['rank']}. {r['name']:<16} {where:<12} distance {r['distance']:.4f}  rerank {r['rerank_score']:.4f}")


def _parts_demo(client: Any, qvl: Client, http_url: str, token: str | None, k: int,
                out: Callable[[str], None]) -> list[dict[str, Any]]:
    """A PDF's pages and a video's windows as objects (issue 21), each hit with its locator and qvl's
    rerank score of that part (Weaviate's rerank reads a property; the parts hold no copy of the media)."""
    pdf, video = sample_pdf(), sample_long_video(WINDOW_S)
    create_collection(client, PAGES, text_fields=["title"], document_fields=["pdf"], chunking="pages",
                      service_url=http_url, replace=True, token=token)
    create_collection(client, CLIPS, video_fields=["video"], chunking="video", service_url=http_url,
                      replace=True, token=token)
    pages, clips = client.collections.get(PAGES), client.collections.get(CLIPS)
    reports = [ingest(pages, [{"name": "manual.pdf", "title": "Demo manual", "pdf": pdf}], qvl=qvl, key="name",
                      chunking={"type": "pages"}),
               ingest(clips, [{"name": "talk.mp4", "video": video}], qvl=qvl, key="name",
                      chunking={"type": "video", "seconds": WINDOW_S, "overlap": 0})]
    for report in reports:
        if report["failed"]:
            raise RuntimeError(f"demo: storing parts failed: {report['failed'][0]['error']}")
    out(f"Parts (issue 21): {reports[0]['parts']} pages of manual.pdf in {PAGES}, {reports[1]['parts']} windows "
        f"of {WINDOW_S} s of talk.mp4 in {CLIPS}: one object each, with its locator")
    rows: list[dict[str, Any]] = []
    meta = MetadataQuery(distance=True)
    probe = sample_pictures()[1]  # the stripes: page 2 of the PDF
    found = pages.query.near_image(base64.b64encode(probe["image"]).decode("ascii"), limit=k,
                                   target_vector=MODULE_VECTOR, return_metadata=meta)
    scores = qvl.rerank({"image": probe["image"]},
                        [{"document": pdf, "page": o.properties["page"]} for o in found.objects]).scores
    part = [_part_row("page", probe["name"], i + 1, o.properties, o.metadata.distance, float(score))
            for i, (o, score) in enumerate(zip(found.objects, scores, strict=True))]
    _print_parts(part, f"GraphQL nearImage {probe['name']} over the PDF's pages (qvl's rerank score of each page)",
                 out)
    rows += part
    scene = scene_video(2, WINDOW_S)  # the grid scene alone: seconds 8-12 of the video
    found = clips.query.near_media(base64.b64encode(scene).decode("ascii"), media_type=NearMediaType.VIDEO,
                                   limit=k, target_vector=MODULE_VECTOR, return_metadata=meta)
    scores = qvl.rerank({"video": scene}, [{"video": video, "start_s": o.properties["start_s"],
                                            "end_s": o.properties["end_s"]} for o in found.objects]).scores
    part = [_part_row("clip", "the grid scene", i + 1, o.properties, o.metadata.distance, float(score))
            for i, (o, score) in enumerate(zip(found.objects, scores, strict=True))]
    _print_parts(part, "GraphQL nearVideo (the grid scene) over the video's windows (qvl's rerank score of each clip)",
                 out)
    return rows + part
