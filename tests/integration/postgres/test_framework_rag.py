"""docs/frameworks.md, "LangChain: RAG over Postgres": the flow langchain-postgres' PGVectorStore would
run (which cannot be installed beside qvl's pgvector pin), over SQLAlchemy and pgvector, against a real
Postgres and the real service: QvlEmbeddings stores and queries, QvlReranker orders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.postgres.conftest import new_database
from tests.support.doc_snippets import ROOT, run_by
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

DOC = ROOT / "docs" / "frameworks.md"


def test_the_rag_flow_of_the_docs_runs(pg_server: PostgresServer, service: ServiceProcess, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    dsn = new_database(pg_server, request.node.name)
    dbname = dict(part.split("=", 1) for part in dsn.split())["dbname"]
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{pg_server.port}/{dbname}")
    monkeypatch.setenv("QVL_SERVICE", service.grpc_target)  # what QvlEmbeddings and QvlReranker read
    monkeypatch.delenv("QVL_TOKEN", raising=False)
    blocks = run_by(DOC, __file__)
    assert len(blocks) == 1
    ns: dict[str, Any] = {"__name__": "frameworks_rag"}
    # The documentation's own code, as a reader runs it: without this file's `from __future__ import
    # annotations` (SQLAlchemy would look for the strings in a module that is not there).
    exec(compile(blocks[0], str(DOC), "exec", dont_inherit=True), ns)
    try:
        assert len(ns["nearest"]) == 3 and len(ns["best"]) == 2
        relevance = [d.metadata["relevance_score"] for d in ns["best"]]
        assert relevance == sorted(relevance, reverse=True) and ns["context"].count("\n") == 1
        assert {d.metadata["source"] for d in ns["best"]} <= {"faq", "repairs", "blog"}
        with ns["engine"].connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*), min(vector_dims(embedding)) FROM passages").one()
        assert tuple(stored) == (3, 64)
    finally:
        ns["engine"].dispose()
