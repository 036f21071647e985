"""The Python blocks of docs/api.md's "Python client" section run, in order, against the real service."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.service.dialect_support import PNG
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

DOC = Path(__file__).parents[3] / "docs" / "api.md"


def test_the_python_client_section_runs(service: ServiceProcess, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "harbour.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_SERVICE", service.grpc_target)
    monkeypatch.delenv("QVL_TOKEN", raising=False)
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Python client"):text.index("## Dialects")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    ns: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), ns)  # the documentation's own code, in one namespace
    assert ns["documents"].shape == (2, 64) and ns["nearest"] in (0, 1)
    assert 0 <= ns["best_index"] <= 2 and ns["best_score"] == pytest.approx(float(np.nanmax(ns["result"].scores)))
    assert isinstance(ns["rows"][0], np.ndarray) and isinstance(ns["rows"][2], np.ndarray)
    assert ns["rows"][1].startswith("item 1: INVALID_ARGUMENT: ")
    assert ns["typo"].startswith("item 1: unknown key 'txt'") and ns["refused"] == ("INVALID_ARGUMENT", 0)
    assert len(ns["async_rows"]) == 3
