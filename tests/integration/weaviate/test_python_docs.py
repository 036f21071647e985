"""docs/weaviate.md's Python blocks ("Collections in Python", the queries, joint embeddings) run in
order on the real Weaviate and `qvl serve`: ``weaviate.connect_to_local`` reaches the test's
Weaviate (its ports), ``http://qvl:8080`` and ``qvl:50051`` name the test's service."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
import weaviate
from weaviate.classes.init import AdditionalConfig, Timeout

from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from tests.integration.weaviate.conftest import DOCS_TOKEN
from tests.media_factory import video_bytes
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

DOC = ROOT / "docs" / "weaviate.md"


def test_the_collections_in_python_run(module_weaviate: WeaviateServer, token_service: ServiceProcess,
                                       images: dict[str, bytes], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = run_by(DOC, __file__)
    assert len(blocks) == 3
    names = [n for block in blocks for n in re.findall(r'create_collection\(client, "(\w+)"', block)]
    assert len(names) == 9
    (tmp_path / "photo.jpg").write_bytes(images["wide_640x160.jpg"])
    (tmp_path / "clip.mp4").write_bytes(video_bytes(frames=4, fps=2, size=(96, 64)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_TOKEN", DOCS_TOKEN)
    # connect_to_local's defaults are Weaviate's usual ports; this one listens elsewhere. Timeouts
    # for module calls on a busy CPU.
    monkeypatch.setattr(weaviate, "connect_to_local", functools.partial(
        weaviate.connect_to_local, port=module_weaviate.http_port, grpc_port=module_weaviate.grpc_port,
        additional_config=AdditionalConfig(timeout=Timeout(init=30, query=300, insert=300))))
    admin = connect(module_weaviate)
    try:
        admin.collections.delete(names)  # a previous run's
        ns: dict[str, Any] = {}
        for block in blocks:
            block = block.replace("http://qvl:8080", token_service.http_url)
            block = block.replace('"qvl:50051"', repr(token_service.grpc_target))
            exec(compile(block, str(DOC), "exec", dont_inherit=True), ns)  # the docs' own code, as a user runs it
        assert sorted(c for c in admin.collections.list_all() if c in names) == sorted(names)
        assert len(admin.collections.get("Photos")) == 1
        assert ns["report"]["inserted"] == 2 and ns["report"]["failed"] == []
        assert len(ns["hits"]) == 2 and all(h["properties"]["sku"] in ("sku-1", "sku-2") for h in ns["hits"])
    finally:
        admin.collections.delete(names)
        admin.close()
