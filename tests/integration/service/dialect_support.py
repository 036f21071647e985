"""What the dialect tests share: a service behind a token with profiles and an allow-listed media
folder, qvl's own /v1/embed and /v1/rerank as the reference, and the media they send."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.media_factory import image_bytes, video_bytes
from tests.support.service import ServiceProcess
from vectorizer_service.core.settings import DEFAULT_EMBED_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION

TOKEN = "dialect-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOC = DEFAULT_EMBED_INSTRUCTION
QUERY = DEFAULT_QUERY_INSTRUCTION
PROFILES = {
    "products": {"instruction": "Represent the product listing.", "query_instruction": "Find the product.",
                 "dimensions": 32, "rerank_instruction": "Judge whether the listing matches the shopper."},
    "jina-objects": {"plain_strings_are_queries": True},
}
MAX_ITEMS = 16
PNG = image_bytes("PNG", (64, 48), seed=3)
JPEG = image_bytes("JPEG", (48, 64), seed=4)
VIDEO = video_bytes(frames=4, fps=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def start_service(media_dir: Path) -> Iterator[ServiceProcess]:
    env = {"QVL_PROFILES": json.dumps(PROFILES), "QVL_MAX_ITEMS_PER_REQUEST": str(MAX_ITEMS),
           "QVL_ALLOW_URI_SCHEMES": "file", "QVL_ALLOW_URI_ROOTS": str(media_dir)}
    with ServiceProcess(token=TOKEN, env=env) as svc:
        yield svc


def qvl_embed(svc: ServiceProcess, items: list[Any], instruction: str, dimensions: int | None = None) -> np.ndarray:
    """qvl's own /v1/embed: the reference every dialect's vectors are held to."""
    body: dict[str, Any] = {"items": items, "instruction": instruction}
    if dimensions is not None:
        body["dimensions"] = dimensions
    resp = httpx.post(svc.http_url + "/v1/embed", json=body, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    return np.array([e["embedding"] for e in resp.json()["embeddings"]], dtype=np.float64)


def qvl_rerank(svc: ServiceProcess, query: Any, documents: list[Any], instruction: str | None = None) -> list[float]:
    body: dict[str, Any] = {"query": query, "documents": documents}
    if instruction is not None:
        body["instruction"] = instruction
    resp = httpx.post(svc.http_url + "/v1/rerank", json=body, headers=AUTH, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()["scores"]


def cosines(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine of two lists of vectors."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def post(svc: ServiceProcess, path: str, body: Any, token: str = TOKEN) -> httpx.Response:
    return httpx.post(svc.http_url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)
