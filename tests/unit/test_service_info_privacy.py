"""Issue 10.13, the service side: /v1/info names models without local paths, and the HTTP
catch-all answers a generic message with a request id (the exception text goes to the log)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from vectorizer_service.api import service_info
from vectorizer_service.api.http_app import build_http_app
from vectorizer_service.core.settings import Settings


@pytest.mark.parametrize(("name", "shown"), [
    ("Qwen/Qwen3-VL-Embedding-2B", "Qwen/Qwen3-VL-Embedding-2B"),
    ("/srv/models/customer-x/Qwen3-VL-Embedding-8B", "Qwen3-VL-Embedding-8B"),
    ("/srv/models/ckpt/", "ckpt"),
    ("./checkpoints/tiny", "tiny"),
    ("~/models/tiny", "tiny"),
    ("C:\\models\\tiny", "tiny"),
    ("", ""),
])
def test_public_model_name_drops_local_paths(name: str, shown: str) -> None:
    assert service_info.public_model_name(name) == shown


def test_a_local_directory_that_looks_like_a_hub_id_is_a_path(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert service_info.public_model_name("models/tiny") == "tiny"


class Exploding:
    """A dispatcher whose models cannot be listed: /v1/info raises an unexpected exception."""

    admission = SimpleNamespace(wire=None)
    link = SimpleNamespace(info=None)

    @property
    def models(self) -> Any:
        raise RuntimeError("cannot open /srv/secret/checkpoints/model.safetensors")


def test_the_catch_all_handler_logs_the_exception_and_answers_a_request_id(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = build_http_app(Exploding(), Settings())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR), TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/v1/info")
    assert resp.status_code == 500
    body = resp.json()
    assert "/srv/secret" not in resp.text and "RuntimeError" not in resp.text
    assert body["code"] == "INTERNAL" and body["request_id"] and body["request_id"] in body["error"]
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == body["request_id"]]
    assert logged and logged[0].exc_info and "/srv/secret" in str(logged[0].exc_info[1])
