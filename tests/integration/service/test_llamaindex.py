"""LlamaIndex over qvl: ``QvlEmbedding`` (queries with the query instruction, texts and batches with
the document one, images, async) and ``QvlRerank`` (a node postprocessor), against the real service."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

from connectors.llamaindex import QvlEmbedding, QvlRerank
from tests.integration.service.dialect_support import DOC, PNG, QUERY, b64, cosines
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

TEXTS = ["a red bicycle leaning on a wall", "the quick brown fox", "数据库里的向量"]
DOCS = ["bicycles for sale", "a fox in the snow", "vector databases", "a recipe for bread"]


def reference(svc: ServiceProcess, items: list[object], instruction: str) -> np.ndarray:
    resp = httpx.post(svc.http_url + "/v1/embed", json={"items": items, "instruction": instruction}, timeout=120)
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["embeddings"]])


def scores(svc: ServiceProcess, query: object, documents: list[object]) -> list[float]:
    resp = httpx.post(svc.http_url + "/v1/rerank", json={"query": query, "documents": documents}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["scores"]


def same(got: object, want: np.ndarray) -> None:
    assert cosines(got, want).min() > 0.99999


def test_query_and_text_embeddings_carry_their_instructions(service: ServiceProcess) -> None:
    emb = QvlEmbedding(service=service.grpc_target, embed_batch_size=2)
    same([emb.get_query_embedding(t) for t in TEXTS], reference(service, TEXTS, QUERY))
    same(emb.get_text_embedding_batch(TEXTS), reference(service, TEXTS, DOC))  # two batches of two
    same([emb.get_text_embedding(TEXTS[0])], reference(service, TEXTS[:1], DOC))

    async def run() -> tuple[list[float], list[list[float]]]:
        return await emb.aget_query_embedding(TEXTS[1]), await emb.aget_text_embedding_batch(TEXTS)

    query, texts = asyncio.run(run())
    same([query], reference(service, TEXTS[1:2], QUERY))
    same(texts, reference(service, TEXTS, DOC))


def test_image_embeddings(service: ServiceProcess, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    emb = QvlEmbedding(service=service.grpc_target)
    want = reference(service, [{"image": b64(PNG)}], DOC)
    same([emb.get_image_embedding(str(tmp_path / "a.png")), emb.get_image_embedding(io.BytesIO(PNG))],
         np.repeat(want, 2, axis=0))
    same([asyncio.run(emb.aget_image_embedding(str(tmp_path / "a.png")))], want)


def test_an_index_retrieves_with_query_vectors_and_the_postprocessor_reranks(service: ServiceProcess) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, embed_model=QvlEmbedding(service=service.grpc_target))
    retrieved = index.as_retriever(similarity_top_k=4).retrieve("fox")
    query = reference(service, ["fox"], QUERY)[0]
    stored = reference(service, DOCS, DOC)
    assert [n.node.node_id for n in retrieved] == [f"n{i}" for i in np.argsort(-(stored @ query))]
    want = scores(service, "fox", DOCS)
    best = QvlRerank(service=service.grpc_target, top_n=2).postprocess_nodes(retrieved, query_str="fox")
    order = sorted(range(len(DOCS)), key=lambda i: -want[i])
    assert [n.node.node_id for n in best] == [f"n{i}" for i in order[:2]]
    for n in best:
        assert n.score == pytest.approx(want[int(n.node.node_id[1:])], abs=1e-5)
    every = asyncio.run(QvlRerank(service=service.grpc_target, top_n=None).apostprocess_nodes(retrieved,
                                                                                             query_str="fox"))
    assert [n.node.node_id for n in every] == [f"n{i}" for i in order]
    with pytest.raises(ValueError, match="needs the query"):
        QvlRerank(service=service.grpc_target).postprocess_nodes(retrieved)


def test_the_postprocessor_scores_an_image_node_with_its_text(service: ServiceProcess, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    nodes = [NodeWithScore(node=ImageNode(text="a caption", image_path=str(tmp_path / "a.png")), score=0.0),
             NodeWithScore(node=ImageNode(text="inline", image=b64(PNG)), score=0.0),
             NodeWithScore(node=TextNode(text="bread"), score=0.0)]
    want = scores(service, "a picture", [{"text": "a caption", "image": b64(PNG)},
                                         {"text": "inline", "image": b64(PNG)}, "bread"])
    got = QvlRerank(service=service.grpc_target, top_n=None).postprocess_nodes(nodes, query_str="a picture")
    by_text = {n.node.get_content(): n.score for n in got}
    assert by_text == pytest.approx({"a caption": want[0], "inline": want[1], "bread": want[2]}, abs=1e-5)
