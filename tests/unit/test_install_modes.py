"""The managed install's SQL (issue 22): every PL/Python function of sql/ becomes a refusing PL/pgSQL
function of the same signature, nothing else changes but the event triggers, which go."""

from __future__ import annotations

import re

from connectors.postgres.install_modes import MANAGED, managed_sql, manifest
from connectors.postgres.installer import _bundled, sql_dir

FUNCTION = re.compile(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+([\w.]+)\s*\(", re.I)


def test_every_plpython_function_becomes_a_stub_and_nothing_else_changes() -> None:
    spec = manifest(sql_dir())
    for path in sorted((sql_dir() / "idempotent").glob("*.sql")) + sorted((sql_dir() / "incremental").glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        out = managed_sql(text, spec)
        assert not re.search(r"LANGUAGE\s+plpython3u", re.sub(r"--[^\n]*", "", out), re.I), path.name
        assert "$py$" not in out, path.name
        assert FUNCTION.findall(out) == FUNCTION.findall(text), path.name  # same functions, same order
        assert not re.search(r"CREATE\s+EVENT\s+TRIGGER", out, re.I), path.name
        stubs = out.count("$qvl_managed$") // 2
        assert stubs == len(re.findall(r"LANGUAGE\s+plpython3u", re.sub(r"--[^\n]*", "", text), re.I)), path.name


def test_the_stubs_name_their_function_and_its_hint() -> None:
    text = (sql_dir() / "idempotent" / "004_search.sql").read_text(encoding="utf-8")
    out = managed_sql(text, manifest(sql_dir()))
    stub = out[out.index("FUNCTION qvl.search(vectorizer text, query text, k int"):]
    stub = stub[:stub.index("$qvl_managed$;")]
    assert "qvl: qvl.search needs PL/Python" in stub
    assert "connectors.postgres.search" in stub
    assert "LANGUAGE plpgsql VOLATILE SET transaction_read_only = on" in stub
    # The plain functions between them are untouched.
    assert text[text.index("CREATE OR REPLACE FUNCTION qvl._check_key_type"):text.index("-- Rerank given rows")] in out


def test_the_managed_bundle_has_no_plpython() -> None:
    for f, text in _bundled(sql_dir(), mode=MANAGED):
        assert not re.search(r"LANGUAGE\s+plpython3u", re.sub(r"--[^\n]*", "", text), re.I), f.name
