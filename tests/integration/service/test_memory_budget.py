"""The request process holds request bytes against a byte budget, not a count: a burst of large
HTTP bodies and gRPC messages under a memory cgroup is answered (served, or refused with 503 /
RESOURCE_EXHAUSTED to retry) without the request process being OOM-killed, and it serves on.

The request process alone is put in a cgroup v1 memory group once its model process has started
(the child stays outside), the way an operator would limit it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from connectors.client import Client
from qvl_proto import vectorizer_pb2 as pb
from qvl_proto import vectorizer_pb2_grpc as pb_grpc
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
LIMIT = 1000 * 1024 * 1024
BODY_MB = 40
WIRE_BUDGET = int(os.environ.get("QVL_TEST_WIRE_BUDGET", 64 * 1024 * 1024))  # the test's knob to show the failure


@pytest.fixture
def limited_service() -> Iterator[tuple[ServiceProcess, Path]]:
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        pytest.fail("a cgroup v1 memory hierarchy is needed at /sys/fs/cgroup/memory (run as root)")
    group = CGROUP_ROOT / f"qvl-test-wire-{os.getpid()}"
    group.mkdir(exist_ok=True)
    (group / "memory.limit_in_bytes").write_text(str(LIMIT))
    # gRPC reads a unary message whole before the service sees it: what arrives at once is bounded by
    # QVL_MAX_CONCURRENT_RPCS x the message size (docs/api.md), so the test sizes it as an operator would.
    env = {"QVL_MAX_WIRE_BYTES": str(WIRE_BUDGET), "QVL_QUEUE_MAX_BYTES": str(256 << 20),
           "QVL_MAX_CONCURRENT_RPCS": "4"}
    with ServiceProcess(env=env) as svc:
        assert svc.proc is not None
        (group / "cgroup.procs").write_text(str(svc.proc.pid))  # the request process only
        try:
            yield svc, group
        finally:
            if svc.proc.poll() is None:
                (CGROUP_ROOT / "cgroup.procs").write_text(str(svc.proc.pid))
    group.rmdir()


def _post(url: str, path: str, body: bytes) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _oom_kills(group: Path) -> int:
    """The group's OOM kills (kernels before 4.13 do not count them: the process check covers it)."""
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def test_a_burst_of_large_bodies_is_answered_under_a_memory_limit(limited_service: tuple[ServiceProcess, Path]) -> None:
    svc, group = limited_service
    junk = base64.b64encode(os.urandom(BODY_MB * 1024 * 1024 * 3 // 4)).decode()
    body = json.dumps({"items": [{"image": junk}, {"text": "a neighbour"}], "allow_partial": True}).encode()
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: _post(svc.http_url, "/v1/embed", body), range(12)))
    # Each is answered: embedded (the bad image as its own error) or refused to retry later.
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses

    message = pb.EmbedRequest(items=[pb.Item(parts=[pb.Part(image=os.urandom(BODY_MB << 20))])])
    codes = []
    with grpc.insecure_channel(svc.grpc_target, options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        stub = pb_grpc.VectorizerStub(channel)

        def call(_: int) -> grpc.StatusCode:
            try:
                stub.Embed(message, timeout=300)
                return grpc.StatusCode.OK
            except grpc.RpcError as err:
                return err.code()

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(8)))
    # A message refused by the budget is RESOURCE_EXHAUSTED; one served fails on its bad image.
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes

    assert svc.proc is not None and svc.proc.poll() is None, "the request process died"
    assert _oom_kills(group) == 0
    peak = int((group / "memory.max_usage_in_bytes").read_text())
    print(f"\nrequest process peak under the burst: {peak >> 20} MiB of {LIMIT >> 20} MiB")
    assert peak < LIMIT
    with Client(svc.grpc_target) as client:
        assert client.embed(["still serving"]).shape == (1, 64)
