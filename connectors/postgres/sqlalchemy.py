"""SQLAlchemy 2 helpers: qvl's SQL functions as SQL constructs, vectorizers declared from mapped
classes, pgvector types on psycopg 3 connections.

    engine = create_engine("postgresql+psycopg://app@db/shop")
    register_vector(engine)                      # vector/halfvec/bit <-> numpy on every connection
    photos = Vectorizer(Photo, text=[Photo.caption], images=[Photo.image], dimensions=1024,
                        fulltext="english")
    with engine.begin() as conn:
        photos.create(conn)                      # once; existing rows are queued for the worker
    nearest = (select(Photo).where(Photo.taken_on >= date(2024, 1, 1))
               .order_by(Photo.embedding.cosine_distance(photos.query_embedding("red shoes"))).limit(10))
    hits = photos.search("a dog on a beach", k=5, filter=Photo.taken_on >= date(2024, 1, 1), typed=True)
    found = application_search(conn, "photos", "a dog", client=Client(target), filter=Photo.shop == 7)
    stmt = select(Photo, hits.c.score).join(hits, hits.c.key == Photo.id).order_by(hits.c.score.desc())
    best = photos.rerank_rows("red shoes", select(Photo.id).where(Photo.shop == 7))

    manuals = Vectorizer(Manual, text=[Manual.title], documents=[Manual.pdf], chunking=chunk_pages(max_pages=500),
                         destination="manual_pages")     # one vector per page, in table manual_pages
    pages = manuals.search_chunks("wiring of the pump", k=5)  # pk, chunk_seq, locator, distance, score

Every argument is cast to its SQL type: drivers send Python strings untyped, and qvl.rerank is
overloaded on text[] / bytea[]. A filter is SQL text (the application's own condition), a
structured filter (a dict: docs/postgres.md) or a SQLAlchemy condition on the table's columns,
which becomes a structured filter: its values travel as data, never as SQL.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    Select,
    Text,
    cast,
    column,
    event,
    func,
    literal,
    literal_column,
    null,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    AsBoolean,
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    ColumnElement,
    False_,
    Null,
    TextClause,
    True_,
    UnaryExpression,
)
from sqlalchemy.sql.functions import Function
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import NullType, TypeEngine

__all__ = ["BIT", "HALFVEC", "VECTOR", "Vectorizer", "chunk_pages", "chunk_text", "chunk_video", "embed",
           "hybrid_search", "query_embedding", "register_vector", "rerank", "rerank_rows", "search", "search_chunks"]

BYTES = (bytes, bytearray, memoryview)


def register_vector(engine: Engine) -> None:
    """Register pgvector's psycopg 3 adapters on every new connection of ``engine``."""
    from pgvector.psycopg import register_vector as register

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, connection_record: Any) -> None:
        register(dbapi_connection)


def _arg(value: Any, type_: TypeEngine[Any] | type[TypeEngine[Any]]) -> ColumnElement[Any]:
    """A typed SQL argument: columns and expressions as they are, Python values as typed binds."""
    if hasattr(value, "__clause_element__"):  # mapped attributes (Photo.caption)
        value = value.__clause_element__()
    if isinstance(value, ColumnElement):
        return value
    if value is None:
        return cast(null(), type_)
    return cast(literal(value, type_), type_)


def embed(text: Any = None, image: Any = None, video: Any = None, *, instruction: str | None = None,
          dimensions: int | None = None, halfvec: bool = False) -> Function[Any]:
    """``qvl.embed(...)`` (or ``qvl.embed_halfvec``): arguments may be values or columns."""
    args = (_arg(text, Text), _arg(image, LargeBinary), _arg(video, LargeBinary), _arg(instruction, Text),
            _arg(dimensions, Integer))
    if halfvec:
        return func.qvl.embed_halfvec(*args, type_=HALFVEC())
    return func.qvl.embed(*args, type_=VECTOR())


def _is_images(documents: Any) -> bool:
    return isinstance(documents, list | tuple) and bool(documents) and isinstance(documents[0], BYTES)


def rerank(query: Any, documents: Any, *, instruction: str | None = None, top_k: int | None = None,
           images: bool | None = None) -> TableValuedAlias:
    """``qvl.rerank(...)`` as a table with columns ``index`` (1-based) and ``score``, best first.

    ``documents``: a list of strings (texts) or bytes (images), or an array expression; set
    ``images`` for an expression of bytea[].
    """
    images = _is_images(documents) if images is None else images
    docs_type = ARRAY(LargeBinary) if images else ARRAY(Text)
    if isinstance(documents, tuple):
        documents = list(documents)
    q = _arg(query, LargeBinary if isinstance(query, BYTES) else Text)
    fn = func.qvl.rerank(q, _arg(documents, docs_type), _arg(instruction, Text), _arg(top_k, Integer))
    return fn.table_valued(column("index", Integer), column("score", Float))


def _query(query: Any) -> ColumnElement[Any]:
    return _arg(query, LargeBinary if isinstance(query, BYTES) else Text)


STORAGE_TYPES: dict[str, tuple[str, type[TypeEngine[Any]]]] = {
    "vector": ("query_embedding", VECTOR), "halfvec": ("query_embedding_halfvec", HALFVEC),
    "bit": ("query_embedding_bit", BIT)}


def query_embedding(vectorizer: str, query: Any, video: Any = None, *, storage: str = "vector") -> Function[Any]:
    """``qvl.query_embedding(...)`` (``_halfvec``, ``_bit`` by ``storage``): the query's vector as the
    vectorizer makes them, asked of the service once per statement; for ``order_by(col.cosine_distance(...))``."""
    name, type_ = STORAGE_TYPES[storage]
    return getattr(func.qvl, name)(_arg(vectorizer, Text), _query(query), _arg(video, LargeBinary), type_=type_())


# SQLAlchemy's operators as qvl's structured filter names them (docs/postgres.md, "Filters").
_OPERATORS: dict[Any, str] = {
    operators.eq: "=", operators.ne: "<>", operators.lt: "<", operators.le: "<=", operators.gt: ">",
    operators.ge: ">=", operators.like_op: "like", operators.not_like_op: "not like", operators.ilike_op: "ilike",
    operators.not_ilike_op: "not ilike", operators.in_op: "in", operators.not_in_op: "not in"}
_CUSTOM = ("@>", "<@", "&&")  # pgvector-free PostgreSQL ARRAY/JSONB comparators: contains, contained_by, overlap
_FILTER_HELP = ("qvl's filter from a SQLAlchemy condition takes a column compared with values (==, !=, <, <=, >, >=, "
                "in_, not_in, like, ilike, not_like, not_ilike, between, is_(None), is_not(None); ARRAY/JSONB "
                "contains, contained_by, overlap) joined by and_, or_ and not_. Pass SQL text for anything else.")


def _value(value: Any) -> Any:
    """A bound value as JSON: dates in ISO form, decimals and UUIDs as text (cast to the column's type)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    raise TypeError(f"qvl's filter cannot carry {type(value).__name__} values ({value!r})")


def _operand(element: Any) -> Any:
    if isinstance(element, BindParameter):
        return _value(element.effective_value)
    if isinstance(element, True_ | False_):
        return isinstance(element, True_)
    raise TypeError(f"{_FILTER_HELP} Got {element} where a value goes.")


def _structured(condition: Any) -> dict[str, Any]:
    """A SQLAlchemy condition as qvl's structured filter."""
    if hasattr(condition, "__clause_element__"):
        condition = condition.__clause_element__()
    if isinstance(condition, BooleanClauseList) and condition.operator in (operators.and_, operators.or_):
        word = "and" if condition.operator is operators.and_ else "or"
        return {word: [_structured(c) for c in condition.clauses]}
    if isinstance(condition, UnaryExpression | AsBoolean) and condition.operator in (operators.inv,
                                                                                    operators.is_false):
        return {"not": _structured(condition.element)}
    if isinstance(condition, ColumnClause):  # a boolean column alone
        return {"column": condition.name, "op": "=", "value": True}
    if isinstance(condition, BinaryExpression) and isinstance(condition.left, ColumnClause):
        column_name, op, right = condition.left.name, condition.operator, condition.right
        if op in (operators.is_, operators.is_not) and isinstance(right, Null):
            return {"column": column_name, "op": "is null" if op is operators.is_ else "is not null"}
        if op in (operators.between_op, operators.not_between_op):
            low, high = (_operand(c) for c in right.clauses)  # type: ignore[attr-defined]
            between = {"and": [{"column": column_name, "op": ">=", "value": low},
                               {"column": column_name, "op": "<=", "value": high}]}
            return between if op is operators.between_op else {"not": between}
        name = _OPERATORS.get(op) or getattr(op, "opstring", None)
        if name in _OPERATORS.values() or name in _CUSTOM:
            return {"column": column_name, "op": name, "value": _operand(right)}
    raise TypeError(f"{_FILTER_HELP} Got: {condition}")


def _filter(condition: Any) -> tuple[bool, ColumnElement[Any]]:
    """(structured?, the filter argument): SQL text as it is, a dict or a SQLAlchemy condition as jsonb."""
    if condition is None or isinstance(condition, str):
        return False, _arg(condition, Text)
    if isinstance(condition, TextClause) and not condition._bindparams:
        return False, _arg(condition.text, Text)
    spec = condition if isinstance(condition, dict) else _structured(condition)
    return True, cast(literal(json.dumps(_value(spec)), Text), JSONB)


def _key_type(key_type: Any) -> tuple[ColumnElement[Any], Any]:
    """(the key_type argument, the key column's type): a SQLAlchemy type, or a SQL type name (a
    composite key's type: "docs_key")."""
    if isinstance(key_type, str):
        return literal_column(f"NULL::{key_type}"), NullType()
    type_ = key_type() if isinstance(key_type, type) else key_type
    return cast(null(), type_), type_


def search(vectorizer: str, query: Any, *, k: int = 10, candidates: int = 100, rerank: bool = True,
           filter: Any = None, offset: int = 0, key_type: Any = None) -> TableValuedAlias:
    """``qvl.search(...)``: columns ``pk`` (text), ``distance`` and ``score`` (NULL without rerank);
    with ``key_type`` (BigInteger, Uuid, or a composite type's SQL name) ``key`` in that type instead.
    A structured filter goes in its own overload's place: right after the query (or key_type)."""
    structured, flt = _filter(filter)
    args = [_arg(k, Integer), _arg(candidates, Integer), _arg(rerank, Boolean), _arg(offset, Integer)]
    args = [flt, *args] if structured else [*args[:3], flt, args[3]]
    if key_type is None:
        fn = func.qvl.search(_arg(vectorizer, Text), _query(query), *args)
        return fn.table_valued(column("pk", Text), column("distance", Float), column("score", Float))
    typed, type_ = _key_type(key_type)
    fn = func.qvl.search(_arg(vectorizer, Text), _query(query), typed, *args)
    return fn.table_valued(column("key", type_), column("distance", Float), column("score", Float))


def search_chunks(vectorizer: str, query: Any, *, k: int = 10, candidates: int = 100, filter: Any = None,
                  rerank: bool = True) -> TableValuedAlias:
    """``qvl.search_chunks(...)`` over a chunked vectorizer: columns ``pk`` (text), ``chunk_seq``,
    ``locator`` (a dict: page, start_s/end_s or char_start/char_end), ``distance`` and ``score``
    (NULL without rerank), best first. A structured filter goes right after the query."""
    structured, flt = _filter(filter)
    args = [_arg(k, Integer), _arg(candidates, Integer), _arg(rerank, Boolean)]
    args = [flt, *args] if structured else [*args[:2], flt, args[2]]
    fn = func.qvl.search_chunks(_arg(vectorizer, Text), _query(query), *args)
    return fn.table_valued(column("pk", Text), column("chunk_seq", Integer), column("locator", JSONB),
                           column("distance", Float), column("score", Float))


def chunk_pages(max_pages: int | None = None) -> dict[str, Any]:
    """As ``qvl.chunk_pages``: every page of the row's document (refused past ``max_pages``)."""
    return {"type": "pages", **({"max_pages": max_pages} if max_pages is not None else {})}


def chunk_video(seconds: float = 10, overlap: float = 0) -> dict[str, Any]:
    """As ``qvl.chunk_video``: windows of ``seconds``, starting ``seconds - overlap`` apart."""
    return {"type": "video", "seconds": seconds, "overlap": overlap}


def chunk_text(tokens: int = 512, overlap: int = 64) -> dict[str, Any]:
    """As ``qvl.chunk_text``: passages of the last text column, ``tokens`` long, sharing ``overlap``."""
    return {"type": "text", "tokens": tokens, "overlap": overlap}


def application_search(conn: Connection, vectorizer: str, query: Any, *, client: Any, k: int = 10,
                       candidates: int = 100, filter: Any = None, rerank: bool = True, offset: int = 0) -> list[Any]:
    """``connectors.postgres.search`` on a SQLAlchemy connection (``Session.connection()`` too): the query
    embedded and the candidates reranked over gRPC by ``client``, for the managed install (no PL/Python)
    or to keep the model out of the database. ``filter``: SQL text, a dict or a SQLAlchemy condition (as
    a structured filter). Returns ``Hit``s (pk, distance, score), best first."""
    from connectors.postgres.search import search as app_search

    raw = conn.connection.driver_connection
    return app_search(raw, vectorizer, query, client=client, k=k, candidates=candidates,  # type: ignore[arg-type]
                      filter=_app_filter(filter), rerank=rerank, offset=offset)


def application_search_chunks(conn: Connection, vectorizer: str, query: Any, *, client: Any, k: int = 10,
                              candidates: int = 100, filter: Any = None, rerank: bool = True) -> list[Any]:
    """``connectors.postgres.search_chunks`` on a SQLAlchemy connection, as ``application_search``:
    ``ChunkHit``s (pk, chunk_seq, locator, distance, score), best first."""
    from connectors.postgres.search import search_chunks as app_search_chunks

    raw = conn.connection.driver_connection
    return app_search_chunks(raw, vectorizer, query, client=client, k=k, candidates=candidates,  # type: ignore[arg-type]
                             filter=_app_filter(filter), rerank=rerank)


def _app_filter(filter: Any) -> Any:
    """A SQLAlchemy condition as the structured filter's JSON; SQL text and dicts as they are."""
    if filter is not None and not isinstance(filter, str | dict):
        filter = _structured(filter)
    return _value(filter) if isinstance(filter, dict) else filter


def hybrid_search(vectorizer: str, query: Any, *, k: int = 10, filter: Any = None,
                  weights: Sequence[float] = (1.0, 1.0), rerank: bool = True, candidates: int = 100, offset: int = 0,
                  key_type: Any = None) -> TableValuedAlias:
    """``qvl.hybrid_search(...)``: ``pk`` (or ``key`` with ``key_type``), ``score``, ``rrf``,
    ``vector_rank``, ``text_rank``; weights are (vector, full text)."""
    structured, flt = _filter(filter)
    args = [_arg(k, Integer), _arg(list(weights), ARRAY(REAL)), _arg(rerank, Boolean), _arg(candidates, Integer),
            _arg(offset, Integer)]
    args = [flt, *args] if structured else [args[0], flt, *args[1:]]
    ranks = (column("score", Float), column("rrf", Float), column("vector_rank", Integer),
             column("text_rank", Integer))
    if key_type is None:
        fn = func.qvl.hybrid_search(_arg(vectorizer, Text), _arg(query, Text), *args)
        return fn.table_valued(column("pk", Text), *ranks)
    typed, type_ = _key_type(key_type)
    fn = func.qvl.hybrid_search(_arg(vectorizer, Text), _arg(query, Text), typed, *args)
    return fn.table_valued(column("key", type_), *ranks)


def rerank_rows(vectorizer: str, query: Any, keys: Any, *, key_type: Any = None,
                top_k: int | None = None) -> TableValuedAlias:
    """``qvl.rerank_rows(...)``: columns ``key`` and ``score``, best first. ``keys``: a SELECT of one
    key column (``select(Photo.id).where(...)``), an array expression, or a list of values with
    ``key_type`` (the key column's type, e.g. BigInteger)."""
    if isinstance(keys, Select):
        keys = func.array(keys.scalar_subquery())
    elif not isinstance(keys, ColumnElement):
        if key_type is None:
            raise TypeError("rerank_rows: a list of keys needs key_type (the key column's type, e.g. BigInteger)")
        keys = _arg(list(keys), ARRAY(_key_type(key_type)[1]))
    fn = func.qvl.rerank_rows(_arg(vectorizer, Text), _query(query), keys, _arg(top_k, Integer))
    key_column_type = _key_type(key_type)[1] if key_type is not None else NullType()
    return fn.table_valued(column("key", key_column_type), column("score", Float))


def _column_name(col: Any) -> str:
    if isinstance(col, str):
        return col
    name = getattr(getattr(col, "expression", col), "name", None)
    if not isinstance(name, str):
        raise TypeError(f"expected a mapped column or a column name, got {col!r}")
    return name


@dataclass
class Vectorizer:
    """A vectorizer declared from a mapped class (or a Table): ``create()`` runs qvl.create_vectorizer."""

    model: Any
    text: Sequence[Any] = ()
    images: Sequence[Any] = ()
    videos: Sequence[Any] = ()
    name: str | None = None
    destination: str = "embedding"
    dimensions: int | None = None
    storage: str = "vector"
    instruction: str | None = None
    query_instruction: str | None = None
    mode: str = "async"
    index: str = "hnsw"
    on_error: str = "fail"
    fulltext: str | None = None
    # A chunked vectorizer (docs/documents.md): document columns (PDF bytes or URIs), the chunking
    # (chunk_pages / chunk_video / chunk_text), the chunk table's name as ``destination``.
    documents: Sequence[Any] = ()
    chunking: dict[str, Any] | None = None
    chunk_context: bool = True

    @property
    def table(self) -> Any:
        return getattr(self.model, "__table__", self.model)

    @property
    def vectorizer_name(self) -> str:
        return self.name or str(self.table.name)

    def _source(self, conn: Connection) -> str:
        quote = conn.dialect.identifier_preparer.quote
        table = self.table
        return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)

    def exists(self, conn: Connection) -> bool:
        return conn.execute(text("SELECT EXISTS (SELECT 1 FROM qvl.vectorizer WHERE name = :n)"),
                            {"n": self.vectorizer_name}).scalar_one()

    def create(self, conn: Connection, *, if_not_exists: bool = True) -> int | None:
        """Create it (None when it exists and ``if_not_exists``); existing rows are queued."""
        if if_not_exists and self.exists(conn):
            return None
        statement = text(
            "SELECT qvl.create_vectorizer(CAST(:source AS regclass), name => :name, "
            "text_columns => CAST(:text AS text[]), image_columns => CAST(:images AS text[]), "
            "video_columns => CAST(:videos AS text[]), destination => CAST(:destination AS name), "
            "dimensions => CAST(:dimensions AS int), storage => :storage, instruction => :instruction, "
            "mode => :mode, index => :index, on_error => :on_error, query_instruction => :query_instruction, "
            "fulltext => :fulltext, document_columns => CAST(:documents AS text[]), "
            "chunking => CAST(:chunking AS jsonb), chunk_context => :chunk_context)")
        return conn.execute(statement, {
            "source": self._source(conn), "name": self.vectorizer_name,
            "text": [_column_name(c) for c in self.text], "images": [_column_name(c) for c in self.images],
            "videos": [_column_name(c) for c in self.videos], "destination": self.destination,
            "dimensions": self.dimensions, "storage": self.storage, "instruction": self.instruction,
            "mode": self.mode, "index": self.index, "on_error": self.on_error,
            "query_instruction": self.query_instruction, "fulltext": self.fulltext,
            "documents": [_column_name(c) for c in self.documents],
            "chunking": None if self.chunking is None else json.dumps(self.chunking),
            "chunk_context": self.chunk_context,
        }).scalar_one()

    def drop(self, conn: Connection, *, drop_column: bool = False) -> None:
        conn.execute(text("SELECT qvl.drop_vectorizer(:n, :d)"), {"n": self.vectorizer_name, "d": drop_column})

    def wait(self, conn: Connection, timeout_s: float = 30.0) -> bool:
        """qvl.wait_for_embeddings: true once every committed change is embedded."""
        return bool(conn.execute(text("SELECT qvl.wait_for_embeddings(:n, make_interval(secs => :t))"),
                                 {"n": self.vectorizer_name, "t": timeout_s}).scalar_one())

    @property
    def key_type(self) -> Any:
        """The type of the table's key column (a composite key needs its composite type's SQL name)."""
        keys = list(self.table.primary_key.columns)
        if len(keys) != 1:
            raise TypeError(f"{self.table.name} has a composite key: pass key_type='<its composite type>'")
        return keys[0].type

    def query_embedding(self, query: Any, video: Any = None) -> Function[Any]:
        """The query's vector in the column's type: compare with ``embedding.cosine_distance(...)``."""
        storage = "vector" if self.storage == "halfvec" else self.storage  # vector serves halfvec columns
        return query_embedding(self.vectorizer_name, query, video, storage=storage)

    def search(self, query: Any, *, typed: bool = False, **kwargs: Any) -> TableValuedAlias:
        """qvl.search; ``typed``: the key in the key column's type (column ``key``), not text (``pk``)."""
        if typed:
            kwargs.setdefault("key_type", self.key_type)
        return search(self.vectorizer_name, query, **kwargs)

    def search_chunks(self, query: Any, **kwargs: Any) -> TableValuedAlias:
        """qvl.search_chunks over this (chunked) vectorizer's chunks."""
        return search_chunks(self.vectorizer_name, query, **kwargs)

    def hybrid_search(self, query: Any, *, typed: bool = False, **kwargs: Any) -> TableValuedAlias:
        if typed:
            kwargs.setdefault("key_type", self.key_type)
        return hybrid_search(self.vectorizer_name, query, **kwargs)

    def rerank_rows(self, query: Any, keys: Any, **kwargs: Any) -> TableValuedAlias:
        """qvl.rerank_rows over ``keys`` (a SELECT of the key column, or a list of key values)."""
        if not isinstance(keys, Select | ColumnElement):
            kwargs.setdefault("key_type", self.key_type)
        return rerank_rows(self.vectorizer_name, query, keys, **kwargs)
