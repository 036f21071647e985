"""The dialects as Weaviate's module clients (v1.39 source) and other callers send them: exact
bodies and what the clients parse, the rules (query vs document, profiles, the /v1/rerank body
rule, URLs), and bad input in each dialect's error shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.service.dialect_support import (
    DOC,
    JPEG,
    MAX_ITEMS,
    PNG,
    PROFILES,
    QUERY,
    VIDEO,
    b64,
    cosines,
    data_uri,
    post,
    qvl_embed,
    qvl_rerank,
)
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service


def vectors(resp: Any, key: str = "data") -> list[list[float]]:
    assert resp.status_code == 200, resp.text
    return [d["embedding"] for d in resp.json()[key]]


def same(got: Any, want: np.ndarray) -> None:
    assert cosines(got, want).min() >= 0.9999


def is_query(svc: ServiceProcess, got: Any, texts: list[str], query: str = QUERY, doc: str = DOC) -> bool:
    """Whether ``got`` are the query-instruction vectors of ``texts`` (and not the document ones)."""
    q, d = cosines(got, qvl_embed(svc, texts, query)).min(), cosines(got, qvl_embed(svc, texts, doc)).min()
    assert max(q, d) >= 0.9999 and min(q, d) < 0.9999
    return bool(q > d)


# -- Weaviate's clients, body for body ---------------------------------------------------------------
def test_text2vec_openai_body(dialect_service: ServiceProcess) -> None:
    # url.JoinPath(baseURL, "/v1/embeddings"); {input, model, dimensions}; reads data[].embedding,
    # data[].object, data[].error, error, usage. The default model name sends dimensions 1536.
    resp = post(dialect_service, "/v1/embeddings", {"input": ["a", "b"], "model": "text-embedding-3-small",
                                                     "dimensions": 32})
    body = resp.json()
    assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["embedding"] * 2
    assert "error" not in body and body["usage"]["prompt_tokens"] > 0
    same(vectors(resp), qvl_embed(dialect_service, ["a", "b"], DOC, 32))
    # Without rate-limit headers Weaviate's OpenAI client sends one text per request, in turn.
    assert resp.headers["x-ratelimit-remaining-tokens"] == resp.headers["x-ratelimit-limit-tokens"]
    assert int(resp.headers["x-ratelimit-limit-tokens"]) >= 300_000  # its most tokens in one request
    assert int(resp.headers["x-ratelimit-limit-requests"]) > 0 and resp.headers["x-ratelimit-reset-tokens"] == "1s"


def test_openai_takes_2048_inputs_in_calls_of_the_limit(dialect_service: ServiceProcess) -> None:
    # text2vec-openai sends up to 2000 texts a request; qvl embeds them QVL_MAX_ITEMS_PER_REQUEST (16
    # here) at a time, and an error in a later call is still named by its index in the request.
    svc = dialect_service

    def reference(texts: list[str]) -> np.ndarray:  # /v1/embed takes MAX_ITEMS at most
        return np.concatenate([qvl_embed(svc, texts[k:k + MAX_ITEMS], DOC) for k in range(0, len(texts), MAX_ITEMS)])

    texts = [f"text {i}" for i in range(2 * MAX_ITEMS + 3)]
    same(vectors(post(svc, "/v1/embeddings", {"input": texts, "model": "qwen"})), reference(texts))
    bad = MAX_ITEMS + 4
    inputs: list[Any] = [*texts[:bad], data_uri(b"not an image"), *texts[bad + 1:]]
    refused(post(svc, "/v1/embeddings", {"input": inputs}), 400, OPENAI_KEYS, f"item {bad}")
    data = post(svc, "/v1/embeddings", {"input": inputs, "allow_partial": True}).json()["data"]
    assert data[bad]["embedding"] is None and f"item {bad}" in data[bad]["error"]["message"]
    assert [d["index"] for d in data] == list(range(len(inputs)))
    good = [d["embedding"] for d in data if d["embedding"] is not None]
    same(good, reference(texts[:bad] + texts[bad + 1:]))


def test_repeated_slashes_are_one(dialect_service: ServiceProcess) -> None:
    # weaviate-client stores http://qvl:8080 as http://qvl:8080/, and Weaviate's cohere and nvidia
    # clients append /v2/embed, /v1/embeddings as strings.
    svc = dialect_service
    resp = post(svc, "//v2/embed", {"texts": ["a"], "input_type": "search_query", "embedding_types": ["float"]})
    assert resp.status_code == 200, resp.text
    same(resp.json()["embeddings"]["float"], qvl_embed(svc, ["a"], QUERY))
    resp = post(svc, "/profiles/products//v2/rerank", {"query": "a", "documents": ["a", "b"]})
    assert resp.status_code == 200, resp.text
    assert post(svc, "//v2/embed", {"texts": ["a"]}, token="wrong").status_code == 401


def test_multi2vec_jinaai_bodies(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    # Objects: {text}/{image} items (images bare base64), no task -> the document instruction.
    objects = post(svc, "/v1/embeddings", {"input": [{"text": "a caption"}, {"image": b64(PNG)}],
                                           "model": "jina-clip-v2", "embedding_type": "float"})
    same(vectors(objects), qvl_embed(svc, ["a caption", {"image": b64(PNG)}], DOC))
    assert [d["index"] for d in objects.json()["data"]] == [0, 1]
    # Queries: plain strings, task retrieval.query (sent when the model name has "v3" or "clip").
    queries = post(svc, "/v1/embeddings", {"input": ["fox"], "model": "jina-clip-v2", "embedding_type": "float",
                                           "task": "retrieval.query", "normalized": True})
    assert is_query(svc, vectors(queries), ["fox"])
    # A model name without "v3"/"clip" sends no task: a profile declaring plain strings queries.
    plain = post(svc, "/v1/embeddings", {"input": ["fox"], "model": "jina-objects", "embedding_type": "float"})
    assert is_query(svc, vectors(plain), ["fox"])
    item = post(svc, "/v1/embeddings", {"input": [{"text": "fox"}], "model": "jina-objects"})
    assert not is_query(svc, vectors(item), ["fox"])
    assert not is_query(svc, vectors(post(svc, "/v1/embeddings", {"input": ["fox"], "model": "other"})), ["fox"])
    # Jina's embedding types and normalized.
    binary = post(svc, "/v1/embeddings", {"input": ["fox"], "embedding_type": "ubinary"}).json()["data"][0]
    assert len(binary["embedding"]) == 8 and all(0 <= b <= 255 for b in binary["embedding"])
    raw = vectors(post(svc, "/v1/embeddings", {"input": ["fox"], "normalized": False}))[0]
    assert abs(np.linalg.norm(raw) - 1) > 1e-3


def test_multi2vec_nvidia_bodies(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    # Images as data URIs (always labelled image/png) in the same input list texts use.
    resp = post(svc, "/v1/embeddings", {"input": [data_uri(PNG), data_uri(JPEG)], "model": "nvidia/nvclip",
                                        "encoding_format": "float"})
    same(vectors(resp), qvl_embed(svc, [{"image": b64(PNG)}, {"image": b64(JPEG)}], DOC))
    passage = post(svc, "/v1/embeddings", {"input": ["fox"], "input_type": "passage", "model": "m"})
    assert not is_query(svc, vectors(passage), ["fox"])
    query = post(svc, "/v1/embeddings", {"input": ["fox"], "input_type": "query", "model": "m"})
    assert is_query(svc, vectors(query), ["fox"])
    # Its client reads "message" on a 400.
    bad = post(svc, "/v1/embeddings", {"input": ["data:image/png;base64,not base64!"], "model": "m"})
    assert bad.status_code == 400 and "item 0" in bad.json()["message"]


def test_multi2vec_cohere_bodies(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    texts = post(svc, "/v2/embed", {"texts": ["a", "b"], "model": "embed-multilingual-v3.0",
                                    "input_type": "search_document", "embedding_types": ["float"], "truncate": "END"})
    assert texts.status_code == 200 and texts.json()["response_type"] == "embeddings_by_type"
    same(texts.json()["embeddings"]["float"], qvl_embed(svc, ["a", "b"], DOC))
    # One image a request, a data URI; input_type image is a document.
    image = post(svc, "/v2/embed", {"images": [data_uri(JPEG)], "model": "embed-multilingual-v3.0",
                                    "input_type": "image", "embedding_types": ["float"]})
    same(image.json()["embeddings"]["float"], qvl_embed(svc, [{"image": b64(JPEG)}], DOC))


def test_multi2vec_voyageai_bodies(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    # baseURL + "/multimodalembeddings"; images labelled image/png whatever they are, video video/mp4.
    body = {"inputs": [{"content": [{"type": "text", "text": "a caption"}]},
                       {"content": [{"type": "image_base64", "image_base64": "data:image/png;base64," + b64(JPEG)}]},
                       {"content": [{"type": "video_base64", "video_base64": data_uri(VIDEO, "video/mp4")}]}],
            "model": "voyage-multimodal-3", "truncation": True, "input_type": "document"}
    resp = post(svc, "/v1/multimodalembeddings", body)
    same(vectors(resp), qvl_embed(svc, ["a caption", {"image": b64(JPEG)}, {"video": b64(VIDEO)}], DOC))
    assert set(resp.json()["usage"]) == {"text_tokens", "image_pixels", "video_pixels", "total_tokens"}
    query = post(svc, "/v1/multimodalembeddings", {**body, "inputs": body["inputs"][:1], "input_type": "query"})
    assert is_query(svc, vectors(query), ["a caption"])


def test_reranker_cohere_body(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    docs = ["a fox", "bread", b64(PNG)]  # a blob property arrives as base64: scored as an image
    resp = post(svc, "/v2/rerank", {"documents": docs, "query": "fox", "model": "rerank-v3.5",
                                    "return_documents": False})
    results = resp.json()["results"]
    # Its client puts result i at results[i].index of a list as long as the results: every index is there.
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    reference = qvl_rerank(svc, "fox", ["a fox", "bread", {"image": b64(PNG)}])
    assert max(abs(r["relevance_score"] - reference[r["index"]]) for r in results) <= 1e-3
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)


# -- Other callers ------------------------------------------------------------------------------------
def test_vllm_messages_are_one_item(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    messages = [{"role": "system", "content": "Represent the photo for search"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(PNG)}},
                                             {"type": "text", "text": "a caption"}]}]
    resp = post(svc, "/v1/embeddings", {"messages": messages, "model": "Qwen/Qwen3-VL-Embedding-2B"})
    same(vectors(resp), qvl_embed(svc, [{"text": "a caption", "image": b64(PNG)}], "Represent the photo for search"))
    plain = post(svc, "/v1/embeddings", {"messages": messages[1:], "input_type": "query"})
    same(vectors(plain), qvl_embed(svc, [{"text": "a caption", "image": b64(PNG)}], QUERY))


def test_v1_rerank_body_rule(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    own = post(svc, "/v1/rerank", {"query": "fox", "documents": ["a fox", "bread"], "top_k": 1})
    assert set(own.json()) == {"scores", "ranking", "model", "fingerprint", "errors"}
    unknown = post(svc, "/v1/rerank", {"query": "fox", "documents": ["a"], "topk": 1})
    assert unknown.status_code == 422 and "topk" in unknown.json()["error"]
    # Jina / Cohere v1 / vLLM: results[]; content parts rerank images and video (vLLM's score API).
    docs = ["a fox", {"content": [{"type": "image_url", "image_url": {"url": data_uri(PNG)}}]},
            {"content": [{"type": "text", "text": "a clip"},
                         {"type": "video_url", "video_url": {"url": data_uri(VIDEO, "video/mp4")}}]},
            {"text": "bread"}, {"image": b64(JPEG)}]
    resp = post(svc, "/v1/rerank", {"model": "jina-reranker-m0", "query": "fox", "documents": docs, "top_n": 5,
                                    "return_documents": True})
    reference = qvl_rerank(svc, "fox", ["a fox", {"image": b64(PNG)}, {"text": "a clip", "video": b64(VIDEO)},
                                        "bread", {"image": b64(JPEG)}])
    results = resp.json()["results"]
    assert max(abs(r["relevance_score"] - reference[r["index"]]) for r in results) <= 1e-3
    assert {r["index"]: r["document"] for r in results}[0] == {"text": "a fox"}
    # The query as content parts too.
    image_query = post(svc, "/v1/rerank", {"model": "m", "documents": ["a fox", "bread"],
                                           "query": {"content": [{"type": "image_url",
                                                                  "image_url": {"url": data_uri(PNG)}}]}})
    want = qvl_rerank(svc, {"image": b64(PNG)}, ["a fox", "bread"])
    assert max(abs(r["relevance_score"] - want[r["index"]]) for r in image_query.json()["results"]) <= 1e-3


def test_profiles_by_url_and_by_model(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    p = PROFILES["products"]
    want = qvl_embed(svc, ["a red bicycle"], p["instruction"], p["dimensions"])
    for path, body in (("/profiles/products/v1/embeddings", {"input": ["a red bicycle"], "model": "other"}),
                       ("/v1/embeddings", {"input": ["a red bicycle"], "model": "products"})):
        same(vectors(post(svc, path, body)), want)
    cohere = post(svc, "/profiles/products/v2/embed", {"texts": ["a red bicycle"], "input_type": "search_query"})
    same(cohere.json()["embeddings"]["float"], qvl_embed(svc, ["a red bicycle"], p["query_instruction"], 32))
    ranked = post(svc, "/profiles/products/v2/rerank", {"query": "bike", "documents": ["a red bicycle", "bread"]})
    reference = qvl_rerank(svc, "bike", ["a red bicycle", "bread"], p["rerank_instruction"])
    assert max(abs(r["relevance_score"] - reference[r["index"]]) for r in ranked.json()["results"]) <= 1e-3
    defaults = post(svc, "/v1/embeddings", {"input": ["a red bicycle"], "model": "Qwen/Qwen3-VL-Embedding-2B"})
    same(vectors(defaults), qvl_embed(svc, ["a red bicycle"], DOC))
    missing = post(svc, "/profiles/nope/v2/embed", {"texts": ["x"]})
    assert missing.status_code == 404 and "unknown profile 'nope'" in missing.json()["message"]


def test_media_urls_follow_the_allow_list(dialect_service: ServiceProcess, dialect_media: Path) -> None:
    svc = dialect_service
    inside = (dialect_media / "a.png").as_uri()
    resp = post(svc, "/v2/embed", {"inputs": [{"content": [{"type": "image_url", "image_url": {"url": inside}}]}],
                                   "input_type": "search_document"})
    same(resp.json()["embeddings"]["float"], qvl_embed(svc, [{"image": b64(PNG)}], DOC))
    for url in ("file:///etc/hostname", "https://example.com/a.png"):
        refused = post(svc, "/v1/multimodalembeddings",
                       {"inputs": [{"content": [{"type": "text", "text": "ok"}]},
                                   {"content": [{"type": "image_url", "image_url": url}]}]})
        assert refused.status_code == 400 and refused.json()["detail"].startswith("item 1:"), refused.text


# -- Bad input, in each dialect's shape --------------------------------------------------------------
OPENAI_KEYS = {"error", "detail", "message"}


def refused(resp: Any, status: int, keys: set[str], *fragments: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == keys, body
    message = body["error"]["message"] if "error" in body else body.get("message") or body["detail"]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_openai_dialect_bad_input(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    refused(post(svc, "/v1/embeddings", {"input": 12}), 400, OPENAI_KEYS, "input")
    refused(post(svc, "/v1/embeddings", {"input": ["a", 12]}), 400, OPENAI_KEYS, "item 1")
    refused(post(svc, "/v1/embeddings", {"input": ["a"], "input_type": "questions"}), 400, OPENAI_KEYS,
            "input_type", "questions")
    refused(post(svc, "/v1/embeddings", {"input": ["a"], "task": "retrieval.everything"}), 400, OPENAI_KEYS, "task")
    refused(post(svc, "/v1/embeddings", {"input": [{"text": "a"}, {"image": "data:application/pdf;base64,aGk="}]}),
            400, OPENAI_KEYS, "item 1", "application/pdf")
    refused(post(svc, "/v1/embeddings", {"input": ["a"] * 2049}), 400, OPENAI_KEYS, "over OpenAI's limit of 2048")
    refused(post(svc, "/v1/embeddings", {"input": ["a"], "dimensions": 65}), 400, OPENAI_KEYS, "dimensions")
    refused(post(svc, "/v1/embeddings", {"input": ["a"], "encoding_format": "int4"}), 400, OPENAI_KEYS,
            "encoding_format")
    body = post(svc, "/v1/embeddings", {"input": ["a"], "dimensions": "many"}).json()["error"]
    assert body["param"] == "dimensions" and body["type"] == "invalid_request_error"


def test_openai_partial_results(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    resp = post(svc, "/v1/embeddings", {"input": ["a fox", "data:text/plain;base64,aGk=", data_uri(b"not an image"),
                                                  "bread"], "allow_partial": True})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    assert data[1]["embedding"] is None and data[1]["error"]["param"] == "input[1]"
    assert data[2]["embedding"] is None and "item 2" in data[2]["error"]["message"]
    same([data[0]["embedding"], data[3]["embedding"]], qvl_embed(svc, ["a fox", "bread"], DOC))


def test_cohere_dialect_bad_input(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    keys = {"message"}
    refused(post(svc, "/v2/embed", {"texts": ["a", 3]}), 400, keys, "item 1", "texts[1] must be a string")
    refused(post(svc, "/v2/embed", {"texts": ["a"], "images": [data_uri(PNG)]}), 400, keys, "exactly one")
    refused(post(svc, "/v2/embed", {"images": [data_uri(PNG), "data:text/plain;base64,aGk="]}), 400, keys,
            "item 1", "text/plain")
    refused(post(svc, "/v2/embed", {"texts": ["a"] * (MAX_ITEMS + 1)}), 413, keys, "over the limit")
    refused(post(svc, "/v2/embed", {"texts": ["a"], "output_dimension": 8}), 400, keys, "output_dimension")
    refused(post(svc, "/v2/embed", {"texts": ["a"], "embedding_types": ["int4"]}), 400, keys, "int4")
    refused(post(svc, "/v2/rerank", {"query": "q", "documents": []}), 400, keys, "documents")
    refused(post(svc, "/v2/rerank", {"query": "q", "documents": ["a", 7]}), 400, keys, "documents[1]")
    refused(post(svc, "/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}), 400, keys, "top_n")


def test_voyage_and_foreign_rerank_bad_input(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    keys = {"detail"}
    refused(post(svc, "/v1/multimodalembeddings", {"inputs": "a"}), 400, keys, "inputs")
    refused(post(svc, "/v1/multimodalembeddings", {"inputs": [{"content": [{"type": "audio", "audio": "x"}]}]}),
            400, keys, "item 0", "audio")
    refused(post(svc, "/v1/multimodalembeddings", {"inputs": [{"content": ["a"]}], "input_type": "questions"}),
            400, keys, "input_type")
    refused(post(svc, "/v1/multimodalembeddings", {"inputs": [{"content": [{"type": "text", "text": "a"}]}] * 17}),
            413, keys, "over the limit")
    refused(post(svc, "/v1/multimodalembeddings", {"inputs": [{"content": [{"type": "text", "text": "a"}]}],
                                                   "output_dimension": 128}), 400, keys, "output_dimension")
    refused(post(svc, "/v1/rerank", {"model": "m", "query": "q", "documents": ["a", {"pdf": "x"}]}), 400,
            {"detail", "message"}, "documents[1]")


def test_every_dialect_refuses_a_wrong_token_in_its_shape(dialect_service: ServiceProcess) -> None:
    svc = dialect_service
    for path, key in (("/v1/embeddings", "error"), ("/v2/embed", "message"), ("/v2/rerank", "message"),
                      ("/v1/multimodalembeddings", "detail"), ("/profiles/products/v1/rerank", "detail"),
                      ("/v1/rerank", "detail"), ("/profiles/products/v1/embeddings", "error")):
        resp = post(svc, path, {}, token="wrong")
        assert resp.status_code == 401 and key in resp.json(), (path, resp.text)
    assert json.loads(post(svc, "/v1/rerank", {}, token="wrong").text)["code"] == "UNAUTHENTICATED"
