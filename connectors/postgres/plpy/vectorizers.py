"""A vectorizer's catalog row (``qvl.vectorizer`` with its table's qualified name) and the SQL
that names its table's key and content columns."""

from __future__ import annotations

from collections.abc import Callable

from . import spi
from .items import Row
from .spi import plan

Quote = Callable[[str], str]  # quotes an identifier (spi.plpy.quote_ident)

VECTORIZER_SQL = """
SELECT v.id, v.name, v.pk_columns, v.pk_types, v.text_columns, v.image_columns, v.video_columns,
       v.destination, v.dimensions, v.storage, v.instruction, v.query_instruction, v.mode, v.on_error,
       v.model_fingerprint, v.model_name,
       -- Its own service (version 14, a blue/green switch; NULL before, and when it uses qvl.service's).
       pg_catalog.to_jsonb(v) OPERATOR(pg_catalog.->>) 'service_url' AS service_url,
       pg_catalog.format('%%I.%%I', n.nspname, c.relname) AS source_sql, c.relname AS source_name,
       -- A chunked vectorizer's (version 13; read through to_jsonb: NULL before): jsonb as text.
       pg_catalog.to_jsonb(v) OPERATOR(pg_catalog.->>) 'chunking' AS chunking,
       pg_catalog.to_jsonb(v) OPERATOR(pg_catalog.->>) 'document_columns' AS document_columns,
       (SELECT pg_catalog.format('%%I.%%I', cn.nspname, cc.relname) FROM pg_catalog.pg_class cc
          JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
         WHERE cc.oid = (pg_catalog.to_jsonb(v) OPERATOR(pg_catalog.->>) 'chunk_table')::pg_catalog.regclass)
           AS chunk_sql,
       (SELECT format('%%I', ns.nspname) FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace WHERE e.extname = 'vector') AS vector_schema,
       pg_catalog.to_regclass('qvl.cut_rows') IS NOT NULL AS cut_rows  -- version 12: rows stored from cut text
  FROM qvl.vectorizer v
  JOIN pg_catalog.pg_class c ON c.oid = v.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE %s"""


# A search holds its vectorizer until its transaction ends (shared; qvl._drop_second_side takes it
# exclusively): a blue/green drop of the column or chunk table a running search resolved waits for it
# (sql/idempotent/014_blue_green_switch.sql). The first key is qvl's class of advisory locks.
HOLD_SQL = "SELECT pg_catalog.pg_advisory_xact_lock_shared(7123, $1)"


def vectorizer_by_name(name: str) -> Row:
    by_name = plan("vec_by_name", VECTORIZER_SQL % "v.name = $1", ["text"])
    rows = spi.plpy.execute(by_name, [name])
    if rows.nrows() == 0:
        spi.plpy.error(f"qvl: no vectorizer named {name!r}", hint="See SELECT name FROM qvl.vectorizer_status;",
                       sqlstate="42704")
    spi.plpy.execute(plan("vec_hold", HOLD_SQL, ["int4"]), [rows[0]["id"]])
    # Read again once held: a drop that committed between the first read and the hold is seen now.
    rows = spi.plpy.execute(by_name, [name])
    if rows.nrows() == 0:
        spi.plpy.error(f"qvl: vectorizer {name!r} was dropped", sqlstate="42704")
    return rows[0]


# The sync trigger's (by id) also names the media columns that hold bytes (bytea, bytea[]): the row reaches
# it as JSON (qvl._sync_row), where bytes are '\\x' hex text, as a path in a text column could be.
BY_ID_SQL = VECTORIZER_SQL.replace("SELECT v.id,", """SELECT
       ARRAY(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = v.source AND a.attnum > 0 AND NOT a.attisdropped
                AND a.atttypid IN ('pg_catalog.bytea'::pg_catalog.regtype, 'pg_catalog._bytea'::pg_catalog.regtype)
                AND a.attname::pg_catalog.text = ANY (v.image_columns || v.video_columns)) AS bytea_columns,
       v.id,""", 1)


def vectorizer_by_id(vid: int) -> Row:
    rows = spi.plpy.execute(plan("vec_by_id", BY_ID_SQL % "v.id = $1", ["int4"]), [vid])
    if rows.nrows() == 0:
        spi.plpy.error(f"qvl: vectorizer {vid} is gone; its trigger should have been dropped", sqlstate="42704")
    return rows[0]


def pk_text(cfg: Row, row: Row) -> str:
    values = [row[c] for c in cfg["pk_columns"]]
    return str(values[0]) if len(values) == 1 else "(" + ",".join(map(str, values)) + ")"


def key_sql(cfg: Row, rel: str, quote: Quote) -> str:
    """The row's primary key as text (ROW(...)::text when composite)."""
    keys = ", ".join(f"{rel}.{quote(c)}" for c in cfg["pk_columns"])
    return f"{keys}::pg_catalog.text" if len(cfg["pk_columns"]) == 1 else f"ROW({keys})::pg_catalog.text"


def content_columns(cfg: Row) -> list[str]:
    return list(cfg["text_columns"]) + list(cfg["image_columns"]) + list(cfg["video_columns"])
