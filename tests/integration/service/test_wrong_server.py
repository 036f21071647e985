"""A Weaviate client pointed at qvl's ports (easy in docs/weaviate.md's direct-run layout, where
qvl holds 8080 and 50051, connect_to_local's defaults) is told it reached qvl, not Weaviate."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import weaviate
from weaviate.exceptions import UnexpectedStatusCodeError

from tests.support.service import ServiceProcess

pytestmark = pytest.mark.service

TOKEN = "wrong-server-token"


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServiceProcess]:
    with ServiceProcess(token=TOKEN) as svc:
        yield svc


@pytest.mark.parametrize("which", ["open", "token"])
def test_connect_to_local_on_qvls_ports_says_it_reached_qvl(which: str, service: ServiceProcess,
                                                            guarded: ServiceProcess) -> None:
    svc = service if which == "open" else guarded
    with pytest.raises(UnexpectedStatusCodeError) as refused:
        weaviate.connect_to_local(port=svc.http_port, grpc_port=svc.grpc_port,
                                  headers={"X-VoyageAI-Api-Key": "some key"})
    message = str(refused.value)
    assert "this is qvl serve (the model server), not Weaviate" in message, message
    assert "connect_to_local(port=8081, grpc_port=50052)" in message
    assert refused.value.status_code == (404 if which == "open" else 401)


def test_qvls_own_routes_answer_as_before(guarded: ServiceProcess, service: ServiceProcess) -> None:
    assert httpx.post(guarded.http_url + "/v1/embed", json={"items": ["a"]}).json() == {
        "error": "missing or wrong bearer token", "code": "UNAUTHENTICATED"}
    assert httpx.get(service.http_url + "/v2/nothing").json() == {"error": "Not Found", "code": "HTTP"}
