"""LangChain over qvl: LangChain's own standard suite (langchain-tests) for ``QvlEmbeddings`` and for
LangChain's default ``OpenAIEmbeddings`` pointed at qvl, and what the standard suite does not check:
the query instruction on the query side, images and videos, truncation, and ``QvlReranker``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_openai import OpenAIEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from connectors.client import InvalidInput
from connectors.langchain import QvlEmbeddings, QvlReranker
from tests.integration.service.dialect_support import DOC, PNG, QUERY, VIDEO, b64, cosines
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

TEXTS = ["a red bicycle leaning on a wall", "the quick brown fox", "数据库里的向量"]
DOCS = ["bicycles for sale", "a fox in the snow", "vector databases", "a recipe for bread"]
TIKTOKEN_DIR = os.environ.get("QVL_TIKTOKEN_CACHE_DIR", "/opt/qvl/tiktoken")


def reference(svc: ServiceProcess, items: list[object], instruction: str, dimensions: int | None = None) -> np.ndarray:
    body: dict[str, object] = {"items": items, "instruction": instruction}
    if dimensions is not None:
        body["dimensions"] = dimensions
    resp = httpx.post(svc.http_url + "/v1/embed", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["embeddings"]])


def scores(svc: ServiceProcess, query: object, documents: list[object]) -> list[float]:
    resp = httpx.post(svc.http_url + "/v1/rerank", json={"query": query, "documents": documents}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["scores"]


def same(got: object, want: np.ndarray) -> None:
    assert cosines(got, want).min() > 0.99999


# -- LangChain's standard suite ------------------------------------------------------------------------
class TestQvlEmbeddingsStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return QvlEmbeddings

    @pytest.fixture
    def model(self, service: ServiceProcess) -> Embeddings:
        return QvlEmbeddings(service=service.grpc_target)


class TestDefaultOpenAIEmbeddingsAtQvl(EmbeddingsIntegrationTests):
    """LangChain's OpenAIEmbeddings as a user writes it: token arrays (check_embedding_ctx_length)."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return OpenAIEmbeddings

    @pytest.fixture
    def model(self, service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> Embeddings:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_DIR)  # its client-side tiktoken, offline
        return OpenAIEmbeddings(model="text-embedding-3-small", base_url=service.http_url + "/v1", api_key="any",
                                max_retries=0)


# -- what the standard suite does not check ------------------------------------------------------------
def test_queries_carry_the_query_instruction_and_documents_the_document_one(service: ServiceProcess) -> None:
    emb = QvlEmbeddings(service=service.grpc_target)
    same(emb.embed_documents(TEXTS), reference(service, TEXTS, DOC))
    same([emb.embed_query(t) for t in TEXTS], reference(service, TEXTS, QUERY))
    assert cosines([emb.embed_query(TEXTS[0])], reference(service, TEXTS[:1], DOC)).max() < 0.9999

    async def both() -> tuple[list[list[float]], list[float]]:
        return await emb.aembed_documents(TEXTS), await emb.aembed_query(TEXTS[1])

    documents, query = asyncio.run(both())
    same(documents, reference(service, TEXTS, DOC))
    same([query], reference(service, TEXTS[1:2], QUERY))
    custom = QvlEmbeddings(service=service.grpc_target, instruction="Represent the listing.",
                           query_instruction="Find the listing.", dimensions=32, batch_size=2)
    same(custom.embed_documents(TEXTS), reference(service, TEXTS, "Represent the listing.", 32))
    same([custom.embed_query(TEXTS[2])], reference(service, TEXTS[2:], "Find the listing.", 32))


def test_images_and_videos(service: ServiceProcess, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "v.mp4").write_bytes(VIDEO)
    emb = QvlEmbeddings(service=service.grpc_target)
    want = reference(service, [{"image": b64(PNG)}], DOC)
    same(emb.embed_image([str(tmp_path / "a.png"), PNG, "data:image/png;base64," + b64(PNG)]),
         np.repeat(want, 3, axis=0))
    same(asyncio.run(emb.aembed_image([tmp_path / "a.png"])), want)
    same(emb.embed_video([str(tmp_path / "v.mp4")]), reference(service, [{"video": b64(VIDEO)}], DOC))
    same(emb.embed_items([{"text": "a caption", "image": PNG}], query=True),
         reference(service, [{"text": "a caption", "image": b64(PNG)}], QUERY))
    with pytest.raises(InvalidInput, match="image 0: cannot read the image file"):
        emb.embed_image([str(tmp_path / "missing.png")])


def test_long_text_is_refused_unless_truncation_is_asked_for(service: ServiceProcess) -> None:
    long = "lorem ipsum " * 800  # the tiny model's tokenizer is byte-level: 9,600 tokens, past 8,192
    with pytest.raises(InvalidInput, match="QVL_EMBED_MAX_LENGTH") as refused:
        QvlEmbeddings(service=service.grpc_target).embed_documents(["short", long])
    assert refused.value.index == 1
    assert len(QvlEmbeddings(service=service.grpc_target, truncate="end").embed_documents([long])) == 1


def test_reranker_returns_the_best_documents_with_qvl_scores(service: ServiceProcess) -> None:
    docs = [Document(page_content=t, metadata={"n": i}, id=f"d{i}") for i, t in enumerate(DOCS)]
    want = scores(service, "fox", DOCS)
    best = QvlReranker(service=service.grpc_target, top_n=2).compress_documents(docs, "fox")
    order = sorted(range(len(DOCS)), key=lambda i: -want[i])
    assert [d.metadata["n"] for d in best] == order[:2] and [d.id for d in best] == [f"d{i}" for i in order[:2]]
    for d in best:
        assert d.metadata["relevance_score"] == pytest.approx(want[d.metadata["n"]], abs=1e-5)
    assert all("relevance_score" not in d.metadata for d in docs)  # the input documents are left alone
    every = asyncio.run(QvlReranker(service=service.grpc_target, top_n=None).acompress_documents(docs, "fox"))
    assert [d.metadata["n"] for d in every] == order
    assert QvlReranker(service=service.grpc_target).compress_documents([], "fox") == []


def test_reranker_scores_an_image_in_the_metadata_with_the_text(service: ServiceProcess) -> None:
    docs = [Document(page_content="a caption", metadata={"image": PNG}), Document(page_content="bread")]
    want = scores(service, "a picture", [{"text": "a caption", "image": b64(PNG)}, "bread"])
    got = QvlReranker(service=service.grpc_target, top_n=None).compress_documents(docs, "a picture")
    by_text = {d.page_content: d.metadata["relevance_score"] for d in got}
    assert by_text["a caption"] == pytest.approx(want[0], abs=1e-5)
    assert by_text["bread"] == pytest.approx(want[1], abs=1e-5)
