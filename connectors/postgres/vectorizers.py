"""Vectorizer definitions as the worker sees them (from ``qvl.vectorizer``) and the SQL it runs.

Every statement addresses one vectorizer's queue and table by primary key; the content hash
(md5 over the embedded columns) lets a write land only if the row still holds what was embedded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import psycopg

LOAD_SQL = """
SELECT v.id, v.name, format('%I.%I', n.nspname, c.relname) AS source, v.pk_columns::text[], v.pk_types,
       v.text_columns::text[], v.image_columns::text[], v.video_columns::text[], v.destination::text,
       v.dimensions, v.storage, v.instruction, v.mode, qvl._vector_schema() AS vector_schema,
       (SELECT json_object_agg(a.attname, format_type(a.atttypid, a.atttypmod))
          FROM pg_attribute a WHERE a.attrelid = v.source AND a.attnum > 0 AND NOT a.attisdropped) AS types,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(format('qvl.queue_%s', v.id))
                  AND a.attname = 'not_before' AND NOT a.attisdropped) AS backoff_columns,
       -- Read through to_jsonb: NULL in a schema older than version 11, which has no such columns.
       to_jsonb(v) ->> 'model_fingerprint' AS model_fingerprint, to_jsonb(v) ->> 'model_name' AS model_name,
       -- Version 13, chunked vectorizers (NULL before): the document columns, the chunking, the chunk table.
       to_jsonb(v) -> 'document_columns' AS document_columns, to_jsonb(v) -> 'chunking' AS chunking,
       (SELECT format('%I.%I', cn.nspname, cc.relname) FROM pg_class cc JOIN pg_namespace cn ON cn.oid = cc.relnamespace
         WHERE cc.oid = (to_jsonb(v) ->> 'chunk_table')::regclass) AS chunk_table
  FROM qvl.vectorizer v
  JOIN pg_class c ON c.oid = v.source
  JOIN pg_namespace n ON n.oid = c.relnamespace
 ORDER BY v.id
"""


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ChunkStatements:
    """A chunked vectorizer's write, one transaction per batch (BatchStore._write_chunks): the statements
    ``Vectorizer`` gets from here, over its keys, queue, source and chunk table."""

    def chunk_rows_sql(self) -> str:
        """The keys of the rows to write: still held by this worker (their queue rows locked until the
        transaction ends) and whose content hash still matches what was embedded."""
        pk = ", ".join("q." + ident(c) for c in self.pk_columns)
        return f"""
WITH v AS (SELECT * FROM {self._unnest((("qvl_hash", "text"),))}),
held AS (
    SELECT {pk} FROM {self.queue} q JOIN v ON {self._keys("q", "v")} WHERE q.claimed_by = %(me)s FOR UPDATE OF q
)
SELECT {", ".join("s." + ident(c) for c in self.pk_columns)}
  FROM {self.source} s JOIN v ON {self._keys("s", "v")} JOIN held h ON {self._keys("h", "v")}
 WHERE {self.content_hash("s")} = v.qvl_hash"""

    def delete_chunks_sql(self) -> str:
        """Every chunk of the given rows."""
        return f"DELETE FROM {self.chunk_table} c USING {self._unnest()} WHERE {self._keys('c', 'v')}"

    def insert_chunks_sql(self) -> str:
        """New chunks: one array element per chunk (its row's key, sequence number, locator, vector)."""
        cols = ", ".join(ident(c) for c in self.pk_columns)
        extra = (("qvl_seq", "int"), ("qvl_locator", "jsonb"), ("qvl_vec", "text"))
        return f"""
INSERT INTO {self.chunk_table} ({cols}, chunk_seq, locator, embedding)
SELECT {", ".join("v." + ident(c) for c in self.pk_columns)}, v.qvl_seq, v.qvl_locator, v.qvl_vec::{self.vector_type}
  FROM {self._unnest(extra)}"""

    def dequeue_sql(self) -> str:
        """The written rows out of the queue (those still claimed by this worker) and the failed table."""
        return f"""
WITH dequeued AS (
    DELETE FROM {self.queue} q USING {self._unnest()} WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s
    RETURNING 1
), unfailed AS (
    DELETE FROM {self.failed} f USING {self._unnest()} WHERE {self._keys("f", "v")} RETURNING 1
)
SELECT (SELECT count(*) FROM dequeued), (SELECT count(*) FROM unfailed)"""

    def forget_gone_chunks_sql(self) -> str:
        """The chunks of rows deleted since they were queued (the table's trigger deletes them too; this
        keeps none of a row whose delete raced a write)."""
        return f"""
DELETE FROM {self.chunk_table} c USING {self._unnest()}
 WHERE {self._keys("c", "v")} AND NOT EXISTS (SELECT 1 FROM {self.source} s WHERE {self._keys("s", "v")})"""


@dataclass(frozen=True)
class Vectorizer(ChunkStatements):
    id: int
    name: str
    source: str  # quoted, schema-qualified
    pk_columns: tuple[str, ...]
    pk_types: tuple[str, ...]
    text_columns: tuple[str, ...]
    image_columns: tuple[str, ...]
    video_columns: tuple[str, ...]
    destination: str
    dimensions: int
    storage: str  # vector | halfvec | bit
    instruction: str | None
    mode: str
    vector_schema: str
    column_types: dict[str, str]
    # The queue has not_before and last_error (schema version 6). A database not upgraded yet keeps
    # a failed row's backoff in claimed_until instead, as before.
    backoff_columns: bool = True
    # The model the column's vectors came from (schema version 11; None: none recorded yet). The worker
    # pins its streams to it; its first write records the model that served it (qvl._record_model).
    model_fingerprint: str | None = None
    model_name: str | None = None
    # A chunked vectorizer (schema version 13): the service splits each row's item as ``chunking`` says
    # (EmbedOptions.chunking) and its chunks are rows of ``chunk_table`` (quoted, schema-qualified).
    document_columns: tuple[str, ...] = ()
    chunking: dict[str, Any] | None = None
    chunk_table: str | None = None
    # A blue/green shadow (schema version 14): the same vectorizer's rows embedded into its shadow column
    # (``destination``, ``dimensions``) by its new model (``model_fingerprint``), queued in a queue of its
    # own; only a worker started with --shadow (on the new model's service) serves it.
    shadow: bool = False

    @property
    def queue(self) -> str:
        return f"qvl.shadow_queue_{self.id}" if self.shadow else f"qvl.queue_{self.id}"

    @property
    def failed(self) -> str:
        return f"qvl.shadow_failed_{self.id}" if self.shadow else f"qvl.failed_{self.id}"

    @property
    def label(self) -> str:
        """The name the worker's log and status give it."""
        return f"{self.name} (shadow {self.destination})" if self.shadow else self.name

    @property
    def content_columns(self) -> tuple[str, ...]:
        return self.text_columns + self.image_columns + self.video_columns + self.document_columns

    @property
    def chunked(self) -> bool:
        return self.chunking is not None

    @property
    def split_column(self) -> str | None:
        """The column a chunked vectorizer's chunking splits: its document (pages), its video (video
        windows), its last text column (passages)."""
        kind = (self.chunking or {}).get("type")
        columns = {"pages": self.document_columns, "video": self.video_columns, "text": self.text_columns[-1:]}
        return next(iter(columns.get(kind, ())), None)

    @property
    def encoding(self) -> str:
        return "binary" if self.storage == "bit" else "float32"

    @property
    def vector_type(self) -> str:
        if self.storage == "bit":
            return f"bit({self.dimensions})"
        return f"{self.vector_schema}.{self.storage}({self.dimensions})"

    def schema_drift(self) -> str | None:
        """Why the table no longer matches this definition (a column it names renamed or dropped, the
        destination retyped), or None. The schema guard follows or refuses such changes on the full
        install; the managed one has no event triggers, so the worker holds the vectorizer instead
        of failing its rows."""
        if not self.column_types:
            return None  # a catalog row without the table's columns (nothing to compare)
        # A chunked vectorizer's destination is a table of its own (its chunks), not a column of this one.
        own = () if self.chunked else (self.destination,)
        gone = [c for c in (*self.pk_columns, *self.content_columns, *own) if c not in self.column_types]
        if gone:
            return (f"the table {self.source} has no column {', '.join(gone)} any more (renamed or dropped since "
                    f"the vectorizer was made, with no schema guard to follow it): its rows stay queued; rename it "
                    f"back, or drop and create the vectorizer again")
        if self.chunked:
            return None
        have = self.column_types[self.destination]
        if have.split(".")[-1] != self.vector_type.split(".")[-1]:
            return (f"the column {self.destination} of {self.source} is {have}, not {self.vector_type} (retyped "
                    f"since the vectorizer was made): its rows stay queued; retype it back, or "
                    f"SELECT qvl.reembed('{self.name}', dimensions => N)")
        return None

    # -- SQL fragments -----------------------------------------------------------------------
    def content_hash(self, alias: str = "s") -> str:
        """md5 over each embedded column (bytea hashed as bytes, the rest as text; NULL as '-')."""
        parts = []
        for col in self.content_columns:
            ref = f"{alias}.{ident(col)}"
            digest = f"md5({ref})" if self.column_types.get(col) == "bytea" else f"md5({ref}::text)"
            parts.append(f"coalesce({digest}, '-')")
        return "md5(" + " || ".join(parts) + ")"

    def _keys(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{ident(c)} = {right}.{ident(c)}" for c in self.pk_columns)

    def _unnest(self, extra: tuple[tuple[str, str], ...] = ()) -> str:
        """unnest(%(k0)s::type[], ..., %(x)s::type[]) AS v(pk..., x...)."""
        args = [f"%(k{i})s::{t}[]" for i, t in enumerate(self.pk_types)] + [f"%({n})s::{t}[]" for n, t in extra]
        names = [ident(c) for c in self.pk_columns] + [n for n, _ in extra]
        return f"unnest({', '.join(args)}) AS v({', '.join(names)})"

    def key_params(self, keys: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
        return {f"k{i}": [k[i] for k in keys] for i in range(len(self.pk_columns))}

    def claim_sql(self) -> str:
        """Claim the oldest claimable rows: not leased (or the lease ran out) and past their backoff."""
        pk = [ident(c) for c in self.pk_columns]
        content = "".join(f", s.{ident(c)}" for c in self.content_columns)
        backoff = " AND (not_before IS NULL OR not_before <= now())" if self.backoff_columns else ""
        return f"""
WITH picked AS (
    SELECT {", ".join(pk)} FROM {self.queue}
     WHERE (claimed_until IS NULL OR claimed_until < now()){backoff}
     ORDER BY queued_at
     LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE {self.queue} q SET claimed_until = now() + make_interval(secs => %(lease)s), claimed_by = %(me)s
      FROM picked p WHERE {self._keys("q", "p")}
    RETURNING {", ".join("q." + c for c in pk)}, q.attempts, q.queued_at
)
SELECT {", ".join("c." + c for c in pk)}, c.attempts, s.{pk[0]} IS NOT NULL AS present,
       {self.content_hash("s")} AS content_hash{content}
  FROM claimed c LEFT JOIN {self.source} s ON {self._keys("s", "c")}
 ORDER BY c.queued_at"""

    def _key_order(self, alias: str) -> str:
        return ", ".join(f"{alias}.{ident(c)}" for c in self.pk_columns)

    def lock_source_sql(self) -> str:
        """Lock the batch's table rows in primary-key order, before anything else of the batch's write.

        Users' transactions lock a table row and then (through the queueing trigger) its queue row, and
        multi-row updates usually go in key order: the worker takes its locks in the same order (table
        rows by key, then queue rows by key), so while it waits it holds nothing a user waits for.
        FOR NO KEY UPDATE is what the UPDATE of the vector column takes anyway (foreign keys still pass).

        A chunked vectorizer writes no table row (and its role may not lock one): its write holds the
        queue rows, which the table's triggers take before they change or delete a row's chunks.
        """
        if self.chunked:
            return "SELECT 0"
        return f"""
SELECT count(*) FROM (
    SELECT 1 FROM {self.source} s JOIN {self._unnest()} ON {self._keys("s", "v")}
     ORDER BY {self._key_order("s")} FOR NO KEY UPDATE OF s
) locked"""

    def lock_queue_sql(self) -> str:
        """Lock the batch's queue rows in primary-key order (after its table rows: see lock_source_sql)."""
        return f"""
SELECT count(*) FROM (
    SELECT 1 FROM {self.queue} q JOIN {self._unnest()} ON {self._keys("q", "v")}
     ORDER BY {self._key_order("q")} FOR UPDATE OF q
) locked"""

    def lock_free_source_sql(self) -> str:
        """Lock the batch's table rows that no other transaction holds, and say which (the write's
        second try, once waiting in lock_source_sql ran out: SKIP LOCKED never waits, so the order
        no longer matters). A chunked vectorizer's: the rows that exist, unlocked (see lock_source_sql)."""
        if self.chunked:
            return f"""
SELECT {self._key_order("s")} FROM {self.source} s JOIN {self._unnest()} ON {self._keys("s", "v")}"""
        return f"""
SELECT {self._key_order("s")} FROM {self.source} s JOIN {self._unnest()} ON {self._keys("s", "v")}
 FOR NO KEY UPDATE OF s SKIP LOCKED"""

    def lock_free_queue_sql(self) -> str:
        """As lock_free_source_sql, for the batch's queue rows."""
        return f"""
SELECT {self._key_order("q")} FROM {self.queue} q JOIN {self._unnest()} ON {self._keys("q", "v")}
 FOR UPDATE OF q SKIP LOCKED"""

    def release_later_sql(self) -> str:
        """Give rows back claimable after ``qvl_delay`` seconds, no attempt counted (their table row
        was locked by another transaction: nothing is wrong with them)."""
        return f"""
UPDATE {self.queue} q SET claimed_by = NULL, claimed_until = now() + make_interval(secs => %(qvl_delay)s)
  FROM {self._unnest()} WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s"""

    def renew_sql(self) -> str:
        """Extend the lease of rows this worker still holds (a batch may outlast one lease). Rows locked
        right now are skipped, never waited for: a user's transaction queueing one again holds it (and
        resets the claim anyway); waiting while holding others could deadlock with that transaction."""
        return f"""
UPDATE {self.queue} q SET claimed_until = now() + make_interval(secs => %(lease)s)
  FROM (SELECT {self._key_order("l")} FROM {self.queue} l JOIN {self._unnest()} ON {self._keys("l", "v")}
         WHERE l.claimed_by = %(me)s ORDER BY {self._key_order("l")} FOR UPDATE OF l SKIP LOCKED) v
 WHERE {self._keys("q", "v")}"""

    def write_sql(self) -> str:
        """Store vectors of rows this worker still holds and whose content hash still matches; dequeue
        and un-fail those rows. A row whose lease ran out and that another lane claimed meanwhile (a
        database restart can outlast a lease) is left to that claim: each row is written once. A row
        queued again meanwhile (qvl.reembed) is left to its new queue entry."""
        pk = ", ".join("q." + ident(c) for c in self.pk_columns)
        return f"""
WITH v AS (SELECT * FROM {self._unnest((("qvl_hash", "text"), ("qvl_vec", "text")))}),
held AS (
    SELECT {pk} FROM {self.queue} q JOIN v ON {self._keys("q", "v")} WHERE q.claimed_by = %(me)s FOR UPDATE OF q
),
written AS (
    UPDATE {self.source} s SET {ident(self.destination)} = v.qvl_vec::{self.vector_type}
      FROM v JOIN held h ON {self._keys("h", "v")}
     WHERE {self._keys("s", "v")} AND {self.content_hash("s")} = v.qvl_hash
    RETURNING {", ".join("s." + ident(c) for c in self.pk_columns)}
), dequeued AS (
    -- Only rows still claimed by this worker: one queued again meanwhile (qvl.reembed) stays queued.
    DELETE FROM {self.queue} q USING written w WHERE {self._keys("q", "w")} AND q.claimed_by = %(me)s RETURNING 1
), unfailed AS (
    DELETE FROM {self.failed} f USING written w WHERE {self._keys("f", "w")} RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM dequeued)"""

    def record_cut_sql(self) -> str:
        """Rows just written: those whose text the service cut (``qvl_cut`` > 0 tokens) into qvl.cut_rows, the
        others out of it (embedded whole now). The key as text per column, as qvl.prune_failed casts it back."""
        key = "ARRAY[" + ", ".join(f"v.{ident(c)}::text" for c in self.pk_columns) + "]"
        return f"""
WITH v AS (SELECT * FROM {self._unnest((("qvl_cut", "int"),))}),
whole AS (
    DELETE FROM qvl.cut_rows c USING v WHERE c.vectorizer = {self.id} AND c.key = {key} AND v.qvl_cut = 0
)
INSERT INTO qvl.cut_rows AS c (vectorizer, key, tokens)
SELECT {self.id}, {key}, v.qvl_cut FROM v WHERE v.qvl_cut > 0
ON CONFLICT (vectorizer, key) DO UPDATE SET tokens = EXCLUDED.tokens, cut_at = now()"""

    def fail_sql(self) -> str:
        """Move rows this worker still holds to the failed table, with their error."""
        cols = ", ".join(ident(c) for c in self.pk_columns)
        return f"""
WITH v AS (SELECT * FROM {self._unnest((("qvl_error", "text"), ("qvl_code", "text")))}),
d AS (
    DELETE FROM {self.queue} q USING v WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s
    RETURNING {", ".join("q." + ident(c) for c in self.pk_columns)}, q.attempts
)
INSERT INTO {self.failed} AS f ({cols}, error, code, attempts, failed_at)
SELECT {", ".join("d." + ident(c) for c in self.pk_columns)}, v.qvl_error, v.qvl_code, d.attempts + 1, now()
  FROM d JOIN v ON {self._keys("d", "v")}
ON CONFLICT ({cols}) DO UPDATE SET error = EXCLUDED.error, code = EXCLUDED.code,
    attempts = f.attempts + 1, failed_at = EXCLUDED.failed_at"""

    def retry_later_sql(self) -> str:
        """Count an attempt and keep the rows queued, claimable again after their own delay."""
        if not self.backoff_columns:
            return f"""
UPDATE {self.queue} q SET attempts = q.attempts + 1, claimed_by = NULL,
       claimed_until = now() + make_interval(secs => v.qvl_delay)
  FROM {self._unnest((("qvl_delay", "float8"), ("qvl_error", "text")))}
 WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s"""
        return f"""
UPDATE {self.queue} q SET attempts = q.attempts + 1, claimed_by = NULL, claimed_until = NULL,
       not_before = now() + make_interval(secs => v.qvl_delay), last_error = v.qvl_error
  FROM {self._unnest((("qvl_delay", "float8"), ("qvl_error", "text")))}
 WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s"""

    def release_sql(self) -> str:
        """Give rows back at once (transient failure, shutdown, or the row changed meanwhile)."""
        return f"""
UPDATE {self.queue} q SET claimed_until = NULL, claimed_by = NULL
  FROM {self._unnest()} WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s"""

    def forget_gone_sql(self) -> str:
        """Queue rows whose source row was deleted: nothing to embed."""
        return f"""
DELETE FROM {self.queue} q USING {self._unnest()}
 WHERE {self._keys("q", "v")} AND q.claimed_by = %(me)s
   AND NOT EXISTS (SELECT 1 FROM {self.source} s WHERE {self._keys("s", "v")})"""

    def pending_sql(self) -> str:
        return f"SELECT count(*), count(*) FILTER (WHERE claimed_by IS NOT NULL) FROM {self.queue}"


# The shadows (version 14): each a vectorizer's rows, into another column, by another model: one being
# filled, or the old side a switch left, kept current while its queue is there. A chunked vectorizer's
# shadow is a chunk table of its own (version 15; NULL before, and for a column).
SHADOWS_SQL = """
SELECT s.vectorizer_id, s.destination::text, s.dimensions, s.model_fingerprint, s.model_name,
       (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = (to_jsonb(s) ->> 'chunk_table')::regclass) AS chunk_table
  FROM qvl.shadow s WHERE to_regclass(format('qvl.shadow_queue_%s', s.vectorizer_id)) IS NOT NULL
 ORDER BY s.vectorizer_id
"""


def load_vectorizers(conn: psycopg.Connection[Any], names: tuple[str, ...] = (), *,
                     shadows: bool = False) -> list[Vectorizer]:
    """The vectorizers (``names``; empty: all); ``shadows``: their blue/green shadows being filled instead."""
    live = _load_live(conn, names)
    if not shadows:
        return live
    if conn.execute("SELECT to_regclass('qvl.shadow') IS NULL").fetchone() == (True,):
        return []
    by_id = {v.id: v for v in live}
    return [dataclasses.replace(by_id[vid], destination=dest, dimensions=dims, model_fingerprint=fp,
                                model_name=model, shadow=True,
                                chunk_table=chunks if by_id[vid].chunked else by_id[vid].chunk_table)
            for vid, dest, dims, fp, model, chunks in conn.execute(SHADOWS_SQL).fetchall() if vid in by_id]


def _load_live(conn: psycopg.Connection[Any], names: tuple[str, ...]) -> list[Vectorizer]:
    out = []
    for row in conn.execute(LOAD_SQL).fetchall():
        (vid, name, source, pk_columns, pk_types, text_columns, image_columns, video_columns, destination,
         dimensions, storage, instruction, mode, vector_schema, types, backoff_columns, fingerprint, model,
         document_columns, chunking, chunk_table) = row
        if names and name not in names:
            continue
        out.append(Vectorizer(vid, name, source, tuple(pk_columns), tuple(pk_types), tuple(text_columns),
                              tuple(image_columns), tuple(video_columns), destination, dimensions, storage,
                              instruction, mode, vector_schema, dict(types or {}), bool(backoff_columns),
                              fingerprint, model, tuple(document_columns or ()), chunking, chunk_table))
    return out
