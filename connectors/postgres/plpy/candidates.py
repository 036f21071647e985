"""Candidates: the nearest rows that pass the caller's filter, by the vector index (an iterative
scan) or exactly when few rows pass; read as the caller."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from . import spi
from .filter_structured import structured_filter
from .filter_text import text_filter
from .filters import Filter, Structured, filter_plan, filtered_rows
from .items import Row
from .spi import plan
from .vectorizers import Quote, content_columns, key_sql

EXACT_ROWS = 2000  # at most this many rows pass the filter (planner's estimate): compare them all
MAX_SCAN_TUPLES = (20000, 5_000_000)  # bounds of hnsw.max_scan_tuples for an iterative scan
SCAN_SETTINGS_SQL = ("SELECT pg_catalog.current_setting('hnsw.ef_search', true) AS ef_search, "
                     "pg_catalog.current_setting('hnsw.iterative_scan', true) AS iterative_scan, "
                     "pg_catalog.current_setting('hnsw.max_scan_tuples', true) AS max_scan_tuples")
SET_CONFIG_SQL = "SELECT pg_catalog.set_config($1, $2, true)"
PGVECTOR_DEFAULTS = {"hnsw.ef_search": "40", "hnsw.iterative_scan": "off", "hnsw.max_scan_tuples": "20000"}


def check_k(k: int | None) -> int:
    """k; NULL is refused: qvl.search('t', q, NULL::int) means k => NULL, not key_type => NULL::int."""
    if k is None:
        spi.plpy.error("qvl: k is NULL", sqlstate="22004",
                       hint="k => 10 returns the 10 best rows. For keys in the table's own type name that argument: "
                            "key_type => NULL::int.")
    return k


def check_offset(offset: int | None) -> int:
    if offset is None:
        return 0
    if offset < 0:
        spi.plpy.error(f"qvl: offset must be 0 or more, got {offset}", hint="offset => 20 skips the 20 best rows.",
                       sqlstate="22023")
    return offset


def checked_filter(cfg: Row, given: str | None) -> Filter | None:
    """The caller's filter, checked: SQL text or a Structured one; None when there is none."""
    if given is None:
        return None
    if isinstance(given, Structured):
        return structured_filter(cfg, given)
    if not given.strip():
        return None
    return text_filter(cfg, given)


def vector_operator(cfg: Row) -> tuple[str, str]:
    """(query parameter type, distance operator): cosine, or Hamming for bit; qualified names."""
    vs, dims = cfg["vector_schema"], cfg["dimensions"]
    if cfg["storage"] == "bit":
        return f"pg_catalog.bit({dims})", f"OPERATOR({vs}.<~>)"
    return f"{vs}.{cfg['storage']}({dims})", f"OPERATOR({vs}.<=>)"


def filter_sql(flt: Filter | None, base: int) -> str:
    """`` AND (filter)``, the filter on lines of its own (its probe showed it cannot close the
    parentheses), its parameters after the query's ``base`` ones."""
    return "" if flt is None else f" AND (\n{flt.where(base)}\n)"


def where_sql(cfg: Row, flt: Filter | None, quote: Quote, base: int = 0) -> str:
    """The table's rows with a vector (and that pass the filter)."""
    dest = f"{quote(cfg['source_name'])}.{quote(cfg['destination'])}"
    return f"{dest} IS NOT NULL" + filter_sql(flt, base)


def candidate_sql(cfg: Row, flt: Filter | None, content: bool, exact: bool, quote: Quote) -> tuple[str, list[str]]:
    """The nearest rows ($1 = query vector, $2 = how many): qvl_pk, qvl_distance (and the content
    columns the reranker scores). The table keeps its own name (no alias), so a filter may qualify
    its columns with it. ``exact`` compares every row that passes the filter (OFFSET 0 keeps them a
    subquery whose order the vector index cannot serve; the filter may still use other indexes)."""
    qtype, op = vector_operator(cfg)
    rel = quote(cfg["source_name"])
    dest = f"{rel}.{quote(cfg['destination'])}"
    cols = [quote(c) for c in content_columns(cfg)] if content else []
    source, where, key = cfg["source_sql"], where_sql(cfg, flt, quote, 2), key_sql(cfg, rel, quote)
    if exact:
        inner = "".join(f", {rel}.{c}" for c in cols)
        outer = "".join(f", qvl_exact.{c}" for c in cols)
        sql = (f"SELECT qvl_exact.qvl_pk, (qvl_exact.qvl_vector {op} $1)::pg_catalog.float4 AS qvl_distance{outer} "
               f"FROM (SELECT {key} AS qvl_pk, {dest} AS qvl_vector{inner} FROM {source} WHERE {where} OFFSET 0) "
               f"AS qvl_exact ORDER BY qvl_exact.qvl_vector {op} $1 LIMIT $2")
    else:
        picked = "".join(f", {rel}.{c}" for c in cols)
        sql = (f"SELECT {key} AS qvl_pk, ({dest} {op} $1)::pg_catalog.float4 AS qvl_distance{picked} "
               f"FROM {source} WHERE {where} ORDER BY {dest} {op} $1 LIMIT $2")
    return sql, [qtype, "int8"]


def estimated_rows(cfg: Row, flt: Filter | None) -> float:
    """The planner's estimate of the rows with a vector that pass the filter (EXPLAIN: nothing runs)."""
    sql = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {cfg['source_sql']} WHERE {where_sql(cfg, flt, spi.plpy.quote_ident)}"
    p = filter_plan(cfg, ("estimate", cfg["id"]), sql, [], flt)
    doc = filtered_rows(cfg, p, flt.args if flt else [], flt)[0]["QUERY PLAN"]
    return float((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]["Plan Rows"])


def scan_settings(limit: int, passing: float, total: float) -> dict[str, str]:
    """pgvector settings for an index scan that should find ``limit`` rows among ``passing`` of
    ``total``: HNSW returns at most ef_search rows per pass, and an iterative scan (pgvector 0.8)
    goes on past rows the filter drops, up to max_scan_tuples: enough tuples to meet 4 x ``limit``
    passing rows at the estimated share, within MAX_SCAN_TUPLES."""
    fraction = min(1.0, passing / total) if total > 0 else 1.0
    scan = int(min(MAX_SCAN_TUPLES[1], max(MAX_SCAN_TUPLES[0], 4 * limit / max(fraction, 1e-9))))
    return {"hnsw.ef_search": str(ef_search(None, limit)), "hnsw.iterative_scan": "relaxed_order",
            "hnsw.max_scan_tuples": str(scan)}


def with_settings(wanted: Mapping[str, str], run: Callable[[], Any]) -> Any:
    """``run()`` under these settings (transaction-local), then back to what they were. A setting
    this pgvector lacks (iterative scans before 0.8) is left out."""
    old = spi.plpy.execute(plan("scan_settings", SCAN_SETTINGS_SQL))[0]
    setter = plan("set_config", SET_CONFIG_SQL, ["text", "text"])
    changed: dict[str, str | None] = {}
    for name, value in wanted.items():
        before = old[name.split(".", 1)[1]]
        if before is None and name != "hnsw.ef_search":
            continue
        spi.plpy.execute(setter, [name, value])
        changed[name] = before
    try:
        return run()
    finally:
        for name, before in changed.items():
            spi.plpy.execute(setter, [name, before or PGVECTOR_DEFAULTS[name]])


def ef_search(old: str | None, candidates: int) -> int:
    """hnsw.ef_search for a query of ``candidates`` rows (HNSW returns at most ef_search rows)."""
    return min(1000, max(40, candidates, int(old) if old and old.isdigit() else 0))


def candidate_rows(cfg: Row, qvec: str, flt: Filter | None, limit: int, content: bool) -> list[Row]:
    """The ``limit`` nearest rows that pass the filter, nearest first, read as the caller (their
    privileges and row-level security apply: a policy is a filter too).

    When few rows pass (the planner's estimate, at most max(EXACT_ROWS, 10 x limit)) every one is
    compared: exact. Otherwise the vector index with an iterative scan, which goes on past the rows
    the filter drops; its relaxed order is sorted here. An index scan that comes back short (the
    estimate was wrong, or the scan gave up at max_scan_tuples) is redone exactly, so a filter never
    loses rows that pass it."""
    quote = spi.plpy.quote_ident
    passing = estimated_rows(cfg, flt)
    exact = passing <= max(EXACT_ROWS, 10 * limit)
    args = [qvec, limit, *(flt.args if flt else [])]
    rows: list[Row] = []
    if not exact:
        sql, argtypes = candidate_sql(cfg, flt, content, False, quote)
        p = filter_plan(cfg, ("ann", cfg["id"], cfg["dimensions"], content), sql, argtypes, flt)
        total = estimated_rows(cfg, None) if flt is not None else passing
        rows = with_settings(scan_settings(limit, passing, total), lambda: filtered_rows(cfg, p, args, flt))
        rows.sort(key=lambda r: r["qvl_distance"])
    if exact or len(rows) < limit:
        sql, argtypes = candidate_sql(cfg, flt, content, True, quote)
        p = filter_plan(cfg, ("exact", cfg["id"], cfg["dimensions"], content), sql, argtypes, flt)
        rows = filtered_rows(cfg, p, args, flt)
    return rows
