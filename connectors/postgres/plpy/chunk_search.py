"""Search over a chunked vectorizer's chunks (issue 21): ``qvl.search_chunks`` (the nearest chunks of
the rows that pass the caller's filter, then the reranker over each candidate's part: the page, the
clip, the passage) and ``qvl.search`` on such a vectorizer (rows ranked by their best part).

As ``search``: run as the caller (their privileges and row-level security on the table and the chunk
table), read-only, the filter checked and run as ``filters`` says."""

from __future__ import annotations

import json
from typing import Any

from . import spi
from .candidates import check_k, checked_filter, filter_sql, scan_settings, vector_operator, with_settings
from .errors import Failure
from .filters import Filter, filter_plan, filtered_rows
from .items import Item, Row, b64, make_item
from .query_vectors import query_vector
from .reranking import rerank_items
from .vectorizers import Quote, key_sql, vectorizer_by_name

EXACT_CHUNKS = 2000  # at most this many chunks of passing rows (the planner's estimate): compare them all


def is_chunked(cfg: Row) -> bool:
    return cfg.get("chunking") is not None


def chunking_kind(cfg: Row) -> str:
    return str(json.loads(cfg["chunking"])["type"])


def document_columns(cfg: Row) -> list[str]:
    return list(json.loads(cfg["document_columns"] or "[]"))


def part_columns(cfg: Row) -> list[str]:
    """The row's columns a chunk's part is made of (the reranker's document)."""
    return (list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])
            + document_columns(cfg))


def chunks_joined(cfg: Row, quote: Quote) -> str:
    """The chunk table, its columns renamed (qvl_*) in a subquery PostgreSQL flattens (its vector index
    still serves the order), joined to their rows: a filter's column names are the table's alone."""
    rel = quote(cfg["source_name"])
    keys = [quote(c) for c in cfg["pk_columns"]]
    renamed = ", ".join(f"c.{k} AS qvl_k{i}" for i, k in enumerate(keys))
    on = " AND ".join(f"{rel}.{k} = qvl_chunk.qvl_k{i}" for i, k in enumerate(keys))
    return (f"(SELECT {renamed}, c.chunk_seq AS qvl_seq, c.locator AS qvl_locator, c.embedding AS qvl_embedding "
            f"FROM {cfg['chunk_sql']} c) AS qvl_chunk JOIN {cfg['source_sql']} ON {on}")


def chunk_sql(cfg: Row, flt: Filter | None, exact: bool, quote: Quote) -> tuple[str, list[str]]:
    """The nearest chunks ($1 = query vector, $2 = how many) of the rows that pass the filter: qvl_pk,
    qvl_seq, qvl_locator, qvl_distance and the row's part columns. The table keeps its own name, as in
    ``candidates``, so a filter may qualify its columns with it."""
    qtype, op = vector_operator(cfg)
    rel = quote(cfg["source_name"])
    cols = "".join(f", {rel}.{quote(c)}" for c in part_columns(cfg))
    select = (f"SELECT {key_sql(cfg, rel, quote)} AS qvl_pk, qvl_chunk.qvl_seq, "
              f"qvl_chunk.qvl_locator::pg_catalog.text AS qvl_locator, qvl_chunk.qvl_embedding AS qvl_vector{cols} "
              f"FROM {chunks_joined(cfg, quote)} WHERE true{filter_sql(flt, 2)}")
    outer = "".join(f", qvl_c.{quote(c)}" for c in part_columns(cfg))
    if exact:
        sql = (f"SELECT qvl_c.qvl_pk, qvl_c.qvl_seq, qvl_c.qvl_locator, "
               f"(qvl_c.qvl_vector {op} $1)::pg_catalog.float4 AS qvl_distance{outer} "
               f"FROM ({select} OFFSET 0) AS qvl_c ORDER BY qvl_c.qvl_vector {op} $1, qvl_c.qvl_pk, qvl_c.qvl_seq "
               f"LIMIT $2")
    else:
        sql = (f"SELECT qvl_c.qvl_pk, qvl_c.qvl_seq, qvl_c.qvl_locator, "
               f"(qvl_c.qvl_vector {op} $1)::pg_catalog.float4 AS qvl_distance{outer} "
               f"FROM ({select} ORDER BY qvl_chunk.qvl_embedding {op} $1 LIMIT $2) AS qvl_c")
    return sql, [qtype, "int8"]


def estimated_chunks(cfg: Row, flt: Filter | None) -> float:
    """The planner's estimate of the chunks whose rows pass the filter (EXPLAIN: nothing runs)."""
    joined = chunks_joined(cfg, spi.plpy.quote_ident)
    sql = f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {joined} WHERE true{filter_sql(flt, 0)}"
    p = filter_plan(cfg, ("chunk_estimate", cfg["id"]), sql, [], flt)
    doc = filtered_rows(cfg, p, flt.args if flt else [], flt)[0]["QUERY PLAN"]
    return float((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]["Plan Rows"])


def chunk_candidates(cfg: Row, qvec: str, flt: Filter | None, limit: int) -> list[Row]:
    """The ``limit`` nearest chunks of rows that pass the filter, nearest first (as
    ``candidates.candidate_rows``: exact when few pass, else an iterative index scan, redone exactly
    when it comes back short)."""
    quote = spi.plpy.quote_ident
    passing = estimated_chunks(cfg, flt)
    exact = passing <= max(EXACT_CHUNKS, 10 * limit)
    args = [qvec, limit, *(flt.args if flt else [])]
    rows: list[Row] = []
    if not exact:
        sql, argtypes = chunk_sql(cfg, flt, False, quote)
        p = filter_plan(cfg, ("chunk_ann", cfg["id"], cfg["dimensions"]), sql, argtypes, flt)
        total = estimated_chunks(cfg, None) if flt is not None else passing
        rows = with_settings(scan_settings(limit, passing, total), lambda: filtered_rows(cfg, p, args, flt))
        rows.sort(key=lambda r: (r["qvl_distance"], r["qvl_pk"], r["qvl_seq"]))
    if exact or len(rows) < limit:
        sql, argtypes = chunk_sql(cfg, flt, True, quote)
        p = filter_plan(cfg, ("chunk_exact", cfg["id"], cfg["dimensions"]), sql, argtypes, flt)
        rows = filtered_rows(cfg, p, args, flt)
    return rows


def part_item(cfg: Row, row: Row) -> Item:
    """A chunk's part as the service's JSON item, the one the worker embedded for it: the page of the
    row's document, the span of its video, or its last text's passage (the row's other input columns
    with it, as the chunk was embedded: docs/documents.md)."""
    loc: dict[str, Any] = json.loads(row["qvl_locator"])
    kind = chunking_kind(cfg)
    texts = [row[c] for c in cfg["text_columns"]]
    if kind == "text" and texts:
        whole = texts[-1]
        texts[-1] = None if whole is None else str(whole)[int(loc["char_start"]):int(loc["char_end"])]
    item = make_item(texts, [row[c] for c in cfg["image_columns"]],
                     [row[c] for c in cfg["video_columns"]]) or {}
    if kind == "video":
        item.update({k: loc[k] for k in ("start_s", "end_s") if k in loc})
    for col in document_columns(cfg):
        value = row[col]
        if isinstance(value, bytes | bytearray | memoryview):
            item["document"] = b64(value)
        elif value is not None:
            item["document_uri"] = str(value)
        item["page"] = int(loc["page"])
    return item


def ranked_chunks(cfg: Row, query_item: Item | None, k: int | None, candidates: int | None, rerank: bool,
                  flt: Filter | None) -> list[tuple[Row, float | None]]:
    """(chunk row, score) best first: the nearest ``candidates`` chunks, reranked by their parts (or by
    distance, score None). Every candidate comes back (the caller cuts)."""
    k = check_k(k)
    if query_item is None or k < 1:
        return []
    limit = max(candidates or 0, k)
    try:
        qvec = query_vector(cfg, query_item, cfg["storage"], lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    rows = chunk_candidates(cfg, qvec, flt, limit)
    if not rerank or not rows:
        return [(r, None) for r in rows]

    def what(i: int | None) -> str:
        if i is None or i >= len(rows):
            return "the query"
        return f"row {rows[i]['qvl_pk']} of {cfg['source_sql']}, chunk {rows[i]['qvl_seq']}"

    try:
        ranked = rerank_items(query_item, [part_item(cfg, r) for r in rows], None, what)
    except Failure as f:
        f.raise_sql()
    return [(rows[i], score) for i, score in ranked]


def chunked(cfg: Row, name: str) -> Row:
    if not is_chunked(cfg):
        spi.plpy.error(f"qvl: vectorizer {name!r} keeps one vector per row, not chunks", sqlstate="22023",
                       hint=f"Search it with qvl.search({name!r}, ...).")
    if cfg["chunk_sql"] is None:
        spi.plpy.error(f"qvl: the chunk table of vectorizer {name!r} is gone", sqlstate="42P01",
                       hint=f"Drop the vectorizer (SELECT qvl.drop_vectorizer({name!r})) and create it again.")
    return cfg


def search_chunks_rows(name: str, query_item: Item | None, k: int | None, candidates: int | None, rerank: bool,
                       filter: str | None) -> list[tuple[str, int, str, float, float | None]]:
    """qvl.search_chunks: (pk, chunk_seq, locator, distance, score), best first, k of them."""
    cfg = chunked(vectorizer_by_name(name), name)
    flt = checked_filter(cfg, filter)
    best = ranked_chunks(cfg, query_item, k, candidates, rerank, flt)
    return [(r["qvl_pk"], r["qvl_seq"], r["qvl_locator"], r["qvl_distance"], score) for r, score in best][:k or 0]


def search_best_parts(cfg: Row, query_item: Item | None, k: int, candidates: int | None, rerank: bool,
                      flt: Filter | None, skip: int) -> list[tuple[str, float, float | None]]:
    """qvl.search on a chunked vectorizer: rows ranked by their best part (the best score; without
    rerank the nearest chunk), each with its nearest chunk's distance; rows skip+1 .. skip+k."""
    wanted = skip + k
    best = ranked_chunks(cfg, query_item, wanted, max(candidates or 0, wanted), rerank, flt)
    rows: dict[str, list[Any]] = {}  # pk -> [distance, score], in rank order
    for r, score in best:
        entry = rows.setdefault(r["qvl_pk"], [r["qvl_distance"], score])
        entry[0] = min(entry[0], r["qvl_distance"])
    return [(pk, d, s) for pk, (d, s) in rows.items()][skip:wanted]
