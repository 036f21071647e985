"""Issue 11 item 8: each of the service's limits, hit from SQL, is an error whose hint names that
limit's own setting and no other (a long text and 1,001 rerank documents used to get "Send a
smaller image ... QVL_MAX_MEDIA_BYTES, QVL_MAX_REQUEST_BYTES", a bad dimensions the image formats).

One service runs with every limit small. What SQL can send is sent through qvl.embed and
qvl.rerank; what one SQL call cannot hold (several items, images or videos in one request) goes
through the PL/Python library's own HTTP exchange and error mapping, outside the database. The
gRPC API names the same limits in fields of their own.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from PIL import Image

from connectors.client import Client, InvalidInput, ItemFailure
from connectors.postgres.installer import install
from connectors.postgres.plpy import errors, transport
from tests.integration.postgres.conftest import new_database
from tests.media_factory import image_bytes, png_bomb, video_bytes
from tests.support.postgres import PostgresServer
from tests.support.service import ServiceProcess

pytestmark = [pytest.mark.postgres, pytest.mark.service]

# Pixel limits ordered so one image can cross each alone: source > item > request.
LIMITS = {
    "QVL_MAX_TEXT_CHARS": "1000",
    "QVL_EMBED_MAX_LENGTH": "64",
    "QVL_RERANK_MAX_LENGTH": "64",
    "QVL_MAX_RERANK_DOCUMENTS": "5",
    "QVL_MAX_ITEMS_PER_REQUEST": "4",
    "QVL_MAX_REQUEST_BYTES": "600000",
    "QVL_MAX_MEDIA_BYTES": "200000",
    "QVL_MAX_SOURCE_IMAGE_PIXELS": "3000000",
    "QVL_MAX_ITEM_DECODED_PIXELS": "2000000",
    "QVL_MAX_REQUEST_DECODED_PIXELS": "1000000",
    "QVL_MAX_VIDEO_FRAME_PIXELS": "10000",
    "QVL_MAX_VIDEO_SOURCE_FRAMES": "10",
    "QVL_MAX_VIDEO_SECONDS": "5",
    "QVL_VIDEO_CODECS": "h264",
    "QVL_MAX_IMAGES_PER_ITEM": "2",
    "QVL_MAX_VIDEOS_PER_ITEM": "1",
}


def solid_png(width: int, height: int) -> bytes:
    """An image of many pixels in few bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# (the setting whose limit it crosses, SQL, its parameters)
SQL_CASES: list[tuple[str, str, tuple[Any, ...]]] = [
    ("QVL_MAX_TEXT_CHARS", "SELECT qvl.embed(repeat('a', 1001))", ()),
    ("QVL_MAX_TEXT_CHARS", "SELECT * FROM qvl.rerank('q', ARRAY['short', repeat('b', 1001)])", ()),
    ("QVL_EMBED_MAX_LENGTH", "SELECT qvl.embed(image => %s)", (solid_png(512, 512),)),
    ("QVL_RERANK_MAX_LENGTH", "SELECT * FROM qvl.rerank('q', ARRAY[%s]::bytea[])", (solid_png(512, 512),)),
    ("QVL_MAX_RERANK_DOCUMENTS", "SELECT * FROM qvl.rerank('q', ARRAY['1', '2', '3', '4', '5', '6'])", ()),
    ("QVL_MAX_REQUEST_BYTES", "SELECT qvl.embed(image => %s)", (image_bytes("PNG", (500, 500)),)),
    ("QVL_MAX_MEDIA_BYTES", "SELECT qvl.embed(image => %s)", (image_bytes("PNG", (300, 300)),)),
    ("QVL_MAX_SOURCE_IMAGE_PIXELS", "SELECT qvl.embed(image => %s)", (png_bomb(1870, 1870),)),
    ("QVL_MAX_ITEM_DECODED_PIXELS", "SELECT qvl.embed(image => %s)", (png_bomb(1581, 1581),)),
    ("QVL_MAX_REQUEST_DECODED_PIXELS", "SELECT qvl.embed(image => %s)", (png_bomb(1225, 1225),)),
    ("QVL_MAX_VIDEO_FRAME_PIXELS", "SELECT qvl.embed(video => %s)", (video_bytes(2, 2, (128, 96)),)),
    ("QVL_MAX_VIDEO_SOURCE_FRAMES", "SELECT qvl.embed(video => %s)", (video_bytes(12, 4),)),
    ("QVL_MAX_VIDEO_SECONDS", "SELECT qvl.embed(video => %s)", (video_bytes(8, 1),)),
    ("QVL_VIDEO_CODECS", "SELECT qvl.embed(video => %s)", (video_bytes(2, 2, codec="mpeg4"),)),
]

# (the setting, endpoint, request body): more than one SQL call holds
HTTP_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("QVL_MAX_ITEMS_PER_REQUEST", "embed", {"items": ["1", "2", "3", "4", "5"]}),
    ("QVL_MAX_IMAGES_PER_ITEM", "embed", {"items": [{"image": [b64(solid_png(32, 32))] * 3}]}),
    ("QVL_MAX_VIDEOS_PER_ITEM", "embed",
     {"items": [{"video": b64(video_bytes(2, 2)), "frames": [b64(solid_png(32, 32))] * 2}]}),
]


@pytest.fixture(scope="module")
def limited() -> Iterator[ServiceProcess]:
    with ServiceProcess(env=LIMITS) as proc:
        yield proc


@pytest.fixture
def limited_conn(pg_server: PostgresServer, limited: ServiceProcess,
                 request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    dsn = new_database(pg_server, request.node.name)
    install(dsn, service_url=limited.http_url)
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


def settings_named(text: str) -> list[str]:
    return re.findall(r"QVL_[A-Z_]+", text)


def test_each_limit_hit_from_sql_names_its_own_setting(limited_conn: psycopg.Connection[Any]) -> None:
    assert {setting for setting, _, _ in SQL_CASES} | {setting for setting, _, _ in HTTP_CASES} == set(LIMITS)
    wrong = []
    for setting, statement, params in SQL_CASES:
        with pytest.raises(psycopg.Error) as err:
            limited_conn.execute(statement, params)
        diag = err.value.diag
        said = (setting, err.value.sqlstate, diag.message_primary, diag.message_hint)
        expected_state = "22023" if setting == "QVL_VIDEO_CODECS" else "54000"
        if (err.value.sqlstate != expected_state or settings_named(diag.message_hint or "") != [setting]
                or setting not in (diag.message_primary or "")):
            wrong.append(said)
    assert not wrong, "\n".join(map(str, wrong))
    with pytest.raises(psycopg.Error) as err:  # the count is the call's, not the query's
        limited_conn.execute("SELECT * FROM qvl.rerank('q', ARRAY['1', '2', '3', '4', '5', '6'])")
    assert "refused the request: 6 documents, over the limit of 5" in (err.value.diag.message_primary or "")


def test_limits_sql_cannot_reach_in_one_call_name_their_setting_too(limited: ServiceProcess) -> None:
    for setting, endpoint, payload in HTTP_CASES:
        route = transport.ROUTES[endpoint]
        status, text = transport.http_send(limited.http_url, None, 30.0, route, json.dumps(payload))
        assert status == 413, (setting, status, text)
        assert json.loads(text)["limit"] == setting
        f = errors.failure(endpoint, status, text, lambda i: "the input")
        assert settings_named(f.hint or "") == [setting] and setting in f.message, (setting, f.message, f.hint)


def test_dimensions_out_of_the_models_range_get_a_hint_about_dimensions(
        limited_conn: psycopg.Connection[Any]) -> None:
    """It used to get the hint about image formats."""
    for dims in (16, 65):
        with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
            limited_conn.execute("SELECT qvl.embed('x', dimensions => %s)", (dims,))
        hint = err.value.diag.message_hint or ""
        assert "dimensions" in hint and "qvl.service_info()" in hint, hint
        assert not settings_named(hint) and "PNG" not in hint, hint


def test_grpc_refusals_name_their_limit_in_fields(limited: ServiceProcess) -> None:
    """The same refusals over gRPC: the setting in ``limit`` (the call's trailing metadata, each
    stream item's ItemError), not only in the message."""
    with Client(limited.grpc_target, retries=0) as client:
        cases: list[tuple[str, Callable[[], object], int | None]] = [
            ("QVL_MAX_TEXT_CHARS", lambda: client.embed(["short", "a" * 1001]), 1),
            ("QVL_MAX_ITEMS_PER_REQUEST", lambda: client.embed(["1", "2", "3", "4", "5"]), None),
            ("QVL_MAX_RERANK_DOCUMENTS", lambda: client.rerank("q", ["1", "2", "3", "4", "5", "6"]), None),
            ("QVL_MAX_MEDIA_BYTES", lambda: client.embed([{"image": image_bytes("PNG", (300, 300))}]), 0),
        ]
        for setting, call, index in cases:
            with pytest.raises(InvalidInput) as err:
                call()
            assert (err.value.limit, err.value.index) == (setting, index), (setting, str(err.value))
        with pytest.raises(InvalidInput) as err:
            client.embed(["x"], dimensions=16)
        assert err.value.limit == "dimensions"
        rows = list(client.embed_stream(["fine", "b" * 1001, "also fine"]))
        failure = rows[1]
        assert isinstance(failure, ItemFailure), rows
        assert (failure.index, failure.code, failure.limit) == (1, "INVALID_ARGUMENT", "QVL_MAX_TEXT_CHARS")
        assert not isinstance(rows[0], ItemFailure) and not isinstance(rows[2], ItemFailure)
