"""Model identity in Postgres (issue 23 item 2): a vectorizer records the fingerprint of the model its
vectors came from, and nothing lets another model's vectors join them or be ranked against them.

Two real services on two tiny checkpoints of the same name and shape (another seed: other weights), so
only the fingerprint tells them apart; real Postgres, the real worker, the real SQL functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connectors.client import Client
from qvl_devtools.tiny_model import build_checkpoint
from tests.integration.postgres.conftest import drain
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

NAME = "tiny-qwen3-vl"  # both checkpoints' directory: the model name each service reports


@pytest.fixture(scope="module")
def other_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The tiny shape with another seed, under the same directory name as the fixture's checkpoint."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("other-model") / NAME, seed=1)
    with ServiceProcess(embedding_model=str(checkpoint), reranker_model=str(checkpoint)) as svc:
        yield svc


def served(svc: ServiceProcess) -> tuple[str, str]:
    """(fingerprint, name) of the service's embedding model, as its Info says."""
    with Client(svc.grpc_target) as client:
        model = next(m for m in client.info().models if m.task == "embed")
    return model.fingerprint, model.name


def recorded(conn: psycopg.Connection[Any], name: str = "notes") -> tuple[Any, ...] | None:
    return conn.execute("SELECT model_fingerprint, model_name FROM qvl.vectorizer WHERE name = %s", (name,)).fetchone()


def notes(conn: psycopg.Connection[Any], rows: range, *, fulltext: bool = False) -> None:
    if conn.execute("SELECT to_regclass('notes')").fetchone() == (None,):
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("SELECT qvl.create_vectorizer('notes', text_columns => ARRAY['body'], dimensions => 32"
                     + (", fulltext => 'simple')" if fulltext else ")"))
    conn.execute("INSERT INTO notes SELECT i, 'a note about harbour number ' || i "
                 "FROM generate_series(%s::int, %s::int) i", (rows.start, rows.stop - 1))


def test_the_first_write_records_the_model(qvl_db: str, conn: psycopg.Connection[Any],
                                           service: ServiceProcess) -> None:
    notes(conn, range(1, 6))
    assert recorded(conn) == (None, None)  # nothing written yet: no model
    drain(qvl_db, service.grpc_target)
    assert conn.execute("SELECT count(*) FROM notes WHERE embedding IS NOT NULL").fetchone() == (5,)
    assert recorded(conn) == served(service)
