"""The application side of a query (issue 22, item 3): ``qvl.search`` where the database cannot call
the model (the managed install) or should not.

``search(conn, vectorizer, query, client=...)`` embeds the query over gRPC with the vectorizer's query
instruction and model pin, runs the candidate stage in the database as the caller, and reranks the
candidates over gRPC with their own columns. The candidate stage is the in-database library's own code
(``connectors/postgres/plpy/``: the filter's checks, the exact-or-index choice, the scan settings),
run here over psycopg instead of PL/Python (``PsycopgSpi``), read-only, in a savepoint rolled back at
the end: the same rows, the same filter security, the same distances as ``qvl.search``.

``search_chunks(conn, vectorizer, query, client=...)`` is ``qvl.search_chunks`` from the application: the
same candidate stage over the chunk table (``plpy/chunk_search.chunk_candidates``), each candidate's
part built as the library builds it (``part_item``: the page, the clip span, the passage) and reranked
over gRPC. ``search`` on a chunked vectorizer ranks its rows by their best part, as ``qvl.search`` does.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from connectors.client import Client, QvlClientError
from connectors.postgres.plpy import filter_text, filters, spi
from connectors.postgres.plpy.candidates import candidate_rows, checked_filter
from connectors.postgres.plpy.chunk_search import chunk_candidates, chunked, is_chunked, part_item
from connectors.postgres.plpy.filters import Structured
from connectors.postgres.plpy.search import check_k, check_offset
from connectors.postgres.plpy.service import DEFAULT_QUERY_INSTRUCTION
from connectors.postgres.plpy.vectorizers import vectorizer_by_name
from connectors.postgres.row_encoding import row_item
from qvl_proto import vectorizer_pb2 as pb

# The library keeps its plpy handle and its caches in module globals (one per backend in PL/Python):
# one search at a time in this process holds them.
_LIBRARY = threading.Lock()
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s*(\([^)]*\))\s*(.*)$", re.S | re.I)
_names = itertools.count(1)
T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    pk: str  # the key as text (ROW(...)::text when composite), as qvl.search gives it
    distance: float
    score: float | None  # None without rerank

    def as_json(self) -> dict[str, Any]:
        return {"pk": self.pk, "distance": self.distance, "score": self.score}


@dataclass(frozen=True)
class ChunkHit:
    pk: str
    chunk_seq: int
    locator: dict[str, Any]  # {"page": n}, {"start_s", "end_s"} or {"char_start", "char_end"}
    distance: float
    score: float | None  # None without rerank

    def as_json(self) -> dict[str, Any]:
        return {"pk": self.pk, "chunk_seq": self.chunk_seq, "locator": self.locator, "distance": self.distance,
                "score": self.score}


class SearchError(Exception):
    """What ``qvl.search`` would raise as a SQL error: its SQLSTATE, message, detail and hint."""

    def __init__(self, message: str, sqlstate: str | None = None, detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.sqlstate, self.detail, self.hint = message, sqlstate, detail, hint

    def __str__(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


class _SpiError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class _Result(list[dict[str, Any]]):
    def nrows(self) -> int:
        return len(self)


@dataclass(frozen=True)
class _Plan:
    name: str
    argtypes: tuple[str, ...]  # cast to at EXECUTE (its arguments would have no type otherwise)
    explain: str | None  # EXPLAIN's options when the statement is an EXPLAIN (PREPARE cannot hold one)


class _Cursor:
    def __init__(self, rows: _Result) -> None:
        self.rows = rows

    def fetch(self, n: int) -> _Result:
        batch, self.rows = _Result(self.rows[:n]), _Result(self.rows[n:])
        return batch

    def close(self) -> None:
        self.rows = _Result()


class PsycopgSpi:
    """What the library calls as ``plpy``, over a psycopg connection: prepared statements are
    PREPAREd (so a filter's text reaches the server as it is: no client-side placeholder parsing),
    each statement runs in a savepoint (a caught error leaves the transaction usable, as PL/Python's
    subtransactions do), and ``close()`` deallocates them."""

    SPIError = _SpiError

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.prepared: list[str] = []

    def quote_ident(self, name: str) -> str:
        return sql.Identifier(name).as_string(self.conn)

    def _run(self, query: str, params: Sequence[Any] | None = None) -> _Result:
        try:
            # A client-side cursor: EXECUTE's arguments go as literals (a utility statement takes no $n).
            with self.conn.transaction(), psycopg.ClientCursor(self.conn, row_factory=dict_row) as cur:
                cur.execute(query.encode() if params is None else query, params)  # type: ignore[arg-type]
                return _Result(cur.fetchall() if cur.description else [])
        except psycopg.Error as exc:
            state = exc.diag.sqlstate if isinstance(exc, psycopg.errors.DatabaseError) else None
            raise _SpiError(exc.diag.message_primary or str(exc), state) from None

    def prepare(self, query: str, argtypes: Sequence[str] = ()) -> _Plan:
        explain = _EXPLAIN.match(query)
        inner = explain.group(2) if explain else query
        name = f"qvl_app_{next(_names)}"
        types = f" ({', '.join(argtypes)})" if argtypes else ""
        self._run(f"PREPARE {name}{types} AS {inner}")
        self.prepared.append(name)
        return _Plan(name, tuple(argtypes), explain.group(1) if explain else None)

    def execute(self, plan: _Plan | str, args: Sequence[Any] | None = None) -> _Result:
        if isinstance(plan, str):
            return self._run(plan)
        args = list(args or [])
        call = f"EXECUTE {plan.name}" + (f"({', '.join(f'%s::{t}' for t in plan.argtypes)})" if args else "")
        return self._run(f"EXPLAIN {plan.explain} {call}" if plan.explain else call, args or None)

    def cursor(self, plan: _Plan, args: Sequence[Any] | None = None) -> _Cursor:
        return _Cursor(self.execute(plan, args))

    def error(self, message: str, detail: str | None = None, hint: str | None = None,
              sqlstate: str | None = None) -> NoReturn:
        raise SearchError(message, sqlstate, detail, hint)

    def notice(self, message: str) -> None:
        pass

    def close(self) -> None:
        for name in self.prepared:
            with contextlib.suppress(_SpiError):
                self._run(f"DEALLOCATE {name}")
        self.prepared.clear()


def query_item(query: str | bytes) -> pb.Item:
    if isinstance(query, bytes | bytearray | memoryview):
        return pb.Item(parts=[pb.Part(image=bytes(query))])
    return pb.Item(parts=[pb.Part(text=str(query))])


def _query_instruction(cfg: Mapping[str, Any], client: Client) -> str:
    """The vectorizer's query instruction, else the served model's (as ``qvl.query_embedding``)."""
    if cfg["query_instruction"]:
        return str(cfg["query_instruction"])
    served = next((m for m in client.info().models if m.task == "embed"), None)
    return (served.query_instruction if served is not None else "") or DEFAULT_QUERY_INSTRUCTION


def _vector_text(cfg: Mapping[str, Any], row: np.ndarray) -> str:
    if cfg["storage"] == "bit":
        return "".join(format(int(b), "08b") for b in np.asarray(row, dtype=np.uint8))[: cfg["dimensions"]]
    return "[" + ",".join(repr(float(x)) for x in np.asarray(row, dtype=np.float32)) + "]"


def query_vector(cfg: Mapping[str, Any], query: str | bytes, client: Client) -> str:
    """The query's vector at the vectorizer's size, from the model its stored vectors came from."""
    try:
        rows = client.embed([query_item(query)], dimensions=cfg["dimensions"],
                            encoding="binary" if cfg["storage"] == "bit" else "float32",
                            instruction=_query_instruction(cfg, client), fingerprint=cfg.get("model_fingerprint"))
    except QvlClientError as exc:
        raise SearchError(f"qvl: the service could not embed the query for vectorizer {cfg['name']!r}: {exc}",
                          "08006" if "MISMATCH" not in str(exc).upper() else "55000") from None
    return _vector_text(cfg, rows[0])


@dataclass(frozen=True)
class _Columns:
    text_columns: tuple[str, ...]
    image_columns: tuple[str, ...]
    video_columns: tuple[str, ...]
    document_columns: tuple[str, ...] = ()
    chunked: bool = False  # a chunked vectorizer's rows are searched by their chunks (search_chunks)
    split_column: str | None = None


def rerank(cfg: Mapping[str, Any], query: str | bytes, rows: Sequence[Mapping[str, Any]], top_k: int,
           client: Client) -> list[tuple[int, float]]:
    """The reranker over each candidate's own columns: (index into rows, score) best first; rows the
    service cannot read are left out (as ``qvl.search``)."""
    columns = _Columns(tuple(cfg["text_columns"]), tuple(cfg["image_columns"]), tuple(cfg["video_columns"]))
    docs = [row_item(columns, r) or pb.Item() for r in rows]
    try:
        result = client.rerank(query_item(query), docs, top_k=top_k, allow_partial=True)
    except QvlClientError as exc:
        raise SearchError(f"qvl: the service could not rerank for vectorizer {cfg['name']!r}: {exc}", "08006") from None
    ranked = sorted(result.ranking, key=lambda r: -r[1])
    return ranked[:top_k]


def search(conn: psycopg.Connection[Any], vectorizer: str, query: str | bytes | None, *, client: Client,
           k: int = 10, candidates: int = 100, filter: str | Mapping[str, Any] | None = None, rerank: bool = True,
           offset: int = 0) -> list[Hit]:
    """``qvl.search(vectorizer, query, k, candidates, rerank, filter, offset)`` from the application:
    rows offset+1 .. offset+k, best first. ``filter``: SQL text (one condition on the table's columns) or
    a structured filter (a dict, as the jsonb one). Runs as ``conn``'s role; ``conn``'s transaction is as
    it was afterwards. A refusal raises ``SearchError`` with what qvl.search's SQL error would say."""
    return _with_library(conn, lambda: _search(cfg_name=vectorizer, query=query, client=client, k=k,
                                               candidates=candidates, flt_given=_given_filter(filter),
                                               use_rerank=rerank, offset=offset))


def _given_filter(filter: str | Mapping[str, Any] | None) -> str | None:
    if isinstance(filter, Mapping):
        return Structured(json.dumps(filter))
    return filter


def _with_library(conn: psycopg.Connection[Any], run: Callable[[], T]) -> T:
    """``run`` with the library's ``plpy`` over ``conn``, read-only, in a transaction rolled back after."""
    spi_ = PsycopgSpi(conn)
    with _LIBRARY:
        saved = (spi.plpy, spi.plans, filters.filter_plans, filter_text.probed)
        spi.plpy, spi.plans, filters.filter_plans, filter_text.probed = spi_, {}, OrderedDict(), OrderedDict()
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(b"SET LOCAL transaction_read_only = on")  # as qvl.search's SET clause
                try:
                    return run()
                except _SpiError as exc:  # what the SQL function would raise (a missing privilege, ...)
                    raise SearchError(str(exc), exc.sqlstate) from None
                finally:
                    spi_.close()  # (PREPARE outlives a rollback)
        finally:
            spi.plpy, spi.plans, filters.filter_plans, filter_text.probed = saved


def _search(*, cfg_name: str, query: str | bytes | None, client: Client, k: int, candidates: int,
            flt_given: str | None, use_rerank: bool, offset: int) -> list[Hit]:
    """``plpy/search.search_rows`` with the two service calls made over gRPC."""
    cfg = vectorizer_by_name(cfg_name)
    k, skip = check_k(k), check_offset(offset)
    flt = checked_filter(cfg, flt_given)
    if query is None or k < 1:
        return []
    wanted = skip + k
    limit = max(candidates or 0, wanted)
    qvec = query_vector(cfg, query, client)
    if is_chunked(cfg):  # rows ranked by their best part, as plpy/chunk_search.search_best_parts
        return _best_parts(cfg, query, qvec, client, flt, limit, use_rerank)[skip:wanted]
    rows = candidate_rows(cfg, qvec, flt, limit, bool(use_rerank))
    if not use_rerank or not rows:
        return [Hit(r["qvl_pk"], r["qvl_distance"], None) for r in rows][skip:wanted]
    ranked = rerank(cfg, query, rows, wanted, client)
    return [Hit(rows[i]["qvl_pk"], rows[i]["qvl_distance"], score) for i, score in ranked][skip:wanted]


# The keys of the library's JSON item that hold base64 (the service's JSON API); the gRPC client takes bytes.
_BASE64_KEYS = ("video", "image", "document", "frames")


def part_pb(item: Mapping[str, Any]) -> dict[str, Any]:
    """``plpy/chunk_search.part_item``'s JSON item as the gRPC client's item (bytes, not base64)."""
    out = dict(item)
    for key in _BASE64_KEYS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [base64.b64decode(v) for v in value]
        elif value is not None:
            out[key] = base64.b64decode(value)
    return out


def search_chunks(conn: psycopg.Connection[Any], vectorizer: str, query: str | bytes | None, *, client: Client,
                  k: int = 10, candidates: int = 100, filter: str | Mapping[str, Any] | None = None,
                  rerank: bool = True) -> list[ChunkHit]:
    """``qvl.search_chunks(vectorizer, query, k, candidates, filter, rerank)`` from the application: the
    ``candidates`` nearest chunks of the rows that pass the filter, each one's part (page, clip span,
    passage) reranked over gRPC; k of them, best first (without rerank: nearest first, score None).
    As ``search``: runs as ``conn``'s role, leaves its transaction as it was, refuses with ``SearchError``."""
    return _with_library(conn, lambda: _search_chunks(vectorizer, query, client, k, candidates,
                                                      _given_filter(filter), rerank))


def _ranked_chunks(cfg: Mapping[str, Any], query: str | bytes, qvec: str, client: Client, flt: Any, limit: int,
                   use_rerank: bool) -> list[ChunkHit]:
    """``plpy/chunk_search.ranked_chunks`` with the rerank over gRPC: every candidate, best first."""
    rows = chunk_candidates(cfg, qvec, flt, limit)

    def hit(r: Mapping[str, Any], score: float | None) -> ChunkHit:
        return ChunkHit(r["qvl_pk"], r["qvl_seq"], json.loads(r["qvl_locator"]), r["qvl_distance"], score)

    if not use_rerank or not rows:
        return [hit(r, None) for r in rows]
    parts = [part_pb(part_item(cfg, r)) for r in rows]
    try:
        result = client.rerank(query_item(query), parts, allow_partial=True)
    except QvlClientError as exc:
        raise SearchError(f"qvl: the service could not rerank for vectorizer {cfg['name']!r}: {exc}",
                          "08006") from None
    return [hit(rows[i], score) for i, score in sorted(result.ranking, key=lambda r: -r[1])]


def _best_parts(cfg: Mapping[str, Any], query: str | bytes, qvec: str, client: Client, flt: Any, limit: int,
                use_rerank: bool) -> list[Hit]:
    """Rows by their best chunk's rank, each with its nearest chunk's distance."""
    rows: dict[str, list[Any]] = {}  # pk -> [distance, score], in rank order
    for h in _ranked_chunks(cfg, query, qvec, client, flt, limit, use_rerank):
        entry = rows.setdefault(h.pk, [h.distance, h.score])
        entry[0] = min(entry[0], h.distance)
    return [Hit(pk, d, s) for pk, (d, s) in rows.items()]


def _search_chunks(name: str, query: str | bytes | None, client: Client, k: int, candidates: int,
                   flt_given: str | None, use_rerank: bool) -> list[ChunkHit]:
    """``plpy/chunk_search.search_chunks_rows`` with the two service calls made over gRPC."""
    cfg = chunked(vectorizer_by_name(name), name)
    flt = checked_filter(cfg, flt_given)
    k = check_k(k)
    if query is None or k < 1:
        return []
    qvec = query_vector(cfg, query, client)
    return _ranked_chunks(cfg, query, qvec, client, flt, max(candidates or 0, k), use_rerank)[:k]
