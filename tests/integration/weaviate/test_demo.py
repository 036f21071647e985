"""The Weaviate part of `qvl demo`, against the shared service (it starts its own Weaviate)."""

from __future__ import annotations

import re

import pytest

from qvl_devtools.demo.weaviate_demo import run_weaviate_demo, sample_pictures
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


def test_weaviate_demo_prints_and_returns_rows(qvl_service: ServiceProcess) -> None:
    lines: list[str] = []
    rows = run_weaviate_demo(qvl_service.http_url, qvl_service.grpc_target, k=3, out=lines.append)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("nearText") == 6 and kinds.count("nearImage") == 3 and kinds.count("joint") == 3
    assert all(isinstance(r["rerank_score"], float) for r in rows)
    names = {p["name"] for p in sample_pictures()}
    assert {r["name"] for r in rows if r["kind"] not in ("page", "clip")} <= names
    for kind in ("nearText", "nearImage", "joint"):
        part = [r["rerank_score"] for r in rows if r["kind"] == kind][:3]
        assert part == sorted(part, reverse=True)
    assert any("rerank(property: \"image\"" in line for line in lines)
    # Issue 21: a page of the demo PDF and a window of the demo video, each with its locator. On the
    # tiny model the stripes picture is nearest page 2 and the grid scene nearest seconds 8-12 (by 0.07+).
    pages = [r for r in rows if r["kind"] == "page"]
    clips = [r for r in rows if r["kind"] == "clip"]
    assert len(pages) == 3 and pages[0]["locator"] == {"page": 2}
    assert sorted(r["locator"]["page"] for r in pages) == [1, 2, 3]
    assert clips[0]["locator"] == {"start_s": 8.0, "end_s": 12.0} and len(clips) == 3
    assert all(isinstance(r["rerank_score"], float) for r in pages + clips)
    assert any("page 2" in line for line in lines) and any("8.0-12.0 s" in line for line in lines)
    # a header, a title per table, a proof per nearText, a header for the parts
    assert len(lines) == len(rows) + 1 + 6 + 2 + 1
    proofs = [line for line in lines if "1 - cos(qvl query embedding" in line]
    assert len(proofs) == 2
    for line in proofs:  # Weaviate's distance equals the one from qvl's query embedding
        got, want, other = re.findall(r"(\d+\.\d{6})", line)
        assert abs(float(got) - float(want)) <= 1e-4 and abs(float(got) - float(other)) > 1e-4
