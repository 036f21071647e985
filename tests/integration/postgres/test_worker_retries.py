"""What the worker does with failures (issue 10 items 1, 6, 7, 11; issue 11 item 9), against a fake
gRPC service that fails on purpose and real Postgres: attempts are counted for every per-item
failure with a backoff per row, claims are ordered, service-level conditions never fail a row,
non-finite vectors are item errors, malformed answers back off, leases are renewed, and failed
rows are named by their key."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.integration.postgres.conftest import running, wait_until
from tests.support.fake_service import FakeService

pytestmark = [pytest.mark.postgres, pytest.mark.service]

CRASH = "the model process exited (exit code -9); retry shortly"


def make_items(conn: psycopg.Connection[Any], captions: list[str]) -> int:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text)")
    row = conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                       "dimensions => 32)").fetchone()
    assert row is not None
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s)", list(enumerate(captions)))
    return int(row[0])


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def embedded(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "SELECT count(*) FROM items WHERE embedding IS NOT NULL"))


def failed(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT pk, error, code, attempts FROM qvl.failed_items('items')").fetchall()


def test_per_item_outage_codes_count_attempts_back_off_and_fail_the_row(conn: psycopg.Connection[Any], qvl_db: str,
                                                                         fake: FakeService) -> None:
    """10.1: UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED on one item, every time: the row is tried
    max_attempts times, with a growing wait between tries, then failed; its neighbours are stored."""
    codes = itertools.cycle(["UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"])
    fake.fake.behave = lambda text: (next(codes), CRASH) if text == "poison" else None
    captions = [f"caption {i}" for i in range(20)]
    captions[7] = "poison"
    make_items(conn, captions)
    with running(qvl_db, fake.target, max_attempts=3):
        wait_until(lambda: len(failed(conn)) == 1 and embedded(conn) == 19, timeout=30, every=0.1)
        time.sleep(1.0)  # nothing more is sent for it
    tries = fake.fake.sent("poison")
    assert len(tries) == 3, f"the row was sent {len(tries)} times"
    gaps = np.diff(tries)
    assert gaps.min() >= 0.2 and gaps[1] > gaps[0] * 1.2, gaps  # a backoff per row, growing
    [(pk, _error, code, attempts)] = failed(conn)
    assert pk == "7" and attempts == 3 and code in {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}
    assert all(len(fake.fake.sent(c)) == 1 for c in captions if c != "poison")


def test_claims_are_ordered_by_queue_time(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    vid = make_items(conn, [f"caption {i}" for i in range(12)])
    # Touch the first rows' queue entries: their new versions sit after the others in the heap.
    conn.execute(f"UPDATE qvl.queue_{vid} SET attempts = attempts WHERE id < 6")
    with running(qvl_db, fake.target, batch=4):
        wait_until(lambda: embedded(conn) == 12, timeout=30)
    order = [text for _, text in fake.fake.seen]
    assert order == [f"caption {i}" for i in range(12)]


def test_service_level_conditions_never_fail_a_row(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """10.6: no embedding model, dimensions the model cannot give, a wedged GPU: every row fails
    the same way, the probe fails too; the worker pauses and says why (log and qvl.worker_status),
    no attempt is counted, and the rows are embedded once the service is healthy."""
    conditions: list[tuple[str, str]] = [
        ("INVALID_ARGUMENT", "this service has no embedding model loaded"),
        ("INVALID_ARGUMENT", "dimensions must be between 32 and 16, got 32"),
        ("INTERNAL", "CUDA error: an illegal memory access was encountered"),
    ]
    state: dict[str, tuple[str, str] | None] = {"now": conditions[0]}
    fake.fake.behave = lambda text: state["now"]
    vid = make_items(conn, [f"caption {i}" for i in range(10)])
    caplog.set_level(logging.INFO, logger="qvl.worker")
    with running(qvl_db, fake.target, max_attempts=2):
        for condition in conditions:
            state["now"] = condition
            seen = len(fake.fake.seen)
            wait_until(lambda seen=seen: len(fake.fake.seen) >= seen + 6, timeout=30)  # it keeps trying (with backoff)
            assert failed(conn) == []
            assert scalar(conn, f"SELECT max(attempts) FROM qvl.queue_{vid}") == 0
            wait_until(lambda c=condition: c[1] in (scalar(conn, "SELECT string_agg(reason, ' ') "  # type: ignore[misc]
                                                               "FROM qvl.worker_status") or ""), timeout=30)
        assert any("paus" in r.getMessage() and conditions[0][1] in str(r.__dict__) for r in caplog.records)
        state["now"] = None
        wait_until(lambda: embedded(conn) == 10, timeout=30)
        wait_until(lambda: scalar(conn, "SELECT string_agg(state, ' ') FROM qvl.worker_status") == "running",
                   timeout=10)
    assert failed(conn) == []


def test_a_non_finite_vector_is_an_item_error(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """10.7: one NaN vector fails its row (after its attempts), not the batch forever."""
    nan = np.full(32, np.nan, dtype=np.float32)
    fake.fake.behave = lambda text: nan if text == "nan row" else None
    captions = [f"caption {i}" for i in range(10)]
    captions[3] = "nan row"
    make_items(conn, captions)
    with running(qvl_db, fake.target, max_attempts=2):
        wait_until(lambda: embedded(conn) == 9 and len(failed(conn)) == 1, timeout=30)
    [(pk, error, _code, attempts)] = failed(conn)
    assert pk == "3" and "finite" in error and attempts == 2
    assert len(fake.fake.sent("nan row")) == 2


def test_a_malformed_answer_is_a_service_error_with_backoff(conn: psycopg.Connection[Any], qvl_db: str,
                                                            fake: FakeService) -> None:
    """10.7: vectors of the wrong size for every row: nothing fails, the worker backs off (no hot
    loop), and the rows are stored once the answers are right."""
    wrong: dict[str, bool] = {"on": True}
    fake.fake.behave = lambda text: np.ones(5, dtype=np.float32) if wrong["on"] else None
    make_items(conn, [f"caption {i}" for i in range(6)])
    with running(qvl_db, fake.target, backoff_base_s=0.5, backoff_cap_s=2.0):
        time.sleep(4.0)
        streams = fake.fake.streams
        assert streams <= 12, f"{streams} streams in 4 s: no backoff"
        assert failed(conn) == [] and embedded(conn) == 0
        wrong["on"] = False
        wait_until(lambda: embedded(conn) == 6, timeout=30)
    assert failed(conn) == []


def test_failed_rows_are_named_by_their_key(conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """11.9: the stored error and the log name the row's key, not its position in a batch."""
    fake.fake.behave = lambda text: ("INVALID_ARGUMENT", "item 4: not a recognised image") if text == "bad" else None
    captions = [f"caption {i}" for i in range(8)]
    captions[6] = "bad"
    make_items(conn, captions)
    caplog.set_level(logging.INFO, logger="qvl.worker")
    with running(qvl_db, fake.target):
        wait_until(lambda: len(failed(conn)) == 1 and embedded(conn) == 7, timeout=30)
    [(pk, error, code, _attempts)] = failed(conn)
    assert pk == "6" and code == "INVALID_ARGUMENT"
    assert "item 4" not in error and error == "row 6 of public.items: not a recognised image"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused and all("row 6 of public.items" in m and "item 4" not in m for m in refused)


def test_a_refused_stream_is_halved_until_the_bad_row_stands_alone_however_long_that_takes(
        conn: psycopg.Connection[Any], qvl_db: str, fake: FakeService) -> None:
    """A service that refuses a whole stream for one item (INVALID_ARGUMENT as the call's status) gets
    halves of it until that row is alone: it fails, its neighbours are written, each sent once more at
    most. The halving takes several streams, longer together than --stall-timeout: each is watched on
    its own (the first stream's watchdog used to run on through them, close the channel, and send the
    batch round again the same way, for ever)."""
    captions = ["refused"] + [f"caption {i}" for i in range(1, 8)]
    make_items(conn, captions)
    fake.fake.refuse = lambda text: ("INVALID_ARGUMENT", "the stream cannot go on") if text == "refused" else None
    fake.fake.delay_s = 0.4  # 7 good rows: 2.8 s of answers after the refusal, against a 1.5 s stall timeout
    with running(qvl_db, fake.target, batch=8, stall_s=1.5):
        wait_until(lambda: len(failed(conn)) == 1 and embedded(conn) == 7, timeout=60)
    [(pk, error, code, attempts)] = failed(conn)
    assert (pk, code, attempts) == ("0", "INVALID_ARGUMENT", 1)
    assert error == "row 0 of public.items: the stream cannot go on"
    assert len(fake.fake.sent("refused")) == 4  # the whole batch, then halves of 8, 4 and 2 until alone
    assert all(len(fake.fake.sent(c)) == 1 for c in captions[1:])  # each good row answered once


def test_a_lease_shorter_than_the_batch_is_renewed(conn: psycopg.Connection[Any], qvl_db: str,
                                                  fake: FakeService) -> None:
    """10.11: a batch that takes longer than the lease keeps its claim: a second worker never
    takes its rows, so each row is sent once."""
    fake.fake.delay_s = 1.0
    vid = make_items(conn, [f"caption {i}" for i in range(4)])
    with running(qvl_db, fake.target, lease_s=1.0, batch=4), running(qvl_db, fake.target, lease_s=1.0, batch=4):
        wait_until(lambda: embedded(conn) == 4, timeout=30)
        time.sleep(1.5)
    counts = {c: len(fake.fake.sent(c)) for c in (f"caption {i}" for i in range(4))}
    assert all(n == 1 for n in counts.values()), counts
    assert scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid}") == 0


def test_a_requeue_while_the_row_is_embedded_is_kept(conn: psycopg.Connection[Any], qvl_db: str,
                                                     fake: FakeService) -> None:
    """10.11: a row queued again while it was being embedded (qvl.reembed) stays queued after the
    write (dequeue by claim), so it is embedded again."""
    fake.fake.delay_s = 0.5
    vid = make_items(conn, [f"caption {i}" for i in range(3)])
    with running(qvl_db, fake.target, batch=3):
        wait_until(lambda: len(fake.fake.seen) >= 1, timeout=30)
        conn.execute(f"SELECT qvl._queue_all({vid})")  # what qvl.reembed does, mid-batch
        wait_until(lambda: scalar(conn, f"SELECT count(*) FROM qvl.queue_{vid}") == 0, timeout=30)
    counts = {c: len(fake.fake.sent(c)) for c in (f"caption {i}" for i in range(3))}
    assert all(n == 2 for n in counts.values()), counts
    assert embedded(conn) == 3
