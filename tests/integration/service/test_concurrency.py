"""64 concurrent clients get what sequential calls get (dynamic batching changes nothing)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from connectors.client import Client
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service
FIXTURES = Path(__file__).parents[2] / "fixtures"
IMAGES = sorted((FIXTURES / "media").glob("*.png")) + sorted((FIXTURES / "media").glob("*.jpg"))


def items() -> list[dict]:
    out: list[dict] = []
    for i in range(64):
        if i % 4 == 0:
            out.append({"image": IMAGES[i % len(IMAGES)].read_bytes()})
        elif i % 4 == 1:
            out.append({"text": f"caption {i} " * (1 + i % 7), "image": IMAGES[(i + 1) % len(IMAGES)].read_bytes()})
        else:
            out.append({"text": f"text number {i} " * (1 + i % 11), "instruction": "Find similar." if i % 3 else None})
    return out


def test_64_concurrent_clients_match_sequential(service: ServiceProcess) -> None:
    work = items()
    with Client(service.grpc_target) as c:
        sequential = [c.embed([it])[0] for it in work]
        docs = [f"document {i}" for i in range(8)]
        rerank_seq = c.rerank("query", docs).scores

    def one(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        with Client(service.grpc_target) as cc:
            vec = cc.embed([work[i]])[0]
            scores = cc.rerank("query", docs).scores if i % 8 == 0 else None
            return vec, scores

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    for seq, (vec, scores) in zip(sequential, results, strict=True):
        assert float(seq @ vec) >= 0.9999
        if scores is not None:
            np.testing.assert_allclose(scores, rerank_seq, atol=1e-5)
