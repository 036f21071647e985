"""The batch store: claim rows, renew their lease while they are embedded, write a batch's plan in
one short transaction (every lock taken first, in order, or only the free rows), give rows back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from connectors.postgres.row_encoding import row_item
from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.catalog import Catalog
from connectors.postgres.worker.connections import Blocked, LaneLink
from connectors.postgres.worker.errors import ModelMismatch
from connectors.postgres.worker.features import Features
from connectors.postgres.worker.judge import Claimed, Key, Outcome, Plan, mismatch_words
from connectors.postgres.worker.settings import WorkerSettings

log = logging.getLogger("qvl.worker")
Conn = psycopg.Connection[Any]


def keys(rows: Sequence[Claimed]) -> list[Key]:
    return [r.key for r in rows]


RECORD_MODEL_SQL = "SELECT qvl._record_model(%s, %s, %s)"


class ModelRecorded(Exception):
    """The vectorizer records another model than the batch's (raised inside the write: rolled back)."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(fingerprint)
        self.fingerprint = fingerprint


class BatchStore:
    def __init__(self, settings: WorkerSettings, catalog: Catalog, connect: Callable[[], Conn],
                 stopping: threading.Event) -> None:
        self.settings, self.catalog, self.connect, self.stopping = settings, catalog, connect, stopping
        self.features = Features()  # set by the worker once it has asked the database

    def claim(self, conn: Conn, vectorizer: Vectorizer, me: str) -> list[Claimed]:
        try:
            rows = conn.execute(vectorizer.claim_sql(), {"limit": self.settings.batch, "lease": self.settings.lease_s,
                                                "me": me}).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:  # row-level security, or a missing grant
            raise Blocked(exc) from None
        npk = len(vectorizer.pk_columns)
        out = []
        for r in rows:
            present = bool(r[npk + 1])
            content = dict(zip(vectorizer.content_columns, r[npk + 3:], strict=True))
            out.append(Claimed(tuple(r[:npk]), int(r[npk]), present, r[npk + 2],
                               row_item(vectorizer, content) if present else None))
        return out

    @contextmanager
    def renewing(self, link: LaneLink, vectorizer: Vectorizer, batch: list[Key]) -> Iterator[None]:
        """Extend the rows' lease every third of it while the batch is in hand (a batch may take
        longer than one lease: the RPC timeout is longer). Uses the lane's idle connection."""
        done = threading.Event()
        lease_s = self.settings.lease_s

        def renew() -> None:
            while not done.wait(max(0.2, lease_s / 3)):
                try:
                    if link.conn is not None and not link.conn.closed:
                        link.conn.execute(vectorizer.renew_sql(),
                                          {**vectorizer.key_params(batch), "me": link.me, "lease": lease_s})
                except psycopg.Error as exc:
                    log.debug("could not renew a lease", extra={"error": str(exc).strip()})

        thread = threading.Thread(target=renew, name="qvl-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def release(self, conn: Conn, vectorizer: Vectorizer, batch: list[Key], me: str) -> None:
        """Give rows back untouched, now."""
        params = {**vectorizer.key_params(batch), "me": me}
        with conn.transaction():
            conn.execute(vectorizer.lock_queue_sql(), params)
            conn.execute(vectorizer.release_sql(), params)

    def write(self, link: LaneLink, vectorizer: Vectorizer, plan: Plan) -> Outcome:
        """One short transaction; on a lost connection, retried on a new one (the vectors are in hand).
        Rows that other transactions keep locked past ``write_lock_wait_s`` are left for later and the
        rest written, so one long application transaction holds up its own rows, not the batch."""
        skip_locked = False
        for attempt in range(3):
            if link.conn is None or link.conn.closed:
                link.conn = self.connect()
            try:
                return self._write_once(link.conn, vectorizer, link.me, plan, skip_locked)
            except psycopg.errors.LockNotAvailable:  # an OperationalError, but the connection is fine
                if skip_locked:
                    raise
                skip_locked = True
            except (psycopg.errors.TransactionRollback, psycopg.errors.DeadlockDetected) as exc:
                # A deadlock or serialization failure: nothing was written; the same write again.
                if attempt == 2:
                    raise
                log.warning("the database rolled the write back; retrying it", extra={"error": str(exc).strip()})
                self.stopping.wait(0.1 * (attempt + 1))
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise
                log.warning("lost the database connection while writing; retrying the write",
                            extra={"error": str(exc).strip()})
                link.conn.close()
                self.stopping.wait(0.5 * (attempt + 1))
            except ModelRecorded as exc:
                # Another model's vectors were written first (a worker on a replica of another model):
                # these stay out of the column; the rows go back uncounted and the vectorizer is held.
                self.release(link.conn, vectorizer, keys(plan.rows), link.me)
                fresh = self.catalog.reload(link.conn, vectorizer)
                raise ModelMismatch(mismatch_words(vectorizer.name, exc.fingerprint, fresh and fresh.model_name,
                                                   plan.model, plan.model_name,
                                                   vectorizer.destination if vectorizer.shadow else None)) from None
            except psycopg.errors.InsufficientPrivilege as exc:
                # May read but not write (a missing grant, or a policy that hides rows from the write):
                # give the batch back untouched and say so; nothing is failed or dropped.
                self.release(link.conn, vectorizer, keys(plan.rows), link.me)
                raise Blocked(exc) from None
            except psycopg.errors.DataException:
                # e.g. qvl.reembed changed the size under us: give the batch back, read the definition again.
                self.catalog.invalidate()
                self.release(link.conn, vectorizer, keys(plan.rows), link.me)
                return Outcome(released=len(plan.rows))
            except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
                # The table changed while the batch was embedded (a renamed column or table, which the
                # schema guard followed): write with the definition as it is now. Rows of a vectorizer
                # dropped meanwhile have nowhere to go.
                fresh = self.catalog.reload(link.conn, vectorizer)
                if fresh is None:
                    return Outcome()
                if fresh == vectorizer or attempt == 2:
                    raise
                log.info(f"vectorizer {vectorizer.name}: its table changed while a batch was embedded; writing it with "
                         f"the new definition", extra={"vectorizer": vectorizer.name})
                vectorizer = fresh
        raise AssertionError("unreachable")

    def _write_once(self, conn: Conn, vectorizer: Vectorizer, me: str, plan: Plan, skip_locked: bool) -> Outcome:
        out = Outcome()
        with conn.transaction():
            if not skip_locked:
                # Every lock the batch needs, taken first and in a fixed order (see lock_source_sql),
                # waiting at most write_lock_wait_s for each.
                batch = vectorizer.key_params(keys(plan.rows))
                conn.execute(f"SET LOCAL lock_timeout = {max(1, round(self.settings.write_lock_wait_s * 1000))}")
                conn.execute(vectorizer.lock_source_sql(), batch)
                conn.execute(vectorizer.lock_queue_sql(), batch)
            else:
                plan, out.busy = self._lock_free(conn, vectorizer, me, plan)
            self._apply(conn, vectorizer, me, plan, out)
        return out

    def _lock_free(self, conn: Conn, vectorizer: Vectorizer, me: str, plan: Plan) -> tuple[Plan, set[Key]]:
        """Lock only the rows free now (a row whose table row is held, a deleted one has none, or whose
        queue row is held is left out of this write): the plan for those, and the keys left out."""
        batch = vectorizer.key_params(keys(plan.rows))
        source = {tuple(r) for r in conn.execute(vectorizer.lock_free_source_sql(), batch).fetchall()}
        queue = {tuple(r) for r in conn.execute(vectorizer.lock_free_queue_sql(), batch).fetchall()}
        free = {r.key for r in plan.rows if r.key in queue and (r.key in source or not r.present)}
        busy = {r.key for r in plan.rows} - free
        # Those whose queue row is free come back after a short wait; a queue row that is held
        # belongs to a transaction that changed the row, and its commit queues the row afresh.
        later = [k for k in busy if k in queue]
        if later:
            conn.execute(vectorizer.release_later_sql(), {**vectorizer.key_params(later), "me": me,
                                                 "qvl_delay": self.settings.retry_delay_s})
        return plan.only(free), busy

    def _write_chunks(self, conn: Conn, vectorizer: Vectorizer, me: str, plan: Plan) -> int:
        """A chunked vectorizer's rows: each row's chunks replaced (old ones deleted, new ones inserted) in
        the batch's transaction, so a reader sees a row's old chunks or its new ones, never a mix; only
        rows this worker still holds whose content still hashes as embedded (as write_sql). Returns how
        many rows were written."""
        params = {**vectorizer.key_params([w.row.key for w in plan.writes]), "me": me,
                  "qvl_hash": [w.row.content_hash for w in plan.writes]}
        ok = {tuple(r) for r in conn.execute(vectorizer.chunk_rows_sql(), params).fetchall()}
        if not ok:
            return 0
        written = [w for w in plan.writes if w.row.key in ok]
        conn.execute(vectorizer.delete_chunks_sql(), vectorizer.key_params([w.row.key for w in written]))
        pieces = [(w.row.key, c) for w in written for c in w.chunks]
        if pieces:
            conn.execute(vectorizer.insert_chunks_sql(), {
                **vectorizer.key_params([k for k, _ in pieces]), "qvl_seq": [c.seq for _, c in pieces],
                "qvl_locator": [c.locator for _, c in pieces], "qvl_vec": [c.vector for _, c in pieces]})
        conn.execute(vectorizer.dequeue_sql(), {**vectorizer.key_params([w.row.key for w in written]), "me": me})
        return len(written)

    def _apply(self, conn: Conn, vectorizer: Vectorizer, me: str, plan: Plan, out: Outcome) -> None:
        if plan.vectors and vectorizer.shadow:
            # A shadow's model was recorded when it was made, and its streams are pinned to it: vectors of
            # any other model (a service older than fingerprints) never land in the shadow column.
            if plan.model != vectorizer.model_fingerprint:
                raise ModelRecorded(str(vectorizer.model_fingerprint))
        elif plan.vectors and plan.model is not None and self.features.model_identity:
            # The vectors' model, recorded by the first write; a write of another model's vectors is
            # rolled back whole (ModelRecorded), so one column never holds two models' vectors.
            row = conn.execute(RECORD_MODEL_SQL, (vectorizer.id, plan.model, plan.model_name)).fetchone()
            if row is not None and row[0] != plan.model:
                raise ModelRecorded(row[0])
        if plan.writes and vectorizer.chunked:
            out.written = self._write_chunks(conn, vectorizer, me, plan)
            out.stale = len(plan.writes) - out.written
        elif plan.writes:
            params = {**vectorizer.key_params([w.row.key for w in plan.writes]), "me": me,
                      "qvl_hash": [w.row.content_hash for w in plan.writes],
                      "qvl_vec": [w.vector for w in plan.writes]}
            row = conn.execute(vectorizer.write_sql(), params).fetchone()
            out.written = int(row[0]) if row else 0
            out.stale = len(plan.writes) - out.written  # changed since the claim: the newer version wins
            if self.features.cut_rows:
                # Also for a batch cut nowhere: a row written whole now leaves qvl.cut_rows. A stale row's
                # entry is set right by the write of its newer version.
                conn.execute(vectorizer.record_cut_sql(), {**vectorizer.key_params([w.row.key for w in plan.writes]),
                                                           "qvl_cut": [w.cut for w in plan.writes]})
                out.cut = sum(1 for w in plan.writes if w.cut)
        if plan.failures:
            params = {**vectorizer.key_params([f.row.key for f in plan.failures]), "me": me,
                      "qvl_error": [f.message for f in plan.failures], "qvl_code": [f.code for f in plan.failures]}
            out.failed = conn.execute(vectorizer.fail_sql(), params).rowcount
        if plan.retries:
            params = {**vectorizer.key_params([r.row.key for r in plan.retries]), "me": me,
                      "qvl_delay": [r.delay_s for r in plan.retries], "qvl_error": [r.message for r in plan.retries]}
            out.retried = conn.execute(vectorizer.retry_later_sql(), params).rowcount
        if plan.gone:
            gone = {**vectorizer.key_params(keys(plan.gone)), "me": me}
            out.gone = conn.execute(vectorizer.forget_gone_sql(), gone).rowcount
            if vectorizer.chunked:
                conn.execute(vectorizer.forget_gone_chunks_sql(), gone)
        batch = {**vectorizer.key_params(keys(plan.rows)), "me": me}
        out.released = conn.execute(vectorizer.release_sql(), batch).rowcount
