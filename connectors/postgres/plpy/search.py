"""``qvl.search`` (vector search, then the reranker) and ``qvl.hybrid_search`` (vector and full-text
lists fused by reciprocal rank, then the reranker)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from . import spi
from .candidates import candidate_rows, check_k, check_offset, checked_filter, filter_sql
from .chunk_search import is_chunked, search_best_parts
from .errors import Failure
from .filters import Filter, filter_plan, filtered_rows
from .items import Item, Row
from .query_vectors import query_vector
from .reranking import rerank_candidates
from .spi import plan
from .vectorizers import Quote, content_columns, key_sql, vectorizer_by_name

RRF_K = 60  # reciprocal rank fusion: a row's share of a list is weight / (RRF_K + its rank)
FULLTEXT_SQL = ("SELECT v.fulltext, qvl._fulltext_document(v.id) AS document FROM qvl.vectorizer v "
                "WHERE v.id = $1")
TSQUERY_SQL = ("SELECT q::pg_catalog.text AS q, pg_catalog.numnode(q) AS nodes "
               "FROM pg_catalog.websearch_to_tsquery($1::pg_catalog.regconfig, $2) AS q")


def search_rows(name: str, query_item: Item | None, k: int | None, candidates: int | None, rerank: bool,
                filter: str | None = None, offset: int | None = 0) -> list[tuple[str, float, float | None]]:
    """ANN over the vectorizer's column (with the query instruction) among the rows that pass the
    filter, then the reranker over the candidates' own columns; rows offset+1 .. offset+k of that
    order. Runs as the caller: their privileges, row-level security and search_path apply."""
    cfg = vectorizer_by_name(name)
    k, skip = check_k(k), check_offset(offset)
    flt = checked_filter(cfg, filter)
    if query_item is None or k < 1:
        return []
    if is_chunked(cfg):  # rows ranked by their best part (a page, a clip, a passage)
        return search_best_parts(cfg, query_item, k, candidates, bool(rerank), flt, skip)
    wanted = skip + k
    limit = max(candidates or 0, wanted)
    try:
        qvec = query_vector(cfg, query_item, cfg["storage"], lambda i: "the query")
    except Failure as f:
        f.raise_sql()
    rows = candidate_rows(cfg, qvec, flt, limit, bool(rerank))
    if not rerank or not rows:
        return [(r["qvl_pk"], r["qvl_distance"], None) for r in rows][skip:wanted]
    ranked = rerank_candidates(cfg, query_item, rows, wanted)
    return [(rows[i]["qvl_pk"], rows[i]["qvl_distance"], score) for i, score in ranked][skip:wanted]


def check_weights(weights: Sequence[float | None] | None) -> tuple[float, float]:
    """(vector weight, full-text weight)."""
    if weights is None:
        return 1.0, 1.0
    values = list(weights)
    if len(values) != 2 or any(w is None or not math.isfinite(w) or w < 0 for w in values) or not any(values):
        spi.plpy.error(f"qvl: weights must be two numbers >= 0, not both 0 (vector, full text), got {values}",
                       hint="weights => ARRAY[1, 1] weighs both alike; ARRAY[1, 0] is vector search alone.",
                       sqlstate="22023")
    return float(values[0]), float(values[1])


def fulltext_sql(cfg: Row, document: str, flt: Filter | None, content: bool, quote: Quote) -> str:
    """The rows whose document matches the tsquery $1, best ts_rank_cd first, at most $2. The
    document is the expression of the vectorizer's GIN index, so the index answers the match."""
    rel = quote(cfg["source_name"])
    cols = "".join(f", {rel}.{quote(c)}" for c in content_columns(cfg)) if content else ""
    order = ", ".join(f"{rel}.{quote(c)}" for c in cfg["pk_columns"])
    where = f"{document} OPERATOR(pg_catalog.@@) $1" + filter_sql(flt, 2)
    return (f"SELECT {key_sql(cfg, rel, quote)} AS qvl_pk, pg_catalog.ts_rank_cd({document}, $1) AS qvl_rank{cols} "
            f"FROM {cfg['source_sql']} WHERE {where} ORDER BY qvl_rank DESC, {order} LIMIT $2")


def fused(lists: Sequence[tuple[float, Sequence[Row]]]) -> list[tuple[Row, float, list[int | None]]]:
    """Reciprocal rank fusion: (row, weighted sum of 1 / (RRF_K + rank), rank in each list) best first."""
    by_pk: dict[str, tuple[Row, list[float], list[int | None]]] = {}
    for n, (weight, rows) in enumerate(lists):
        for rank, row in enumerate(rows, 1):
            entry = by_pk.setdefault(row["qvl_pk"], (row, [0.0], [None] * len(lists)))
            entry[1][0] += weight / (RRF_K + rank)
            entry[2][n] = rank
    out = [(row, total[0], ranks) for row, total, ranks in by_pk.values()]
    out.sort(key=lambda e: (-e[1], min(r for r in e[2] if r is not None)))
    return out


def hybrid_rows(name: str, query: str | None, k: int | None, filter: str | None,
                weights: Sequence[float | None] | None, rerank: bool, candidates: int | None,
                offset: int | None) -> list[tuple[str, float | None, float, int | None, int | None]]:
    """qvl.hybrid_search: the vector list and the full-text list (each ``candidates`` long, both
    under the filter), fused by reciprocal rank, then the reranker over the fused best; rows
    offset+1 .. offset+k of that order: (pk, score, rrf, vector_rank, text_rank)."""
    cfg = vectorizer_by_name(name)
    if is_chunked(cfg):
        spi.plpy.error(f"qvl: vectorizer {name!r} keeps chunks; hybrid search reads one vector per row",
                       sqlstate="0A000", hint=f"Use qvl.search({name!r}, ...) or qvl.search_chunks({name!r}, ...).")
    k, skip = check_k(k), check_offset(offset)
    w_vector, w_text = check_weights(weights)
    flt = checked_filter(cfg, filter)
    ft = spi.plpy.execute(plan("fulltext", FULLTEXT_SQL, ["int4"]), [cfg["id"]])[0]
    if ft["fulltext"] is None:
        spi.plpy.error(f"qvl: vectorizer {name!r} has no full-text index", sqlstate="55000",
                       hint=f"Give it one: SELECT qvl.set_fulltext({name!r}, 'english'); (or create the vectorizer "
                            f"with fulltext => 'english').")
    if query is None or k < 1:
        return []
    wanted = skip + k
    limit = max(candidates or 0, wanted)
    lists: list[tuple[float, list[Row]]] = []
    if w_vector > 0:
        try:
            qvec = query_vector(cfg, {"text": [query]}, cfg["storage"], lambda i: "the query")
        except Failure as f:
            f.raise_sql()
        lists.append((w_vector, candidate_rows(cfg, qvec, flt, limit, bool(rerank))))
    else:
        lists.append((0.0, []))
    matches: list[Row] = []
    if w_text > 0:
        tsq = spi.plpy.execute(plan("tsquery", TSQUERY_SQL, ["text", "text"]), [ft["fulltext"], query])[0]
        if tsq["nodes"]:  # a query of stop words only matches nothing
            sql = fulltext_sql(cfg, ft["document"], flt, bool(rerank), spi.plpy.quote_ident)
            key = ("fulltext", cfg["id"], ft["document"], bool(rerank))
            p = filter_plan(cfg, key, sql, ["pg_catalog.tsquery", "int8"], flt)
            matches = filtered_rows(cfg, p, [tsq["q"], limit, *(flt.args if flt else [])], flt)
    lists.append((w_text, matches))
    best = fused(lists)
    if not rerank or not best:
        return [(row["qvl_pk"], None, rrf, ranks[0], ranks[1]) for row, rrf, ranks in best][skip:wanted]
    top = best[:limit]
    ranked = rerank_candidates(cfg, {"text": [query]}, [row for row, _, _ in top], wanted)
    return [(top[i][0]["qvl_pk"], score, top[i][1], top[i][2][0], top[i][2][1]) for i, score in ranked][skip:wanted]
