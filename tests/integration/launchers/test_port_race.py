"""The race between choosing a free port and the child binding it fails no test (seen in a full
run: ``weaviate-server ... listen tcp 127.0.0.1:43605: bind: address already in use``).

Each test makes a launcher's port picker (the module-level function the launcher calls) hand out,
once, a port another socket holds, as a process that took the port in between would; the launcher
must come up all the same, on other ports. HAProxy takes its listening socket from the launcher,
so its port is held from the moment it is chosen."""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from connectors.client import Client
from qvl_devtools.launchers import postgres as postgres_launcher
from qvl_devtools.launchers import service as service_launcher
from qvl_devtools.launchers import weaviate as weaviate_launcher
from qvl_devtools.launchers.haproxy import HAProxy
from qvl_devtools.launchers.postgres import LocalPostgres
from qvl_devtools.launchers.weaviate import WeaviateServer
from qvl_devtools.launchers.weaviate_cluster import WeaviateCluster
from tests.support import fake_service
from tests.support.fake_service import FakeService, FakeVectorizer
from tests.support.service import ServiceProcess, started_together

# Each test starts servers of its own (nothing per module), so this file is in
# tests.support.xdist_groups.EACH_TEST: the xdist workers share its tests out (together they are
# minutes, more than any other file but the soak tests).
pytestmark = pytest.mark.lifecycle


@pytest.fixture
def held() -> Iterator[Callable[[int], int]]:
    """``held(0)``: a port some other socket has bound and listens on until the test ends;
    ``held(1)``: a port p that is free while p + 1 is held (the data and Raft RPC ports, which
    Weaviate takes at the gossip and Raft ports + 1)."""
    with contextlib.ExitStack() as stack:

        def hold(offset: int) -> int:
            while True:
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                port = sock.getsockname()[1] - offset
                if offset == 0:
                    return port
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe, contextlib.suppress(OSError):
                    probe.bind(("127.0.0.1", port))
                    return port

        yield hold


class FirstAnswerTaken:
    """A port picker whose first answer has ``busy`` in place ``index``; later answers are the real
    picker's. ``calls`` counts the answers."""

    def __init__(self, real: Callable[..., Any], index: int, busy: int) -> None:
        self.real, self.index, self.busy, self.calls = real, index, busy, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        answer = self.real(*args, **kwargs)
        self.calls += 1
        if self.calls > 1:
            return answer
        if isinstance(answer, int):
            return self.busy
        return [self.busy if i == self.index else p for i, p in enumerate(answer)]


def answers_ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=10) as response:
        return 200 <= response.status < 300


# -- Weaviate: every port it binds ---------------------------------------------------------------
# (picker, place in its answer, offset from the held port): free_ports gives http, grpc (, debug);
# free_port_pairs gives gossip and raft, and Weaviate binds data = gossip + 1, raft RPC = raft + 1.
WEAVIATE_PORTS = {
    "http": ("free_ports", 0, 0, "http_port"),
    "grpc": ("free_ports", 1, 0, "grpc_port"),
    "debug": ("free_ports", 2, 0, "debug_port"),
    "gossip": ("free_port_pairs", 0, 0, "gossip_port"),
    "data": ("free_port_pairs", 0, 1, "data_port"),
    "raft": ("free_port_pairs", 1, 0, "raft_port"),
    "raft_rpc": ("free_port_pairs", 1, 1, "raft_rpc_port"),
}


@pytest.mark.weaviate
@pytest.mark.parametrize("which", list(WEAVIATE_PORTS))
def test_weaviate_comes_up_when_a_port_it_was_given_is_taken(which: str, held: Callable[[int], int],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    picker, index, offset, attribute = WEAVIATE_PORTS[which]
    busy = held(offset)
    taken = FirstAnswerTaken(getattr(weaviate_launcher, picker), index, busy)
    monkeypatch.setattr(weaviate_launcher, picker, taken)
    with WeaviateServer(startup_timeout=60, repairable=which == "debug") as server:
        assert getattr(server, attribute) != busy + offset
        assert answers_ready(f"{server.url}/v1/.well-known/ready")
        if which == "debug":  # the repair endpoint lives there: it must be Weaviate's own listener
            with socket.create_connection((server.host, server.debug_port), timeout=10):
                pass
    assert taken.calls >= 2


@pytest.mark.weaviate
def test_a_weaviate_cluster_comes_up_when_a_node_s_port_is_taken(held: Callable[[int], int],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes name each other's ports (RAFT_JOIN, CLUSTER_JOIN): a node that cannot bind takes
    the whole cluster to new ports."""
    busy = held(0)
    taken = FirstAnswerTaken(weaviate_launcher.free_port_pairs, 1, busy)  # node1's Raft port
    monkeypatch.setattr(weaviate_launcher, "free_port_pairs", taken)
    with WeaviateCluster(2, startup_timeout=90) as cluster:
        assert busy not in {n.raft_port for n in cluster.nodes}
        for node in cluster.nodes:
            assert answers_ready(f"{node.url}/v1/.well-known/ready")
            assert f":{busy}" not in node.server_env()["RAFT_JOIN"]


# -- Postgres ------------------------------------------------------------------------------------
@pytest.mark.postgres
def test_postgres_and_its_standby_come_up_when_their_port_is_taken(held: Callable[[int], int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    busy = held(0)
    monkeypatch.setattr(postgres_launcher, "free_port", FirstAnswerTaken(postgres_launcher.free_port, 0, busy))
    with LocalPostgres() as primary:
        assert primary.port != busy
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS one")
        busy = held(0)
        monkeypatch.setattr(postgres_launcher, "free_port", FirstAnswerTaken(postgres_launcher.free_port, 0, busy))
        standby = primary.start_standby()
        try:
            assert standby.port != busy
            standby.catch_up()
            with psycopg.connect(standby.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT one FROM t").fetchall() == [(1,)]
        finally:
            standby.stop()
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:  # the standby's slot went with it
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


# -- qvl serve -----------------------------------------------------------------------------------
@pytest.mark.service
@pytest.mark.slow
def test_qvl_serve_comes_up_when_its_grpc_port_is_taken(held: Callable[[int], int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    busy = held(0)
    monkeypatch.setattr(service_launcher, "free_ports", FirstAnswerTaken(service_launcher.free_ports, 0, busy))
    with ServiceProcess() as svc:
        assert svc.grpc_port != busy
        assert answers_ready(f"{svc.http_url}/.well-known/ready")


@pytest.mark.service
@pytest.mark.slow
def test_replicas_started_together_come_up_when_an_http_port_is_taken(held: Callable[[int], int],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """start(wait=False) then wait_ready(): the ports are final once wait_ready returns."""
    busy = held(0)
    monkeypatch.setattr(service_launcher, "free_ports", FirstAnswerTaken(service_launcher.free_ports, 1, busy))
    with started_together(ServiceProcess(), ServiceProcess()) as (a, b):
        assert busy not in (a.http_port, b.http_port)
        assert a.http_port != b.http_port
        for svc in (a, b):
            assert answers_ready(f"{svc.http_url}/.well-known/ready")


# -- HAProxy -------------------------------------------------------------------------------------
@pytest.mark.service
def test_haproxy_holds_its_port_from_the_moment_it_is_chosen(service: ServiceProcess) -> None:
    proxy = HAProxy([service.http_url])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as intruder:
        # Another process tries to take the port between the choice and HAProxy's start.
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            intruder.bind(("127.0.0.1", proxy.port))
            intruder.listen()
        with proxy:
            assert answers_ready(f"{proxy.url}/.well-known/ready")
    # A port the caller names is the caller's choice: taken, it is refused at once, by number.
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        with pytest.raises(OSError, match=str(busy)):
            HAProxy([service.http_url], port=busy)


# -- the fake gRPC service of the worker tests -----------------------------------------------------
def test_two_fake_services_never_share_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC servers set SO_REUSEPORT by default: two of them bound to one port both succeed and
    share its connections (checked here: grpcio 1.7x). A fake service must never answer for another."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    monkeypatch.setattr(fake_service, "free_ports", lambda count: [port] * count, raising=False)
    with FakeService(FakeVectorizer(hidden_size=8)) as a, FakeService(FakeVectorizer(hidden_size=16)) as b:
        assert a.target != b.target
        for svc, size in ((a, 8), (b, 16)):
            with Client(svc.target, retries=0) as client:
                assert client.info().models[0].hidden_size == size
