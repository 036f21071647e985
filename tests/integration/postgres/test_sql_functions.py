"""qvl.embed / qvl.rerank in SQL agree with the gRPC API; failures are SQL errors with a hint."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest

from connectors.client import Client
from tests.integration.postgres.conftest import cosines, images, vec
from tests.support.inprocess_service import InProcessService
from tests.support.ports import free_port
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Any:
    with Client(service.grpc_target) as c:
        yield c


def test_embed_matches_grpc(conn: psycopg.Connection[Any], client: Client) -> None:
    img = images(1)[0]
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
        ("qvl.embed(%s)", ("a dog on a beach",), {"text": "a dog on a beach"}, {}),
        ("qvl.embed(image => %s)", (img,), {"image": img}, {}),
        ("qvl.embed(text => %s, image => %s)", ("rings", img), {"text": "rings", "image": img}, {}),
        ("qvl.embed(%s, instruction => %s)", ("q", "Find the photo."), {"text": "q"},
         {"instruction": "Find the photo."}),
        ("qvl.embed(%s, dimensions => 32)", ("short",), {"text": "short"}, {"dimensions": 32}),
    ]
    for expr, params, item, options in cases:
        row = conn.execute(f"SELECT ({expr})::text", params).fetchone()
        assert row is not None
        got = vec(row[0])
        want = client.embed([item], **options)[0]
        assert got.shape == want.shape, expr
        assert cosines(got, want) >= 0.9999, expr
    half = conn.execute("SELECT qvl.embed_halfvec('half')::text").fetchone()
    assert half is not None
    assert cosines(vec(half[0]), client.embed(["half"])[0]) >= 0.999


def test_rerank_matches_grpc(conn: psycopg.Connection[Any], client: Client) -> None:
    docs = ["a red car", "a blue boat", "a cat asleep on a sofa", "sunset over the river"]
    rows = conn.execute("SELECT index, score FROM qvl.rerank(%s, %s::text[])", ("a sleeping cat", docs)).fetchall()
    want = client.rerank("a sleeping cat", docs)
    assert [i - 1 for i, _ in rows] == [i for i, _ in want.ranking]  # 1-based, best first
    np.testing.assert_allclose([s for _, s in rows], [s for _, s in want.ranking], atol=1e-5)

    top = conn.execute("SELECT index FROM qvl.rerank(%s, %s::text[], top_k => 2)", ("a sleeping cat", docs)).fetchall()
    assert [i for (i,) in top] == [i for i, _ in rows[:2]]

    pics = images(3, offset=10)
    rows = conn.execute("SELECT index, score FROM qvl.rerank(%s, %s::bytea[], instruction => %s)",
                        ("noise", pics, "Find noisy pictures.")).fetchall()
    want = client.rerank("noise", [{"image": p} for p in pics], instruction="Find noisy pictures.")
    assert [i - 1 for i, _ in rows] == [i for i, _ in want.ranking]
    np.testing.assert_allclose([s for _, s in rows], [s for _, s in want.ranking], atol=1e-5)

    assert conn.execute("SELECT * FROM qvl.rerank('q', ARRAY[]::text[])").fetchall() == []


def test_bad_input_is_an_error_naming_the_item(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT qvl.embed(image => 'not an image'::bytea)")
    assert "not a recognised image" in str(err.value)
    assert err.value.diag.message_hint and "PNG" in err.value.diag.message_hint

    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT * FROM qvl.rerank('q', ARRAY[%s, 'junk'::bytea])", (images(1)[0],))
    assert "documents[2]" in str(err.value)  # the 1-based array position

    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT * FROM qvl.rerank('junk'::bytea, ARRAY['a', 'b'])")
    assert "refused the query: image 0 is not a recognised image" in str(err.value)


def test_unreachable_service_is_an_error_not_null(conn: psycopg.Connection[Any]) -> None:
    from tests.support.ports import free_port

    conn.execute("SELECT qvl.set_service(%s)", (f"http://127.0.0.1:{free_port()}",))
    with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as err:
        conn.execute("SELECT qvl.embed('anything')")
    assert "cannot reach the model service" in str(err.value)
    assert "qvl.set_service" in (err.value.diag.message_hint or "")


def test_token(pg_server: Any, request: pytest.FixtureRequest) -> None:
    from connectors.postgres.installer import install
    from tests.integration.postgres.conftest import new_database

    # The token's path through SQL, not the model: the request process alone, in this process.
    with InProcessService(token="s3cret") as svc:
        dsn = new_database(pg_server, request.node.name)
        install(dsn, service_url=svc.http_url)
        with psycopg.connect(dsn, autocommit=True) as c:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as err:
                c.execute("SELECT qvl.embed('x')")
            assert "qvl.set_service" in (err.value.diag.message_hint or "")
            install(dsn, service_url=svc.http_url, service_token="s3cret")
            assert c.execute("SELECT vector_dims(qvl.embed('x'))").fetchone() == (64,)


def test_a_sql_error_without_detail_has_no_detail_line(conn: psycopg.Connection[Any]) -> None:
    """Issue 24.4: an error with a message and a hint only said "DETAIL:  None" too (plpy.error
    renders detail=None as the text None). One with a detail keeps it."""
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute("SELECT * FROM qvl.rerank('q', ARRAY['a'], top_k => 0)")
    assert err.value.diag.message_detail is None
    assert "top_k => NULL" in (err.value.diag.message_hint or "")
    with pytest.raises(psycopg.Error) as unreachable, conn.transaction():
        conn.execute("UPDATE qvl.service SET url = %s", (f"http://127.0.0.1:{free_port()}",))  # nothing there
        conn.execute("SELECT qvl.embed('x')")
    assert "unreachable" in (unreachable.value.diag.message_detail or ""), unreachable.value.diag.message_detail


def test_rerank_top_k_below_1_is_refused_by_sql_http_and_grpc(conn: psycopg.Connection[Any],
                                                             service: ServiceProcess) -> None:
    """Issue 11: qvl.rerank(..., top_k => 0) returned nothing while HTTP answered 422. One rule
    everywhere: top_k NULL (absent) ranks every document, else it must be at least 1."""
    import grpc
    import httpx

    from qvl_proto import vectorizer_pb2 as pb
    from qvl_proto import vectorizer_pb2_grpc as pb_grpc

    for top_k in (0, -1):
        for docs in ("ARRAY['a', 'b']", "ARRAY[]::text[]"):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
                conn.execute(f"SELECT * FROM qvl.rerank('q', {docs}, top_k => %s)", (top_k,))
            assert f"top_k must be at least 1, got {top_k}" in (err.value.diag.message_primary or "")
            assert "top_k => NULL" in (err.value.diag.message_hint or "")
    assert len(conn.execute("SELECT * FROM qvl.rerank('q', ARRAY['a', 'b'], top_k => NULL)").fetchall()) == 2

    resp = httpx.post(service.http_url + "/v1/rerank", json={"query": "q", "documents": ["a"], "top_k": 0}, timeout=30)
    assert resp.status_code == 422 and "top_k" in resp.json()["error"]
    with grpc.insecure_channel(service.grpc_target) as channel, pytest.raises(grpc.RpcError) as rpc:
        pb_grpc.VectorizerStub(channel).Rerank(pb.RerankRequest(
            query=pb.Item(parts=[pb.Part(text="q")]), documents=[pb.Item(parts=[pb.Part(text="a")])], top_k=0),
            timeout=30)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k must be at least 1" in rpc.value.details()
