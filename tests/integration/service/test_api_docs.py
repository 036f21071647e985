"""The Python blocks of docs/api.md (the "Python client" section, the SDKs pointed at qvl) and of
README.md run against the real service (the blocks marked ``runs:`` this file; tests/support/doc_snippets.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.service.dialect_support import PNG, PROFILES, TOKEN
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

DOC = ROOT / "docs" / "api.md"
README = ROOT / "README.md"
TIKTOKEN_DIR = os.environ.get("QVL_TIKTOKEN_CACHE_DIR", "/opt/qvl/tiktoken")


def run(blocks: list[str], doc: Path, ns: dict[str, Any]) -> None:
    for block in blocks:
        exec(compile(block, str(doc), "exec", dont_inherit=True), ns)  # the docs' own code, as a user runs it


def test_the_python_client_section_runs(service: ServiceProcess, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "harbour.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_SERVICE", service.grpc_target)
    monkeypatch.delenv("QVL_TOKEN", raising=False)
    blocks = run_by(DOC, __file__)
    assert len(blocks) == 3
    ns: dict[str, Any] = {}
    run(blocks[:2], DOC, ns)  # the "Python client" section
    assert ns["documents"].shape == (2, 64) and ns["nearest"] in (0, 1)
    assert 0 <= ns["best_index"] <= 2 and ns["best_score"] == pytest.approx(float(np.nanmax(ns["result"].scores)))
    assert isinstance(ns["rows"][0], np.ndarray) and isinstance(ns["rows"][2], np.ndarray)
    assert ns["rows"][1].startswith("item 1: INVALID_ARGUMENT: ")
    assert ns["typo"].startswith("item 1: unknown key 'txt'") and ns["refused"] == ("INVALID_ARGUMENT", 0)
    assert len(ns["async_rows"]) == 3


def test_the_sdks_pointed_at_qvl_run(dialect_service: ServiceProcess, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's SDK block, against a service behind a token with the profile it names."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "harbour.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_TOKEN", TOKEN)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", TIKTOKEN_DIR)  # LangChain's tiktoken, from the installed copy
    [block] = run_by(DOC, __file__)[2:]
    ns: dict[str, Any] = {}
    run([block.replace("http://qvl:8080", dialect_service.http_url)], DOC, ns)
    assert [len(d.embedding) for d in ns["products"].data] == [PROFILES["products"]["dimensions"]] * 2
    assert len(ns["queries"].embeddings.float_) == 2 and len(ns["pairs"].embeddings) == 1
    assert ns["pairs"].image_pixels > 0
    assert np.asarray(ns["documents"]).shape == (2, 64)


def test_the_readme_python_runs(service: ServiceProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dress.jpg").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    [block] = run_by(README, __file__)
    # The service's address, and a size the tiny test model has (64 dimensions; the 2B model 2,048).
    block = block.replace('"localhost:50051"', repr(service.grpc_target)).replace("dimensions=512", "dimensions=32")
    ns: dict[str, Any] = {}
    run([block], README, ns)
    assert ns["vectors"].shape == (2, 32)
    [(index, score)] = ns["ranked"]
    assert index in (0, 1) and isinstance(score, float)
    assert capsys.readouterr().out.split() == ["(64,)", "(64,)"]
