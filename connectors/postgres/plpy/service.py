"""Calls to the service as the invoker: through ``qvl._call`` (the one door to the service), and
the service's description (``GET /v1/info``), remembered per backend."""

from __future__ import annotations

import json
import time
from typing import Any

from . import spi
from .errors import Failure, What, answer
from .spi import plan

DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
INFO_TTL_S = 60.0
cache: dict[str, tuple[float, Any]] = {}  # per backend: "info": (when, GET /v1/info answer)


def call(endpoint: str, payload: Any, what: What, vectorizer_id: int | None = None) -> Any:
    """The decoded answer; any failure raises Failure naming ``what(item index or None)``.
    ``vectorizer_id``: asked of that vectorizer's own service (qvl.vectorizer.service_url, set by a
    blue/green switch) through qvl._call_for; None: qvl.service's, through qvl._call."""
    body = json.dumps(payload, separators=(",", ":"))
    if vectorizer_id is None:
        row = spi.plpy.execute(plan("call", "SELECT status, response FROM qvl._call($1, $2)", ["text", "text"]),
                               [endpoint, body])[0]
    else:
        row = spi.plpy.execute(plan("call_for", "SELECT status, response FROM qvl._call_for($1, $2, $3)",
                                    ["int4", "text", "text"]), [vectorizer_id, endpoint, body])[0]
    return answer(endpoint, row["status"], row["response"], what)


def info() -> Any:
    """GET /v1/info, remembered for INFO_TTL_S seconds per backend."""
    hit = cache.get("info")
    if hit is not None and time.monotonic() - hit[0] < INFO_TTL_S:
        return hit[1]
    data = call("info", None, lambda i: "the info request")
    cache["info"] = (time.monotonic(), data)
    return data


def service_info_sql() -> str:
    """qvl.service_info: the service's answer now (never the remembered one), as JSON text."""
    cache.pop("info", None)
    try:
        return json.dumps(info())
    except Failure as f:
        f.raise_sql()


def model_info(task: str) -> dict[str, Any]:
    for m in info().get("models", []):
        if m.get("task") == task:
            return m
    return {}


def query_instruction() -> str:
    return model_info("embed").get("query_instruction") or DEFAULT_QUERY_INSTRUCTION
