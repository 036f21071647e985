"""Weaviate's module contracts, written from DESIGN.md's table (a real Weaviate comes in its own tests)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.media_factory import image_bytes, video_bytes
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service


def post(service: ServiceProcess, path: str, body: dict) -> httpx.Response:
    """As Weaviate's clients do it: JSON bytes, and no Content-Type header at all."""
    resp = httpx.post(service.http_url + path, content=json.dumps(body).encode(), timeout=60)
    assert "content-type" not in {k.lower() for k in resp.request.headers}
    return resp


def test_health_and_meta(service: ServiceProcess) -> None:
    for path in ("/.well-known/ready", "/.well-known/live"):
        assert httpx.get(service.http_url + path).status_code == 204
    meta = httpx.get(service.http_url + "/meta")
    assert meta.status_code == 200 and isinstance(meta.json(), dict)
    assert {m["task"] for m in meta.json()["models"]} == {"embed", "rerank"}


def test_http_requests_are_counted_per_route_and_status(service: ServiceProcess) -> None:
    def count(route: str, code: str) -> float:
        families = text_string_to_metric_families(httpx.get(service.http_url + "/metrics").text)
        return sum(s.value for f in families if f.name == "qvl_requests" for s in f.samples
                   if s.name == "qvl_requests_total" and s.labels == {"endpoint": f"http {route}", "code": code})

    ok, bad = count("/vectorize", "200"), count("/vectorize", "400")
    post(service, "/vectorize", {"texts": ["counted"]})
    httpx.post(service.http_url + "/vectorize", content=b"{not json")
    assert count("/vectorize", "200") == ok + 1
    assert count("/vectorize", "400") == bad + 1


def test_clip_vectorize_one_vector_per_input_in_order(service: ServiceProcess) -> None:
    imgs = [base64.b64encode(image_bytes("PNG", (64, 64), seed=s)).decode() for s in range(3)]
    out = post(service, "/vectorize", {"texts": ["one", "two"], "images": imgs}).json()
    assert len(out["textVectors"]) == 2 and len(out["imageVectors"]) == 3
    alone = post(service, "/vectorize", {"images": [imgs[2]]}).json()["imageVectors"][0]
    assert out["imageVectors"][2] == pytest.approx(alone, abs=1e-4)
    assert out["textVectors"][0] != out["textVectors"][1]


def test_bind_vectorize_video_status_exactly_200(service: ServiceProcess) -> None:
    video = base64.b64encode(video_bytes(frames=4, fps=2)).decode()
    resp = post(service, "/vectorize", {"texts": ["clip"], "video": [video]})
    assert resp.status_code == 200
    assert len(resp.json()["videoVectors"]) == 1 and len(resp.json()["videoVectors"][0]) == 64


def test_bind_unsupported_modalities_are_a_clear_4xx(service: ServiceProcess) -> None:
    for field in ("audio", "imu", "thermal", "depth"):
        resp = post(service, "/vectorize", {field: ["AAAA"]})
        assert 400 <= resp.status_code < 500 and field in resp.json()["error"]


def test_transformers_vectors_with_and_without_slash_and_dimensions(service: ServiceProcess) -> None:
    a = post(service, "/vectors", {"text": "hello", "config": {"task_type": "passage"}}).json()
    b = post(service, "/vectors/", {"text": "hello", "config": {"task_type": "passage"}}).json()
    assert a["vector"] == pytest.approx(b["vector"], abs=1e-5)
    q = post(service, "/vectors", {"text": "hello", "config": {"task_type": "query"}}).json()
    assert q["vector"] != pytest.approx(a["vector"], abs=1e-3)  # the query instruction changes it
    d = post(service, "/vectors", {"text": "hello", "config": {"task_type": "passage", "dimensions": 32}}).json()
    assert d["dim"] == 32 and len(d["vector"]) == 32
    assert post(service, "/dim/48/vectors", {"text": "hello"}).json()["dim"] == 48


def test_reranker_scores_in_input_order_never_sorted(service: ServiceProcess) -> None:
    docs = [f"document {i} " * (i + 1) for i in range(40)]  # more than Weaviate's 32 per call is fine too
    out = post(service, "/rerank", {"query": "document 3", "documents": docs, "property": "text"}).json()
    assert out["query"] == "document 3"
    assert [s["document"] for s in out["scores"]] == docs
    assert all(0.0 <= s["score"] <= 1.0 for s in out["scores"])


def test_errors_are_json_with_error_field(service: ServiceProcess) -> None:
    for path, body in (("/vectorize", {"images": ["%%%"]}), ("/vectors", {"nope": 1}), ("/rerank", {})):
        resp = post(service, path, body)
        assert resp.status_code >= 400 and isinstance(resp.json()["error"], str)


def test_openapi_document(service: ServiceProcess) -> None:
    doc = httpx.get(service.http_url + "/openapi.json").json()
    for path in ("/v1/embed", "/v1/rerank", "/vectorize", "/vectors", "/rerank", "/profiles/{name}/vectorize"):
        assert path in doc["paths"], path


def test_a_lone_surrogate_is_bad_input_naming_its_item(service: ServiceProcess) -> None:
    """JSON may escape a lone surrogate ("\\ud800"); that text can never be tokenized: 400, not 500/503."""
    bad = "\ud800"

    def refused(resp: httpx.Response, item: int | None) -> None:
        assert resp.status_code == 400, resp.text
        assert "retry-after" not in resp.headers
        body = resp.json()
        assert body["code"] == "INVALID_ARGUMENT" and "surrogate" in body["error"]
        assert body.get("item") == item, body

    refused(post(service, "/v1/embed", {"items": ["ok", bad]}), 1)
    refused(post(service, "/v1/embed", {"items": [{"text": "ok", "instruction": bad}]}), 0)
    refused(post(service, "/v1/embed", {"items": ["ok"], "instruction": bad}), None)
    partial = post(service, "/v1/embed", {"items": ["ok", {"text": ["fine", "x" + bad]}], "allow_partial": True})
    assert partial.status_code == 200, partial.text
    out = partial.json()
    assert len(out["embeddings"][0]["embedding"]) == 64 and out["embeddings"][1] is None
    [err] = out["errors"]
    assert err["item"] == 1 and err["code"] == "INVALID_ARGUMENT" and "text 1" in err["error"]

    refused(post(service, "/vectorize", {"texts": ["ok", bad]}), 1)
    resp = post(service, "/vectors", {"text": bad})
    assert resp.status_code == 400 and "surrogate" in resp.json()["error"]

    refused(post(service, "/v1/rerank", {"query": "q", "documents": ["a", bad]}), 1)
    query = post(service, "/v1/rerank", {"query": bad, "documents": ["a"]})
    assert query.status_code == 400 and "query" in query.json()["error"] and "retry-after" not in query.headers
    refused(post(service, "/v1/rerank", {"query": "q", "documents": ["a"], "instruction": bad}), None)
    partial = post(service, "/v1/rerank", {"query": "q", "documents": ["a", bad, "b"], "allow_partial": True})
    assert partial.status_code == 200, partial.text
    out = partial.json()
    assert out["scores"][1] is None and out["scores"][0] is not None and out["scores"][2] is not None
    assert [e["item"] for e in out["errors"]] == [1] and out["errors"][0]["code"] == "INVALID_ARGUMENT"
    resp = post(service, "/rerank", {"query": "q", "documents": ["a", bad]})
    assert resp.status_code == 400 and "surrogate" in resp.json()["error"]


def test_info_limits_are_json_numbers(service: ServiceProcess) -> None:
    """protobuf's JSON mapping writes 64-bit integers as strings; /v1/info and /meta must not."""
    for path in ("/v1/info", "/meta"):
        limits = httpx.get(service.http_url + path).json()["limits"]
        numbers = {k: v for k, v in limits.items() if k != "allow_uri_schemes"}
        assert {"max_request_bytes", "max_media_bytes", "max_source_image_pixels", "batch_tokens"} <= set(numbers)
        for name, value in numbers.items():
            assert isinstance(value, int | float) and not isinstance(value, bool), (path, name, value)
