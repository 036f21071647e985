"""The Postgres part of `qvl demo` runs end to end against the real service."""

from __future__ import annotations

import pytest

from qvl_devtools.demo.postgres_demo import run_postgres_demo, sample_media
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


def test_postgres_demo(service: ServiceProcess) -> None:
    lines: list[str] = []
    rows = run_postgres_demo(service.http_url, service.grpc_target, out=lines.append)
    media = sample_media()
    kinds = [r["kind"] for r in rows]
    assert kinds.count("search") == 6 and kinds.count("image-search") == 3 and kinds.count("rerank") == len(media)
    assert all(r["rerank_score"] is not None for r in rows)
    assert f"  worker: {len(media)}/{len(media)} rows embedded" in lines
    assert any("video" in r["name"] for r in rows)  # videos (frame arrays) are embedded and found too
