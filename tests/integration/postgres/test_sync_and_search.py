"""mode => 'sync' (embedded in the inserting statement) and qvl.search (ANN, then the reranker)."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from tests.integration.postgres.conftest import cosines, drain, images, vec
from tests.support.ports import free_port
from tests.support.service import ServiceProcess
from vectorizer_service.core.settings import DEFAULT_QUERY_INSTRUCTION

pytestmark = [pytest.mark.postgres, pytest.mark.service]


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Any:
    with Client(service.grpc_target) as c:
        yield c


def embedding(conn: psycopg.Connection[Any], table: str, key: int) -> np.ndarray | None:
    row = conn.execute(f"SELECT embedding::text FROM {table} WHERE id = %s", (key,)).fetchone()
    assert row is not None
    return vec(row[0]) if row[0] is not None else None


def test_sync_mode_embeds_in_the_statement(conn: psycopg.Connection[Any], client: Client) -> None:
    pic = images(2, offset=300)
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, caption text, image bytea, note text)")
    conn.execute("SELECT qvl.create_vectorizer('s', text_columns => ARRAY['caption'], image_columns => ARRAY['image'], "
                 "mode => 'sync', instruction => 'Represent the product photo.')")
    conn.execute("INSERT INTO s VALUES (1, 'a lamp', %s, 'n'), (2, NULL, NULL, 'empty')", (pic[0],))
    want = client.embed([{"image": pic[0], "text": "a lamp"}], instruction="Represent the product photo.")[0]
    assert cosines(embedding(conn, "s", 1), want) >= 0.9999  # type: ignore[arg-type]
    assert embedding(conn, "s", 2) is None  # nothing to embed

    conn.execute("UPDATE s SET caption = 'a brass lamp' WHERE id = 1")
    want = client.embed([{"image": pic[0], "text": "a brass lamp"}], instruction="Represent the product photo.")[0]
    assert cosines(embedding(conn, "s", 1), want) >= 0.9999  # type: ignore[arg-type]

    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("INSERT INTO s VALUES (3, 'broken', 'junk'::bytea, 'n')")
    assert "row 3 of public.s" in str(err.value)
    assert "on_error => 'queue'" in (err.value.diag.message_hint or "")
    assert conn.execute("SELECT count(*) FROM s").fetchone() == (2,)  # the statement failed
    assert conn.execute("SELECT pending FROM qvl.vectorizer_status").fetchone() == (0,)


def test_sync_mode_falls_back_to_the_queue(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                           client: Client) -> None:
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('s', text_columns => ARRAY['caption'], image_columns => ARRAY['image'], "
                 "mode => 'sync', on_error => 'queue')")
    conn.execute("SELECT qvl.set_service(%s)", (f"http://127.0.0.1:{free_port()}",))  # the service is "down"
    conn.execute("INSERT INTO s VALUES (1, 'stored now, embedded later', NULL)")
    assert embedding(conn, "s", 1) is None
    conn.execute("SELECT qvl.set_service(%s)", (service.http_url,))
    conn.execute("INSERT INTO s VALUES (2, 'poison', 'junk'::bytea)")  # refused: queued, then failed
    assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (2, 0)

    drain(qvl_db, service.grpc_target)
    assert cosines(embedding(conn, "s", 1), client.embed(["stored now, embedded later"])[0]) >= 0.9999  # type: ignore[arg-type]
    assert conn.execute("SELECT pending, failed FROM qvl.vectorizer_status").fetchone() == (0, 1)


def test_search_returns_the_right_rows(conn: psycopg.Connection[Any], qvl_db: str, service: ServiceProcess,
                                       client: Client) -> None:
    n = 40
    pics = images(n, offset=400)
    captions = [f"{['red', 'green', 'blue', 'grey'][i % 4]} {['boat', 'house', 'car', 'tree', 'bird'][i % 5]} {i}"
                for i in range(n)]
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, caption text, image bytea)")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, captions[i], pics[i]) for i in range(n)])
    conn.execute("SELECT qvl.create_vectorizer('items', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['image'])")
    drain(qvl_db, service.grpc_target)
    stored = np.stack([embedding(conn, "items", i) for i in range(n)])  # type: ignore[misc]

    for query, item in (("a green boat", {"text": "a green boat"}), (pics[3], {"image": pics[3]})):
        q = client.embed([item], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
        distance = 1 - cosines(stored, q[None, :])
        nearest = np.argsort(distance)[:12]
        ann = conn.execute("SELECT pk, distance, score FROM qvl.search('items', %s, k => 12, rerank => false)",
                           (query,)).fetchall()
        assert [int(pk) for pk, _, _ in ann] == nearest.tolist()
        np.testing.assert_allclose([d for _, d, _ in ann], distance[nearest], atol=1e-5)
        assert all(s is None for _, _, s in ann)

        hits = conn.execute("SELECT pk, distance, score FROM qvl.search('items', %s, k => 5, candidates => 12)",
                            (query,)).fetchall()
        want = client.rerank(item, [{"image": pics[i], "text": captions[i]} for i in nearest], top_k=5)
        assert [int(pk) for pk, _, _ in hits] == [int(nearest[i]) for i, _ in want.ranking]
        np.testing.assert_allclose([s for _, _, s in hits], [s for _, s in want.ranking], atol=1e-5)

    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT * FROM qvl.search('nope', 'x')")


class _OddService(http.server.BaseHTTPRequestHandler):
    """Answers every POST /v1/embed with 200 and the body the test chose (malformed, NaN, empty)."""

    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_sync_mode_queues_on_a_malformed_answer_or_a_nan_vector(conn: psycopg.Connection[Any]) -> None:
    """Issue 10 item 7: with on_error => 'queue' a 200 that is not JSON, has no vector or holds a
    NaN queues the row instead of failing the INSERT; with on_error => 'fail' it is a qvl error."""
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, caption text)")
    conn.execute("SELECT qvl.create_vectorizer('s', text_columns => ARRAY['caption'], mode => 'sync', "
                 "on_error => 'queue', dimensions => 32)")
    conn.execute("CREATE TABLE f (id int PRIMARY KEY, caption text)")
    conn.execute("SELECT qvl.create_vectorizer('f', text_columns => ARRAY['caption'], mode => 'sync', "
                 "dimensions => 32)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OddService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn.execute("SELECT qvl.set_service(%s)", (f"http://127.0.0.1:{server.server_address[1]}",))
        nan = json.dumps({"embeddings": [{"embedding": [float("nan")] * 32}], "dimensions": 32}).encode()
        bodies = [b"<html>not json</html>", b'{"embeddings": []}', b"[1, 2]", nan]
        for key, body in enumerate(bodies):
            _OddService.body = body
            conn.execute("INSERT INTO s VALUES (%s, 'a caption')", (key,))
            assert embedding(conn, "s", key) is None, body
            with pytest.raises(psycopg.Error) as err:
                conn.execute("INSERT INTO f VALUES (%s, 'a caption')", (key,))
            assert "qvl: the model service" in (err.value.diag.message_primary or ""), (body, err.value)
        assert conn.execute("SELECT pending FROM qvl.vectorizer_status WHERE name = 's'").fetchone() == (len(bodies),)
    finally:
        server.shutdown()


def test_sync_mode_reads_the_row_whatever_its_key_and_bytes(conn: psycopg.Connection[Any], client: Client) -> None:
    """The sync trigger's body gets the row as JSON (qvl._sync_row: PL/Python takes no row argument):
    a uuid key, a numeric key with its trailing zero, bytea and bytea[] images, two tables in one session,
    the queue fallback keyed by a uuid: as the PL/Python trigger read them from TD["new"]."""
    pics = images(3, offset=950)
    conn.execute("CREATE TABLE u (id uuid PRIMARY KEY, caption text, image bytea)")
    conn.execute("SELECT qvl.create_vectorizer('u', text_columns => ARRAY['caption'], image_columns => ARRAY['image'], "
                 "mode => 'sync', on_error => 'queue', dimensions => 32)")
    conn.execute("CREATE TABLE n (id numeric PRIMARY KEY, caption text, shots bytea[], path text)")
    conn.execute("SELECT qvl.create_vectorizer('n', text_columns => ARRAY['caption'], "
                 "image_columns => ARRAY['shots', 'path'], mode => 'sync', dimensions => 32)")
    key = "5b0c3f5e-2d4f-4a57-9a38-3f1c2c9b8e01"
    conn.execute("SET bytea_output = escape")  # the writer's: the trigger's JSON has bytes as hex all the same
    conn.execute("INSERT INTO u VALUES (%s, 'a kite', %s)", (key, pics[0]))
    conn.execute("INSERT INTO n VALUES (12345678901234567890.10, 'two kites', ARRAY[%s, %s]::bytea[], NULL)",
                 (pics[1], pics[2]))
    got_u = conn.execute("SELECT embedding::text FROM u").fetchone()
    got_n = conn.execute("SELECT embedding::text FROM n").fetchone()
    want = client.embed([{"image": pics[0], "text": "a kite"}, {"image": [pics[1], pics[2]], "text": "two kites"}],
                        dimensions=32)
    assert cosines(vec(got_u[0] if got_u else None), want[0]) >= 0.9999
    assert cosines(vec(got_n[0] if got_n else None), want[1]) >= 0.9999

    # A bit column takes the bit string the trigger's body answers (a vectorizer of its own: 'binary').
    conn.execute("CREATE TABLE b (id bigint PRIMARY KEY, caption text)")
    conn.execute("SELECT qvl.create_vectorizer('b', text_columns => ARRAY['caption'], mode => 'sync', "
                 "storage => 'bit', dimensions => 32)")
    conn.execute("INSERT INTO b VALUES (9000000000, 'a kite')")
    assert conn.execute("SELECT embedding::text FROM b").fetchone() == (
        "".join("1" if x > 0 else "0" for x in client.embed(["a kite"], dimensions=32)[0]),)

    said: list[str] = []
    conn.add_notice_handler(lambda d: said.append(d.message_primary or ""))
    conn.execute("INSERT INTO u VALUES ('00000000-0000-0000-0000-00000000000a', 'poison', 'junk'::bytea)")
    assert said and said[-1].startswith("qvl: row 00000000-0000-0000-0000-00000000000a of public.u queued"), said
    assert conn.execute("SELECT id::text FROM qvl.queue_1").fetchall() == [("00000000-0000-0000-0000-00000000000a",)]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("INSERT INTO n VALUES (2.50, 'broken', ARRAY['junk'::bytea], NULL)")
    assert "row 2.50 of public.n" in (err.value.diag.message_primary or ""), err.value.diag.message_primary
    # A path in a text column is sent as a path (a URI the service refuses here), even one that reads like
    # bytea's hex in the row's JSON.
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("INSERT INTO n VALUES (3, 'a path', NULL, '\\x89504e47')")
    assert "row 3 of public.n: image 0: URI scheme 'file' is not allowed" in (err.value.diag.message_primary or "")
