"""The in-database library's HTTP exchange without a database: calls go to a tiny ``http.server``
on 127.0.0.1 (deadlines, cancellation, keep-alive, replicas)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors.postgres.plpy import addresses, transport, wire
from tests.support.plpy_stand_in import FakePlpy, stand_in


@pytest.fixture
def plpy(monkeypatch: pytest.MonkeyPatch) -> FakePlpy:
    return stand_in(monkeypatch)


@pytest.fixture(autouse=True)
def fresh_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(transport, "conns", {})
    monkeypatch.setattr(transport, "avoid", {})
    monkeypatch.setattr(transport, "turn", 0)
    yield
    for conn in transport.conns.values():
        conn.close()


# -- HTTP against a real server -------------------------------------------------------------------
class Service:
    """A tiny HTTP server: each request takes the next scripted answer (status, headers, body, delay)."""

    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                service.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": self.rfile.read(size), "client": self.client_address})
                step = service.script.pop(0) if service.script else {}
                if step.get("vanish"):  # read the request, then go without a word (a killed server)
                    self.close_connection = True
                    return
                time.sleep(step.get("delay", 0))
                body = json.dumps(step.get("body", {"ok": True})).encode()
                self.send_response(step.get("status", 200))
                for k, v in step.get("headers", {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if step.get("drip"):  # one byte at a time: every read is quick, the whole answer is not
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(step["drip"])
                    return
                self.wfile.write(body)
                self.close_connection = bool(step.get("hang_up"))  # closes without saying so

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


EMBED = transport.ROUTES["embed"]


def test_target_puts_the_route_under_the_service_path() -> None:
    assert addresses.target("http://qvl:8080", "/v1/embed") == ("http", "qvl", 8080, "/v1/embed")
    assert addresses.target("https://h/base/", "/v1/info") == ("https", "h", 443, "/base/v1/info")
    assert addresses.target("http://h", "/v1/rerank") == ("http", "h", 80, "/v1/rerank")


def test_http_send_posts_json_with_the_token_on_one_kept_alive_connection(service: Service) -> None:
    service.script = [{"body": {"n": 1}}, {"body": {"n": 2}}]
    url = service.url + "/qvl/"
    assert transport.http_send(url, "s3cret", 5, EMBED, '{"items": []}') == (200, '{"n": 1}')
    assert transport.http_send(url, None, 5, transport.ROUTES["info"], "null") == (200, '{"n": 2}')
    first, second = service.seen
    assert (first["method"], first["path"], first["body"]) == ("POST", "/qvl/v1/embed", b'{"items": []}')
    assert first["headers"]["Authorization"] == "Bearer s3cret"
    assert first["headers"]["Content-Type"] == "application/json"
    assert first["headers"]["User-Agent"] == "qvl-postgres"
    assert (second["method"], second["path"], second["body"]) == ("GET", "/qvl/v1/info", b"")
    assert "Authorization" not in second["headers"]
    assert first["client"] == second["client"]  # the same connection


def test_http_send_retries_once_when_the_kept_alive_connection_was_closed(service: Service) -> None:
    service.script = [{"hang_up": True}, {"body": {"again": True}}]
    assert transport.http_send(service.url, None, 5, EMBED, "{}")[0] == 200
    time.sleep(0.05)  # the server has hung up by now
    assert transport.http_send(service.url, None, 5, EMBED, "{}") == (200, '{"again": true}')
    assert len(service.seen) == 2 and service.seen[0]["client"] != service.seen[1]["client"]


def test_http_send_waits_as_a_busy_service_asks_within_the_deadline(service: Service) -> None:
    service.script = [{"status": 429, "headers": {"Retry-After": "0"}, "body": {"error": "full"}},
                      {"status": 503, "headers": {"Retry-After": "0.1"}, "body": {"error": "warming"}},
                      {"body": {"done": True}}]
    started = time.monotonic()
    assert transport.http_send(service.url, None, 5, EMBED, "{}") == (200, '{"done": true}')
    assert 0.15 <= time.monotonic() - started < 2 and len(service.seen) == 3
    service.script = [{"status": 503, "headers": {"Retry-After": "30"}, "body": {"error": "warming"}}]
    assert transport.http_send(service.url, None, 1, EMBED, "{}") == (503, '{"error": "warming"}')  # past deadline


def test_http_send_reports_unreachable_and_late_services_as_statuses(service: Service) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    status, body = transport.http_send(f"http://127.0.0.1:{port}", None, 2, EMBED, "{}")
    assert status == 0 and json.loads(body)["code"] == "UNAVAILABLE"
    assert json.loads(body)["error"] == "cannot reach the qvl service: Connection refused"  # no address (10.13)
    service.script = [{"delay": 1.0}]
    status, body = transport.http_send(service.url, None, 0.2, EMBED, "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert json.loads(body)["error"].endswith("within 0.2 s (timeout_s)")
    assert transport.conns == {}  # a broken connection is not kept


@pytest.mark.parametrize(("value", "seconds"), [(None, 1.0), ("0", 0.05), ("2.5", 2.5), ("60", 5.0), ("soon", 1.0)])
def test_retry_after_is_bounded(value: str | None, seconds: float) -> None:
    assert transport.retry_after(value) == seconds


def test_send_reads_the_address_from_qvl_service(plpy: FakePlpy, service: Service) -> None:
    assert transport.send("nope", "{}")[0] == 400
    status, body = transport.send("embed", "{}")
    assert status == 0 and json.loads(body) == {"error": "no service address is configured", "code": "UNAVAILABLE"}
    plpy.on("FROM qvl.service", lambda args: [{"url": service.url, "token": "t", "timeout_s": 5.0}])
    assert transport.send("embed", '{"items": [{}]}') == (200, '{"ok": true}')
    assert service.seen[0]["headers"]["Authorization"] == "Bearer t"
    assert [p.query for p in plpy.prepared].count(transport.STATEMENT_LEFT_SQL) == 1


# -- 10.12: one deadline for the whole call; cancellation looked for between short waits ------------
def test_a_dripping_answer_is_bounded_by_the_deadline_not_per_read(service: Service) -> None:
    service.script = [{"drip": 0.1, "body": {"padding": "x" * 200}}]
    started = time.monotonic()
    status, body = transport.http_send(service.url, None, 1.0, EMBED, "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 1.5
    assert transport.conns == {}


def test_a_cancel_seen_between_waits_ends_the_call_at_once(service: Service) -> None:
    class Cancelled(Exception):
        pass

    looks: list[float] = []

    def check() -> None:
        looks.append(time.monotonic())
        if len(looks) == 3:
            raise Cancelled  # what plpy.execute("SELECT 1") raises once the statement is cancelled

    service.script = [{"delay": 5}]
    started = time.monotonic()
    with pytest.raises(Cancelled):
        transport.http_send(service.url, None, 30, EMBED, "{}", check=check)
    assert time.monotonic() - started < 3 * wire.TICK_S + 0.5
    assert transport.conns == {}  # a connection left mid-exchange is not reused


def test_a_busy_service_is_waited_for_in_ticks_that_look_for_a_cancel(service: Service) -> None:
    looks: list[float] = []
    service.script = [{"status": 503, "headers": {"Retry-After": "1"}, "body": {"error": "warming"}}, {}]
    assert transport.http_send(service.url, None, 5, EMBED, "{}", check=lambda: looks.append(1))[0] == 200
    assert len(looks) >= 1 / wire.TICK_S - 1


@pytest.mark.parametrize(("timeout_s", "statement", "elapsed", "expected"), [
    (60.0, None, None, (60.0, "timeout_s")),
    (60.0, 0.0, 0.5, (60.0, "timeout_s")),  # statement_timeout = 0: none
    (60.0, 2.0, 0.5, (1.5, "statement_timeout")),
    (1.0, 30.0, 0.5, (1.0, "timeout_s")),
    (60.0, 2.0, 2.5, (0.0, "statement_timeout")),
])
def test_budget_is_the_sooner_of_timeout_s_and_the_statement_time_left(
        timeout_s: float, statement: float | None, elapsed: float | None, expected: tuple[float, str]) -> None:
    assert transport.budget(timeout_s, statement, elapsed) == expected


def test_send_derives_the_deadline_from_statement_timeout(plpy: FakePlpy, service: Service) -> None:
    plpy.on("FROM qvl.service", lambda args: [{"url": service.url, "token": None, "timeout_s": 60.0,
                                               "statement_timeout_s": 2.0, "statement_elapsed_s": 1.7}])
    service.script = [{"delay": 2}]
    started = time.monotonic()
    status, body = transport.send("embed", "{}")
    assert (status, json.loads(body)["code"]) == (504, "DEADLINE_EXCEEDED")
    assert "statement_timeout" in json.loads(body)["error"]
    assert time.monotonic() - started < 0.8


class _ClosingService(BaseHTTPRequestHandler):
    """HTTP/1.0: the server closes after each answer, and the body comes a moment after the headers."""

    body = b'{"embeddings": []}' + b" " * 200_000

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.05)
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_is_read_whole_when_the_server_closes_after_it() -> None:
    """http.client closes a "Connection: close" connection before the body is read: the socket
    must stay open until the response has been read (it failed with EBADF)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosingService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for _ in range(3):
            status, text = transport.http_send(url, None, 5.0, ("POST", "/v1/embed"), "{}", check=lambda: None)
            assert (status, len(text)) == (200, len(_ClosingService.body)), text[:200]
    finally:
        server.shutdown()


# -- several replicas --------------------------------------------------------------------------------
@pytest.fixture
def replicas() -> Iterator[list[Service]]:
    pair = [Service(), Service()]
    yield pair
    for r in pair:
        r.close()


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_service_lists_are_checked_and_kept_normalized() -> None:
    assert addresses.check_service("HTTP://a:8080/, https://b:9/base/", None) == "http://a:8080,https://b:9/base"
    assert addresses.check_service("https://a:1,https://[::1]:2", "/ca.pem") == "https://a:1,https://[::1]:2"
    bad = {"http://a:8080,": "an empty address", "ftp://a:1": "not an http:// or https://",
           "a:8080": "not an http:// or https://", "http://:80": "names no host",
           "http://a:0": "the port must be", "http://a:70000": "the port must be", "http://a:x": "the port must be",
           "http://a:1/?q=1": "no query", "http://a:1/#f": "no query", "http://u:pw@a:1": "must not hold credentials"}
    for value, words in bad.items():
        with pytest.raises(ValueError, match=words) as err:
            addresses.check_service(value, None)
        assert "pw" not in str(err.value)
    with pytest.raises(ValueError, match="a CA file is for an https:// service, not http://b:2"):
        addresses.check_service("https://a:1,http://b:2", "/ca.pem")


def test_calls_take_turns_over_the_replicas_and_ask_failed_ones_last(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = ["http://a:1", "http://b:1", "http://c:1"]
    starts = set()
    for pid in range(6):  # backends start at different replicas
        monkeypatch.setattr(transport, "turn", 0)
        monkeypatch.setattr(transport.os, "getpid", lambda pid=pid: pid)
        starts.add(transport.replica_order(urls)[0])
    assert starts == {0, 1, 2}
    # One backend's calls take turns (with two replicas, four sessions whose process ids were all
    # even sent every call to one replica: test_replicas_sql.py caught it).
    monkeypatch.setattr(transport.os, "getpid", lambda: 2)
    monkeypatch.setattr(transport, "turn", 0)
    assert [transport.replica_order(urls[:2])[0] for _ in range(4)] == [0, 1, 0, 1]
    monkeypatch.setattr(transport.os, "getpid", lambda: 3)
    monkeypatch.setattr(transport, "turn", 0)  # starts at a
    transport.avoid["http://a:1"] = time.monotonic() + 5
    assert transport.replica_order(urls) == [1, 2, 0]
    transport.avoid["http://a:1"] = time.monotonic() - 1  # its time is up: back in its place
    assert transport.replica_order(urls) == [1, 2, 0]  # the next turn starts at b
    assert transport.replica_order(urls) == [2, 0, 1]


def test_a_dead_replica_is_passed_over_and_then_asked_last(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport.os, "getpid", lambda: 0)
    dead = f"http://127.0.0.1:{closed_port()}"
    url = f"{dead},{replicas[0].url}"
    for _ in range(3):
        assert transport.http_send(url, None, 5, EMBED, "{}")[0] == 200
    assert len(replicas[0].seen) == 3 and dead in transport.avoid


def test_busy_replicas_pass_the_call_on_and_all_busy_waits(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport.os, "getpid", lambda: 0)
    a, b = replicas
    url = f"{a.url},{b.url}"
    a.script = [{"status": 503, "headers": {"Retry-After": "5"}, "body": {"error": "draining"}}]
    started = time.monotonic()
    assert transport.http_send(url, None, 5, EMBED, "{}") == (200, '{"ok": true}')
    assert time.monotonic() - started < 1 and len(a.seen) == len(b.seen) == 1
    assert transport.http_send(url, None, 5, EMBED, "{}")[0] == 200
    assert len(a.seen) == 1 and len(b.seen) == 2  # the busy one is asked last for its Retry-After
    transport.avoid.clear()
    a.script = [{"status": 503, "headers": {"Retry-After": "0.2"}}, {"body": {"a": 2}}]
    b.script = [{"status": 429, "headers": {"Retry-After": "0.3"}}]
    started = time.monotonic()
    assert transport.http_send(url, None, 5, EMBED, "{}") == (200, '{"a": 2}')  # waited the shorter wait, once
    assert 0.2 <= time.monotonic() - started < 1


def test_a_replica_that_dies_mid_answer_passes_the_call_on(replicas: list[Service],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The request was sent, the replica went away before answering: the next one is asked (an
    embedding is the same whoever computes it)."""
    monkeypatch.setattr(transport.os, "getpid", lambda: 0)
    a, b = replicas
    assert transport.http_send(f"{a.url},{b.url}", None, 5, EMBED, "{}")[0] == 200  # a kept-alive connection
    a.close()  # it takes no new connections, and the next request on the old one is never answered
    a.script = [{"vanish": True}]
    monkeypatch.setattr(transport, "turn", 0)  # the next call starts at a again
    assert transport.http_send(f"{a.url},{b.url}", None, 5, EMBED, "{}") == (200, '{"ok": true}')
    assert len(a.seen) == 2 and len(b.seen) == 1


def test_a_replica_that_takes_no_connections_costs_connect_s_not_the_deadline(
        replicas: list[Service], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    monkeypatch.setattr(transport.os, "getpid", lambda: 0)
    monkeypatch.setattr(transport, "CONNECT_S", 0.5)
    with contextlib.ExitStack() as stack:
        # A listener that never accepts, its queue full: further connects get no answer at all (as a
        # host that is gone).
        silent = stack.enter_context(socket.socket())
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
        url = f"http://127.0.0.1:{silent.getsockname()[1]},{replicas[1].url}"
        started = time.monotonic()
        assert transport.http_send(url, None, 20, EMBED, "{}")[0] == 200
        assert 0.4 < time.monotonic() - started < 3
        # alone it is the whole deadline, as before
        status, _ = transport.http_send(f"http://127.0.0.1:{silent.getsockname()[1]}", None, 1, EMBED, "{}")
        assert status == 504
