"""qvl.set_service with several replicas ('http://a:8080,http://b:8080'): each address is checked
when it is set, and the SQL functions fail over past an address that is unreachable or answers
503 (busy, starting, draining)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.ports import free_port
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


class _Busy(http.server.BaseHTTPRequestHandler):
    """A replica that is up but cannot take work: 503 with Retry-After, as qvl serve while it starts."""

    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (b'{"error": "the service is starting or draining; retry shortly", "code": "UNAVAILABLE", '
                b'"reason": "NOT_READY"}')
        self.send_response(503)
        self.send_header("Retry-After", "5")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def dims(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT vector_dims(qvl.embed('replicas'))").fetchone()
    assert row is not None
    return int(row[0])


def test_a_list_of_addresses_fails_over_past_a_dead_one(conn: psycopg.Connection[Any],
                                                        service: ServiceProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    conn.execute("SELECT qvl.set_service(%s)", (f"{dead}, {service.http_url}/",))
    assert conn.execute("SELECT url FROM qvl.service").fetchone() == (f"{dead},{service.http_url}",)
    for _ in range(3):
        assert dims(conn) == 64
    assert len(conn.execute("SELECT * FROM qvl.rerank('q', ARRAY['a', 'b'])").fetchall()) == 2
    # every address dead: the usual "cannot reach" error, naming no address
    conn.execute("SELECT qvl.set_service(%s)", (f"{dead},http://127.0.0.1:{free_port()}",))
    with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as err:
        dims(conn)
    assert "cannot reach the model service" in str(err.value) and "127.0.0.1" not in str(err.value)


def test_a_replica_answering_503_is_passed_over_at_once(conn: psycopg.Connection[Any], service: ServiceProcess,
                                                        busy: str) -> None:
    conn.execute("SELECT qvl.set_service(%s)", (f"{busy},{service.http_url}",))
    _Busy.hits = 0
    started = time.monotonic()
    for _ in range(4):
        assert dims(conn) == 64
    assert time.monotonic() - started < 4  # the 503's Retry-After (5 s) is not waited out: b answers
    # A backend remembers the replica that answered: the busy one is not asked on every call.
    assert _Busy.hits <= 1


def test_every_address_is_checked_when_set(conn: psycopg.Connection[Any], service: ServiceProcess) -> None:
    before = conn.execute("SELECT url FROM qvl.service").fetchone()
    bad = ["http://127.0.0.1:8080,", "ftp://127.0.0.1:8080", "http://127.0.0.1:99999", "127.0.0.1:8080",
           "http://127.0.0.1:8080,127.0.0.1:8081", "http://user:secret@127.0.0.1:8080", "http://:8080",
           "http://127.0.0.1:8080/?x=1", "http://127.0.0.1:port"]
    for url in bad:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            conn.execute("SELECT qvl.set_service(%s)", (url,))
        assert "qvl.set_service" in (err.value.diag.message_hint or ""), url
    assert "secret" not in str(err.value)
    with pytest.raises(psycopg.errors.InvalidParameterValue):  # a CA file needs https:// everywhere
        conn.execute("SELECT qvl.set_service('https://localhost:1,http://localhost:2', ca_file => '/etc/ssl/x.pem')")
    assert conn.execute("SELECT url FROM qvl.service").fetchone() == before  # nothing stored
