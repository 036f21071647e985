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
    stmt = select(Photo, hits.c.score).join(hits, hits.c.key == Photo.id).order_by(hits.c.score.desc())
    best = photos.rerank_rows("red shoes", select(Photo.id).where(Photo.shop == 7))

Every argument is cast to its SQL type: drivers send Python strings untyped, and qvl.rerank is
overloaded on text[] / bytea[]. A filter is SQL text or a SQLAlchemy condition on the table's
columns (compiled with its values inline: qvl's filter is one text).
"""

from __future__ import annotations

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
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import Function
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import NullType, TypeEngine

__all__ = ["BIT", "HALFVEC", "VECTOR", "Vectorizer", "embed", "hybrid_search", "query_embedding", "register_vector",
           "rerank", "rerank_rows", "search"]

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


def _filter(condition: Any) -> ColumnElement[Any]:
    """A filter as SQL text: a string as it is, a SQLAlchemy condition compiled with its values inline."""
    if condition is None or isinstance(condition, str):
        return _arg(condition, Text)
    from sqlalchemy.dialects import postgresql

    compiled = condition.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return _arg(str(compiled), Text)


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
    with ``key_type`` (BigInteger, Uuid, or a composite type's SQL name) ``key`` in that type instead."""
    args = [_arg(k, Integer), _arg(candidates, Integer), _arg(rerank, Boolean), _filter(filter), _arg(offset, Integer)]
    if key_type is None:
        fn = func.qvl.search(_arg(vectorizer, Text), _query(query), *args)
        return fn.table_valued(column("pk", Text), column("distance", Float), column("score", Float))
    typed, type_ = _key_type(key_type)
    fn = func.qvl.search(_arg(vectorizer, Text), _query(query), typed, *args)
    return fn.table_valued(column("key", type_), column("distance", Float), column("score", Float))


def hybrid_search(vectorizer: str, query: Any, *, k: int = 10, filter: Any = None,
                  weights: Sequence[float] = (1.0, 1.0), rerank: bool = True, candidates: int = 100, offset: int = 0,
                  key_type: Any = None) -> TableValuedAlias:
    """``qvl.hybrid_search(...)``: ``pk`` (or ``key`` with ``key_type``), ``score``, ``rrf``,
    ``vector_rank``, ``text_rank``; weights are (vector, full text)."""
    args = [_arg(k, Integer), _filter(filter), _arg(list(weights), ARRAY(REAL)), _arg(rerank, Boolean),
            _arg(candidates, Integer), _arg(offset, Integer)]
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
            "fulltext => :fulltext)")
        return conn.execute(statement, {
            "source": self._source(conn), "name": self.vectorizer_name,
            "text": [_column_name(c) for c in self.text], "images": [_column_name(c) for c in self.images],
            "videos": [_column_name(c) for c in self.videos], "destination": self.destination,
            "dimensions": self.dimensions, "storage": self.storage, "instruction": self.instruction,
            "mode": self.mode, "index": self.index, "on_error": self.on_error,
            "query_instruction": self.query_instruction, "fulltext": self.fulltext,
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

    def hybrid_search(self, query: Any, *, typed: bool = False, **kwargs: Any) -> TableValuedAlias:
        if typed:
            kwargs.setdefault("key_type", self.key_type)
        return hybrid_search(self.vectorizer_name, query, **kwargs)

    def rerank_rows(self, query: Any, keys: Any, **kwargs: Any) -> TableValuedAlias:
        """qvl.rerank_rows over ``keys`` (a SELECT of the key column, or a list of key values)."""
        if not isinstance(keys, Select | ColumnElement):
            kwargs.setdefault("key_type", self.key_type)
        return rerank_rows(self.vectorizer_name, query, keys, **kwargs)
