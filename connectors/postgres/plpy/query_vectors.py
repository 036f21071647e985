"""Query vectors (``qvl.query_embedding`` and its halfvec and bit forms), embedded with the
vectorizer's query instruction and remembered for the running statement."""

from __future__ import annotations

from typing import Any

from . import spi
from .errors import Failure, What
from .items import Item, Row, make_item
from .models import embed_pinned
from .service import query_instruction
from .spi import plan
from .vectorizers import vectorizer_by_name

# A STABLE function in `ORDER BY embedding <=> qvl.query_embedding(...)` runs once per row: as the
# sort key of every row a sequential scan reads, and as the distance projected for every row an index
# scan returns. So the vector is remembered for the running statement: its first row asks the service,
# the others read the answer.
STAMP_SQL = "SELECT pg_catalog.statement_timestamp()::pg_catalog.text AS stamp"
memo: dict[str, Any] = {"stamp": None, "values": {}}  # per backend: the running statement's values
MEMO_MAX = 256  # values one statement keeps (a query per row, e.g. of a column, would otherwise pile up)
QUERY_FUNCTIONS = {"vector": "qvl.query_embedding", "halfvec": "qvl.query_embedding_halfvec",
                   "bit": "qvl.query_embedding_bit"}


def statement_memo() -> dict[Any, Any]:
    """What the running statement remembers; emptied when another statement starts. The key is
    statement_timestamp(), set when a statement arrives from the client (statements that functions
    run share their caller's)."""
    stamp = spi.plpy.execute(plan("stamp", STAMP_SQL))[0]["stamp"]
    if memo["stamp"] != stamp:
        memo["stamp"], memo["values"] = stamp, {}
    return memo["values"]


def check_query_type(cfg: Row, kind: str) -> None:
    """A query vector of ``kind`` must meet the vectorizer's column in its own type, or the column is
    cast and its index goes unused. vector also serves halfvec columns: pgvector casts vector to
    halfvec implicitly (the argument is cast, not the column). bit serves every column: a bit
    vectorizer's own, or the binary quantization of a vector/halfvec one (binary_quantize)."""
    storage = cfg["storage"]
    if kind == "bit" or kind == storage or (kind == "vector" and storage == "halfvec"):
        return
    name = cfg["name"]
    if storage == "bit":
        hint = f"Use {QUERY_FUNCTIONS['bit']}({name!r}, ...) with the <~> (Hamming distance) operator."
    else:
        hint = (f"Use {QUERY_FUNCTIONS['vector']}({name!r}, ...): a halfvec beside a vector column would cast "
                f"the column, and its index would go unused.")
    spi.plpy.error(f"qvl: vectorizer {name!r} stores {storage}, and {QUERY_FUNCTIONS[kind]} gives {kind}", hint=hint,
                   sqlstate="42804")


def query_vector(cfg: Row, query_item: Item, storage: str, what: What) -> str:
    """The query's vector text at the vectorizer's size, embedded with its query instruction by the
    model its stored vectors came from (a service serving another refuses: ``models.mismatch``)."""
    instruction = cfg["query_instruction"] or query_instruction()
    return embed_pinned(cfg, query_item, instruction, storage, what)[0]


def query_embedding_sql(name: str, text: str | None, image: bytes | None, video: bytes | None,
                        kind: str) -> str | None:
    """qvl.query_embedding(_halfvec, _bit): one service call per statement and query."""
    values = statement_memo()
    key = (name, kind, text, image, video)
    if key in values:
        return values[key]
    cfg = vectorizer_by_name(name)
    check_query_type(cfg, kind)
    item = make_item([text], [image], [video])
    vec = None
    if item is not None:
        try:
            vec = query_vector(cfg, item, "bit" if kind == "bit" else "vector", lambda i: "the query")
        except Failure as f:
            f.raise_sql()
    if len(values) >= MEMO_MAX:
        values.pop(next(iter(values)))  # the oldest
    values[key] = vec
    return vec
