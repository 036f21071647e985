"""Every Python block of docs/frameworks.md runs, in order, against the real service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.service.dialect_support import PNG
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

DOC = ROOT / "docs" / "frameworks.md"


def test_the_framework_docs_run(service: ServiceProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "harbour.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_SERVICE", service.grpc_target)  # what the blocks' defaults read
    monkeypatch.delenv("QVL_TOKEN", raising=False)
    blocks = run_by(DOC, __file__)
    assert len(blocks) == 3
    ns: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), ns)  # the documentation's own code, in one namespace
    assert len(ns["candidates"]) == 4 and len(ns["best"]) == 2
    relevance = [d.metadata["relevance_score"] for d in ns["best"]]
    assert relevance == sorted(relevance, reverse=True) and ns["context"].count("\n") == 1
    assert len(ns["image_vectors"]) == len(ns["mixed"]) == len(ns["by_picture"]) == 1
    assert len(ns["reranked"]) == 2 and ns["reranked"][0].score >= ns["reranked"][1].score
