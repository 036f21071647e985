"""SQLAlchemy 2 helpers: qvl.embed / qvl.rerank / qvl.search as SQL constructs, vectorizers
declared from mapped classes, pgvector types on psycopg 3 connections.

    engine = create_engine("postgresql+psycopg://app@db/shop")
    register_vector(engine)                      # vector/halfvec/bit <-> numpy on every connection
    photos = Vectorizer(Photo, text=[Photo.caption], images=[Photo.image], dimensions=1024)
    with engine.begin() as conn:
        photos.create(conn)                      # once; existing rows are queued for the worker
    hits = search("photos", "a dog on a beach", k=5)
    stmt = (select(Photo, hits.c.score).join(hits, hits.c.pk == cast(Photo.id, Text))
            .order_by(hits.c.score.desc()))
    nearest = select(Photo).order_by(Photo.embedding.cosine_distance(embed("red shoes"))).limit(10)

Every argument is cast to its SQL type: drivers send Python strings untyped, and qvl.rerank is
overloaded on text[] / bytea[].
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
    Text,
    cast,
    column,
    event,
    func,
    literal,
    null,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import Function
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

__all__ = ["BIT", "HALFVEC", "VECTOR", "Vectorizer", "embed", "register_vector", "rerank", "search"]

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


def search(vectorizer: str, query: Any, *, k: int = 10, candidates: int = 100,
           rerank: bool = True) -> TableValuedAlias:
    """``qvl.search(...)``: columns ``pk`` (text), ``distance`` and ``score`` (NULL without rerank)."""
    q = _arg(query, LargeBinary if isinstance(query, BYTES) else Text)
    fn = func.qvl.search(_arg(vectorizer, Text), q, _arg(k, Integer), _arg(candidates, Integer),
                         _arg(rerank, Boolean))
    return fn.table_valued(column("pk", Text), column("distance", Float), column("score", Float))


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
            "mode => :mode, index => :index, on_error => :on_error, query_instruction => :query_instruction)")
        return conn.execute(statement, {
            "source": self._source(conn), "name": self.vectorizer_name,
            "text": [_column_name(c) for c in self.text], "images": [_column_name(c) for c in self.images],
            "videos": [_column_name(c) for c in self.videos], "destination": self.destination,
            "dimensions": self.dimensions, "storage": self.storage, "instruction": self.instruction,
            "mode": self.mode, "index": self.index, "on_error": self.on_error,
            "query_instruction": self.query_instruction,
        }).scalar_one()

    def drop(self, conn: Connection, *, drop_column: bool = False) -> None:
        conn.execute(text("SELECT qvl.drop_vectorizer(:n, :d)"), {"n": self.vectorizer_name, "d": drop_column})

    def wait(self, conn: Connection, timeout_s: float = 30.0) -> bool:
        """qvl.wait_for_embeddings: true once every committed change is embedded."""
        return bool(conn.execute(text("SELECT qvl.wait_for_embeddings(:n, make_interval(secs => :t))"),
                                 {"n": self.vectorizer_name, "t": timeout_s}).scalar_one())

    def search(self, query: Any, **kwargs: Any) -> TableValuedAlias:
        return search(self.vectorizer_name, query, **kwargs)
