"""The sync trigger's work (``qvl._sync_row``, which the PL/pgSQL trigger ``qvl._sync_embed`` calls):
the vector is in the row when the statement ends; on a failure the row is queued for the worker
instead when the vectorizer says so."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from . import spi
from .errors import Failure
from .items import Row, row_item
from .models import MODEL_MISMATCH, embed_pinned, record
from .spi import plan
from .vectorizers import Quote, pk_text, vectorizer_by_id

SYNC_QUEUE_HINT = (" Or create the vectorizer with on_error => 'queue' to store the row "
                   "now and embed it later through the worker.")


def enqueue_sql(vid: int, pk_columns: Sequence[str], quote: Quote) -> str:
    """Queue one row by primary key ($1, $2, ...), releasing any claim on it."""
    cols = ", ".join(quote(c) for c in pk_columns)
    params = ", ".join(f"${i + 1}" for i in range(len(pk_columns)))
    return (f"INSERT INTO qvl.queue_{vid} ({cols}) VALUES ({params}) ON CONFLICT ({cols}) DO UPDATE "
            f"SET claimed_until = NULL, claimed_by = NULL, not_before = NULL")


def enqueue(cfg: Row, row: Row) -> None:
    query = enqueue_sql(cfg["id"], cfg["pk_columns"], spi.plpy.quote_ident)
    spi.plpy.execute(plan(("enqueue", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])
    spi.plpy.execute(plan("notify", "SELECT pg_catalog.pg_notify('qvl_queue', $1)", ["text"]), [str(cfg["id"])])


def record_cut_sql(vid: int, pk_types: Sequence[str]) -> str:
    """The row of key $1, $2, ... stored from text cut by $N tokens (N = one past the key) into
    qvl.cut_rows, or out of it when $N is 0: as the worker records its rows (the key as text per column)."""
    key = "ARRAY[" + ", ".join(f"${i + 1}::pg_catalog.text" for i in range(len(pk_types))) + "]"
    tokens = f"${len(pk_types) + 1}"
    return (f"WITH whole AS (DELETE FROM qvl.cut_rows WHERE vectorizer = {vid} AND key = {key} AND {tokens} = 0) "
            f"INSERT INTO qvl.cut_rows AS c (vectorizer, key, tokens) SELECT {vid}, {key}, {tokens} WHERE {tokens} > 0 "
            f"ON CONFLICT (vectorizer, key) DO UPDATE SET tokens = EXCLUDED.tokens, cut_at = pg_catalog.now()")


def record_cut(cfg: Row, row: Row, tokens: int) -> None:
    """qvl.vectorizer_status.cut counts the row while its vector comes from cut text (version 12)."""
    if not cfg.get("cut_rows"):
        return
    query = record_cut_sql(cfg["id"], cfg["pk_types"])
    spi.plpy.execute(plan(("record_cut", cfg["id"]), query, [*cfg["pk_types"], "int4"]),
                     [*(row[c] for c in cfg["pk_columns"]), tokens])


def unfail_sql(vid: int, pk_columns: Sequence[str], quote: Quote) -> str:
    """Forget a row's failure ($1, $2, ...: its key): it has just been embedded."""
    where = " AND ".join(f"{quote(c)} = ${i + 1}" for i, c in enumerate(pk_columns))
    return f"DELETE FROM qvl.failed_{vid} WHERE {where}"


def unfail(cfg: Row, row: Row) -> None:
    query = unfail_sql(cfg["id"], cfg["pk_columns"], spi.plpy.quote_ident)
    spi.plpy.execute(plan(("unfail", cfg["id"]), query, cfg["pk_types"]), [row[c] for c in cfg["pk_columns"]])


def sync_row(vid: int, new_json: str) -> str:
    """BEFORE INSERT/UPDATE of a 'sync' vectorizer (``qvl._sync_row``, called by the PL/pgSQL trigger
    ``qvl._sync_embed``): the destination's new value for the row (``to_json(NEW)``), as a JSON object
    {destination: vector text or null} that the trigger writes into the row (jsonb_populate_record)."""
    cfg = vectorizer_by_id(vid)
    return json.dumps({cfg["destination"]: _sync_vector(cfg, json_row(cfg, new_json))})


def json_row(cfg: Row, new_json: str) -> dict[str, Any]:
    """The row as TD["new"] had it, from its JSON, for what the trigger reads: the content columns (text,
    text[], and bytea or bytea[] from their hex) and the key (numeric as Decimal; any value goes back into
    a query as its text)."""
    row: dict[str, Any] = json.loads(new_json, parse_float=Decimal)
    for c in cfg["bytea_columns"]:
        row[c] = _unhex(row[c])
    return row


def _unhex(value: Any) -> Any:
    if isinstance(value, list):
        return [_unhex(v) for v in value]
    return None if value is None else bytes.fromhex(value[2:])  # bytea as JSON: '\\x' and hex digits


def _sync_vector(cfg: Row, new: Row) -> str | None:
    item = row_item(cfg, new)
    if item is None:
        record_cut(cfg, new, 0)
        return None
    where = f"row {pk_text(cfg, new)} of {cfg['source_sql']}"
    try:
        # Asked of the model the column's vectors came from; the first write records the one that answers.
        vector, answered, cut = embed_pinned(cfg, item, cfg["instruction"], cfg["storage"], lambda i: where)
        record(cfg, answered)
        record_cut(cfg, new, cut)
    except Failure as f:
        if cfg["on_error"] != "queue":
            if f.reason != MODEL_MISMATCH:  # its own hint says what to do (a queued row would wait alike)
                f.hint = (f.hint or "") + SYNC_QUEUE_HINT
            f.raise_sql()
        enqueue(cfg, new)
        spi.plpy.notice(f"qvl: {where} queued for the worker: {f.message}")
        return None
    # A row that failed in the worker (queued by on_error => 'queue') and was fixed since: its failure
    # is past (the worker's write does the same for async rows).
    unfail(cfg, new)
    return vector
