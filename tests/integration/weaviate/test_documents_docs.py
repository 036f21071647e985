"""docs/documents.md's "In Weaviate" block runs on the real Weaviate and `qvl serve`:
``weaviate.connect_to_local`` reaches the test's Weaviate, ``http://qvl:8080`` and ``qvl:50051`` name
the test's service; manual.pdf, talk.mp4 and article.txt are made here."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import weaviate
from weaviate.classes.init import AdditionalConfig, Timeout

from qvl_devtools.launchers.weaviate import WeaviateServer, connect
from tests.document_factory import pdf_of, pictures, video_of
from tests.integration.weaviate.conftest import DOCS_TOKEN
from tests.support.doc_snippets import ROOT, run_by
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.weaviate, pytest.mark.service]

DOC = ROOT / "docs" / "documents.md"
NAMES = ["ManualPages", "TalkClips", "ArticlePassages"]
ARTICLE = "\n\n".join(f"Paragraph {n}. " + "Cranes lift loads; wind limits the work. " * 60 for n in range(4))


def test_the_weaviate_block_runs(module_weaviate: WeaviateServer, token_service: ServiceProcess, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    [block] = run_by(DOC, __file__)
    (tmp_path / "manual.pdf").write_bytes(pdf_of(pictures(3, seed=31)))
    (tmp_path / "talk.mp4").write_bytes(video_of(pictures(3, seed=32), fps=2, repeat=8))  # 12 s: 2 windows
    (tmp_path / "article.txt").write_text(ARTICLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QVL_TOKEN", DOCS_TOKEN)
    monkeypatch.setattr(weaviate, "connect_to_local", functools.partial(
        weaviate.connect_to_local, port=module_weaviate.http_port, grpc_port=module_weaviate.grpc_port,
        additional_config=AdditionalConfig(timeout=Timeout(init=30, query=300, insert=300))))
    admin = connect(module_weaviate)
    ns: dict[str, Any] = {}
    try:
        admin.collections.delete(NAMES)  # a previous run's
        block = block.replace("http://qvl:8080", token_service.http_url)
        block = block.replace('"qvl:50051"', repr(token_service.grpc_target))
        exec(compile(block, str(DOC), "exec", dont_inherit=True), ns)  # the docs' own code, as a user runs it
        assert ns["report"]["inserted"] == 1 and ns["report"]["parts"] == 3 and ns["report"]["failed"] == []
        assert sorted(h.properties["page"] for h in ns["page_hits"].objects) == [1, 2, 3]
        assert {h.properties["title"] for h in ns["page_hits"].objects} == {"Crane manual"}
        spans = sorted((h.properties["start_s"], h.properties["end_s"]) for h in ns["clip_hits"].objects)
        assert spans == [(0.0, 10.0), (10.0, 12.0)]
        hits = ns["passage_hits"].objects
        assert len(hits) >= 2 and all(h.properties["body"] == ARTICLE[h.properties["char_start"]:
                                                                      h.properties["char_end"]] for h in hits)
        assert all(isinstance(h.metadata.rerank_score, float) for h in hits)
        assert len(ns["scores"].scores) == 3 and not ns["scores"].errors
    finally:
        ns.get("qvl") and ns["qvl"].close()
        ns.get("client") and ns["client"].close()
        admin.collections.delete(NAMES)
        admin.close()
