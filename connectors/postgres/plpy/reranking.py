"""Reranking: ``qvl.rerank`` over arrays, and the reranker over rows' own columns (``qvl.search``
with rerank, ``qvl.rerank_rows``, ``qvl.hybrid_search``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import spi
from .errors import Failure, What
from .items import Item, Row, row_item
from .service import call
from .spi import plan
from .vectorizers import Quote, content_columns, key_sql, vectorizer_by_name

TOP_K_HINT = "Pass top_k => NULL to rank every document, or a number from 1 up."
RERANK_CHUNK = 500  # documents per /v1/rerank call (the service takes up to QVL_MAX_RERANK_DOCUMENTS)


def rerank_request(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
                   top_k: int | None) -> dict[str, Any] | None:
    """The POST /v1/rerank body, or None when there is nothing to rank (no query, no documents).

    top_k follows the service's rule, the same over HTTP and gRPC: NULL ranks every document, else it
    must be at least 1. Checked first, so a wrong top_k is an error whatever the data.
    """
    if top_k is not None and top_k < 1:
        raise Failure(f"qvl: top_k must be at least 1, got {top_k}", hint=TOP_K_HINT, sqlstate="22023")
    if query_item is None or not doc_items:
        return None
    payload: dict[str, Any] = {"query": query_item, "documents": [d or {} for d in doc_items]}
    if instruction is not None:
        payload["instruction"] = instruction
    if top_k is not None:
        payload["top_k"] = top_k
    return payload


def rerank_what(i: int | None) -> str:
    return "the query" if i is None else f"documents[{i + 1}]"


def rerank_sql(query_item: Item | None, doc_items: Sequence[Item | None], instruction: str | None,
               top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank: (1-based index, score) best first."""
    try:
        payload = rerank_request(query_item, doc_items, instruction, top_k)
        if payload is None:
            return []
        resp = call("rerank", payload, rerank_what)
    except Failure as f:
        f.raise_sql()
    return [(r["index"] + 1, r["score"]) for r in resp["ranking"]]


def rerank_items(query_item: Item, docs: Sequence[Item], top_k: int | None, what: What) -> list[tuple[int, float]]:
    """(index into docs, score) best first. Scores are per pair, so a long list goes in several calls
    and the rankings merge. Documents the service cannot read (a broken image) are left out."""
    ranked: list[tuple[int, float]] = []
    for start in range(0, len(docs), RERANK_CHUNK):
        payload: dict[str, Any] = {"query": query_item, "documents": list(docs[start:start + RERANK_CHUNK]),
                                   "allow_partial": True}
        if top_k is not None:
            payload["top_k"] = top_k
        resp = call("rerank", payload, lambda i, s=start: what(None if i is None else s + i))
        ranked += [(start + r["index"], r["score"]) for r in resp["ranking"]]
    ranked.sort(key=lambda r: -r[1])
    return ranked if top_k is None else ranked[:top_k]


def rerank_candidates(cfg: Row, query_item: Item, rows: Sequence[Row], top_k: int | None) -> list[tuple[int, float]]:
    """The reranker over each row's own text, images and video; (index into rows, score) best first."""
    docs = [row_item(cfg, r) or {} for r in rows]

    def what(i: int | None) -> str:
        return "the query" if i is None or i >= len(rows) else f"row {rows[i]['qvl_pk']} of {cfg['source_sql']}"

    try:
        return rerank_items(query_item, docs, top_k, what)
    except Failure as f:
        f.raise_sql()


# The key type, checked against the table's key, by its qualified name (the same type whatever the
# search_path), and its fields when it is composite.
KEY_TYPE_SQL = """
SELECT pg_catalog.format('%I.%I', n.nspname, t.typname) AS key_type,
       (SELECT pg_catalog.array_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS fields
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid = qvl._check_key_type($1, $2)"""


def rows_by_key_sql(cfg: Row, key_type: str, fields: Sequence[str] | None, content: bool,
                    quote: Quote) -> str:
    """The rows whose keys are in $1 (their text forms, of type ``key_type``), with each key's
    1-based position. Equality is the key type's own (unqualified: extension types keep theirs)."""
    rel = quote(cfg["source_name"])
    key = "qvl_k.txt::" + key_type
    parts = [f"({key}).{quote(f)}" for f in fields] if fields else [key]
    on = " AND ".join(f"{rel}.{quote(c)} = {part}" for c, part in zip(cfg["pk_columns"], parts, strict=True))
    cols = "".join(f", {rel}.{quote(c)}" for c in content_columns(cfg)) if content else ""
    return (f"SELECT qvl_k.pos AS qvl_pos, {key_sql(cfg, rel, quote)} AS qvl_pk{cols} "
            f"FROM pg_catalog.unnest($1::pg_catalog.text[]) WITH ORDINALITY AS qvl_k(txt, pos) "
            f"JOIN {cfg['source_sql']} ON {on}")


def rerank_rows_sql(name: str, query_item: Item | None, keys: Sequence[Any] | None, key_type: str,
                    top_k: int | None) -> list[tuple[int, float]]:
    """qvl.rerank_rows: (1-based position in keys, score) best first, for the keys whose rows the
    caller can read (each row once). Keys come as text, with the type they have in SQL."""
    cfg = vectorizer_by_name(name)
    if cfg.get("chunking") is not None:  # its rows' parts are pages, clips, passages: not one item per row
        spi.plpy.error(f"qvl: vectorizer {name!r} keeps chunks; rerank_rows scores one item per row",
                       sqlstate="0A000", hint=f"Use qvl.search_chunks({name!r}, ...), which reranks each part, or "
                                          f"qvl.search({name!r}, ...) for rows by their best part.")
    if keys and any(isinstance(k, list) for k in keys):
        spi.plpy.error("qvl: keys must be a one-dimensional array", sqlstate="2202E",
                       hint="Pass ARRAY(SELECT id FROM ...) or ARRAY[1, 2, 3].")
    if query_item is None or not keys or (top_k is not None and top_k < 1):
        return []
    found = spi.plpy.execute(plan("key_type", KEY_TYPE_SQL, ["text", "regtype"]), [name, key_type])[0]
    if found["fields"] is not None and len(found["fields"]) != len(cfg["pk_columns"]):
        spi.plpy.error(f"qvl: {found['key_type']} has {len(found['fields'])} fields, and the key of "
                       f"{cfg['source_sql']} has {len(cfg['pk_columns'])} columns", sqlstate="42804")
    sql = rows_by_key_sql(cfg, found["key_type"], found["fields"], True, spi.plpy.quote_ident)
    rows = spi.plpy.execute(plan(("rows_by_key", cfg["id"], found["key_type"]), sql, ["text[]"]), [list(keys)])
    first: dict[str, Row] = {}
    for r in rows:  # a key given twice is one row, at its first position
        if r["qvl_pk"] not in first or r["qvl_pos"] < first[r["qvl_pk"]]["qvl_pos"]:
            first[r["qvl_pk"]] = r
    unique = sorted(first.values(), key=lambda r: r["qvl_pos"])
    if not unique:
        return []
    return [(unique[i]["qvl_pos"], score) for i, score in rerank_candidates(cfg, query_item, unique, top_k)]
