"""Parity fixtures through gRPC and through each HTTP contract of a real `qvl serve` process."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from connectors.client import Client
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service
FIXTURES = Path(__file__).parents[2] / "fixtures"
EMBED = json.loads((FIXTURES / "parity" / "embed.json").read_text())["cases"]
RERANK = json.loads((FIXTURES / "parity" / "rerank.json").read_text())["cases"]


def media(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def client_item(inp: dict[str, Any]) -> dict[str, Any]:
    """A fixture input as a client item (bytes, frames)."""
    out: dict[str, Any] = {}
    if "text" in inp:
        out["text"] = inp["text"]
    if "image" in inp:
        paths = inp["image"] if isinstance(inp["image"], list) else [inp["image"]]
        out["image"] = [media(p) for p in paths]
    if "video" in inp:
        out["frames"] = [media(p) for p in inp["video"]]
    if "instruction" in inp:
        out["instruction"] = inp["instruction"]
    return out


def json_item(inp: dict[str, Any]) -> dict[str, Any]:
    out = client_item(inp)
    if "image" in out:
        out["image"] = [base64.b64encode(b).decode() for b in out["image"]]
    if "frames" in out:
        out["frames"] = [base64.b64encode(b).decode() for b in out["frames"]]
    return out


def bound(case: dict[str, Any]) -> float:
    return 0.998 if "video" in case["input"] else 0.9999


def test_grpc_embed_each_case_and_all_at_once(service: ServiceProcess) -> None:
    with Client(service.grpc_target) as c:
        together = c.embed([client_item(case["input"]) for case in EMBED])
        for case, row in zip(EMBED, together, strict=True):
            assert float(row @ np.array(case["embedding"])) >= bound(case), case["input"]
            [alone] = c.embed([client_item(case["input"])])
            assert float(alone @ np.array(case["embedding"])) >= bound(case)


def test_grpc_embed_stream_matches(service: ServiceProcess) -> None:
    with Client(service.grpc_target) as c:
        rows = list(c.embed_stream((client_item(case["input"]) for case in EMBED), max_in_flight=3))
    for case, row in zip(EMBED, rows, strict=True):
        assert float(row @ np.array(case["embedding"])) >= bound(case)  # type: ignore[operator]


def test_grpc_rerank(service: ServiceProcess) -> None:
    with Client(service.grpc_target) as c:
        for case in RERANK:
            inp = case["input"]
            res = c.rerank(client_item(inp["query"]), [client_item(d) for d in inp["documents"]],
                           instruction=inp.get("instruction"))
            np.testing.assert_allclose(res.scores, case["scores"], atol=1e-3)
            assert [i for i, _ in res.ranking] == sorted(range(len(case["scores"])), key=lambda i: -case["scores"][i])


def test_http_v1_embed_json_and_base64(service: ServiceProcess) -> None:
    body = {"items": [json_item(case["input"]) for case in EMBED]}
    resp = httpx.post(f"{service.http_url}/v1/embed", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    for case, out in zip(EMBED, resp.json()["embeddings"], strict=True):
        assert float(np.dot(out["embedding"], case["embedding"])) >= bound(case)
    resp = httpx.post(f"{service.http_url}/v1/embed", json={**body, "format": "base64"}, timeout=120)
    for case, out in zip(EMBED, resp.json()["embeddings"], strict=True):
        vec = np.frombuffer(base64.b64decode(out["embedding_b64"]), dtype="<f4")
        assert float(vec @ np.array(case["embedding"])) >= bound(case)


def test_http_v1_rerank(service: ServiceProcess) -> None:
    for case in RERANK:
        inp = case["input"]
        body = {"query": json_item(inp["query"]), "documents": [json_item(d) for d in inp["documents"]],
                "instruction": inp.get("instruction")}
        resp = httpx.post(f"{service.http_url}/v1/rerank", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["scores"], case["scores"], atol=1e-3)


def test_http_vectorize_clip_contract(service: ServiceProcess) -> None:
    """multi2vec-clip: texts and images apart, one vector each, with the default instruction."""
    text_case, image_case = EMBED[0], EMBED[3]
    body = {"texts": [text_case["input"]["text"]],
            "images": [base64.b64encode(media(image_case["input"]["image"])).decode()]}
    resp = httpx.post(f"{service.http_url}/vectorize", content=json.dumps(body), timeout=60)
    assert resp.status_code == 200
    out = resp.json()
    assert float(np.dot(out["textVectors"][0], text_case["embedding"])) >= 0.9999
    assert float(np.dot(out["imageVectors"][0], image_case["embedding"])) >= 0.9999


def test_http_vectors_transformers_contract(service: ServiceProcess) -> None:
    """task_type query applies the query instruction (parity case 1); passage the document one (case 0)."""
    text = EMBED[0]["input"]["text"]
    for task, case in (("query", EMBED[1]), ("passage", EMBED[0])):
        resp = httpx.post(f"{service.http_url}/vectors", content=json.dumps(
            {"text": text, "config": {"pooling_strategy": "masked_mean", "task_type": task}}), timeout=60)
        assert resp.status_code == 200
        out = resp.json()
        assert out["text"] == text and out["dim"] == out["dims"] == 64
        assert float(np.dot(out["vector"], case["embedding"])) >= 0.9999


def test_http_rerank_module_contract_scores_base64_images_as_images(service: ServiceProcess) -> None:
    case = RERANK[1]  # query is an image; documents: a text, the same image
    query = base64.b64encode(media(case["input"]["query"]["image"])).decode()
    image_doc = base64.b64encode(media(case["input"]["documents"][1]["image"])).decode()
    docs = [case["input"]["documents"][0]["text"], image_doc]
    resp = httpx.post(f"{service.http_url}/rerank", content=json.dumps({"query": query, "documents": docs,
                                                                         "property": "p"}), timeout=60)
    assert resp.status_code == 200
    out = resp.json()
    assert [s["document"] for s in out["scores"]] == docs  # input order, never sorted
    np.testing.assert_allclose([s["score"] for s in out["scores"]], case["scores"][:2], atol=1e-3)
