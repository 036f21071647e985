"""A stand-in for PL/Python's ``plpy``, bound to the in-database library (connectors/postgres/plpy/)
for unit tests that run it without a database: it answers the library's queries by fragment and
records what ran."""

from __future__ import annotations

import array
import base64
import json
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest

from connectors.postgres.plpy import filter_text, filters, query_vectors, service, spi

# A vectorizer's catalog row as the library reads it (vectorizers.VECTORIZER_SQL; bytea_columns: BY_ID_SQL's).
CFG: dict[str, Any] = {
    "id": 7, "name": "photos", "pk_columns": ["id"], "pk_types": ["bigint"], "text_columns": ["caption"],
    "image_columns": ["image"], "video_columns": [], "destination": "embedding", "dimensions": 3,
    "storage": "vector", "instruction": None, "query_instruction": None, "mode": "sync", "on_error": "fail",
    "source_sql": "public.photos", "source_name": "photos", "vector_schema": "public",
    "bytea_columns": ["image"],
}


class PlpyError(Exception):
    """What plpy.error raises (PL/Python turns it into the SQL error)."""

    def __init__(self, message: str, detail: str | None = None, hint: str | None = None,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message, self.detail, self.hint, self.sqlstate = message, detail, hint, sqlstate


class Result(list[dict[str, Any]]):
    def nrows(self) -> int:
        return len(self)


class Plan:
    def __init__(self, query: str, argtypes: list[str]) -> None:
        self.query, self.argtypes = query, argtypes


class Cursor:
    """plpy.cursor's answer: rows in batches."""

    def __init__(self, rows: Result) -> None:
        self.rows = rows

    def fetch(self, n: int) -> Result:
        batch, self.rows = Result(self.rows[:n]), Result(self.rows[n:])
        return batch

    def close(self) -> None:
        self.rows = Result()


class FakePlpy:
    """Answers by the first registered fragment found in the query; records what ran."""

    class SPIError(Exception):
        """What plpy.execute and plpy.prepare raise for a SQL error."""

        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def __init__(self) -> None:
        self.prepared: list[Plan] = []
        self.executed: list[tuple[str, list[Any]]] = []
        self.notices: list[str] = []
        self.answers: list[tuple[str, Callable[[list[Any]], list[dict[str, Any]]]]] = []

    def on(self, fragment: str, answer: Callable[[list[Any]], list[dict[str, Any]]]) -> None:
        self.answers.append((fragment, answer))

    def prepare(self, query: str, argtypes: list[str]) -> Plan:
        plan = Plan(query, argtypes)
        self.prepared.append(plan)
        return plan

    def execute(self, plan: Plan | str, args: list[Any] | None = None) -> Result:
        query = plan.query if isinstance(plan, Plan) else plan
        self.executed.append((query, list(args or [])))
        for fragment, answer in self.answers:
            if fragment in query:
                return Result(answer(list(args or [])))
        return Result()

    def cursor(self, plan: Plan, args: list[Any] | None = None) -> Cursor:
        return Cursor(self.execute(plan, args))

    def error(self, message: str, detail: str | None = None, hint: str | None = None,
              sqlstate: str | None = None) -> None:
        raise PlpyError(message, detail, hint, sqlstate)

    def notice(self, message: str) -> None:
        self.notices.append(message)

    @staticmethod
    def quote_ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'


def service_answers(plpy: FakePlpy, answers: dict[str, tuple[int, Any]]) -> list[tuple[str, Any]]:
    """qvl._call answers by endpoint (status, JSON body); returns the calls made."""
    calls: list[tuple[str, Any]] = []

    def call(args: list[Any]) -> list[dict[str, Any]]:
        endpoint, body = args
        calls.append((endpoint, json.loads(body)))
        status, answer = answers[endpoint]
        return [{"status": status, "response": answer if isinstance(answer, str) else json.dumps(answer)}]

    plpy.on("qvl._call", call)
    return calls


def b64_floats(values: list[float]) -> str:
    """What the service sends for a float32 vector (base64 of little-endian floats)."""
    a = array.array("f", values)
    if sys.byteorder != "little":
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode()


def stand_in(monkeypatch: pytest.MonkeyPatch) -> FakePlpy:
    """A FakePlpy bound as the library's plpy, with the library's per-backend state emptied."""
    fake = FakePlpy()
    monkeypatch.setattr(spi, "plpy", fake)
    monkeypatch.setattr(spi, "plans", {})
    monkeypatch.setattr(service, "cache", {})
    monkeypatch.setattr(query_vectors, "memo", {"stamp": None, "values": {}})
    monkeypatch.setattr(filters, "filter_plans", OrderedDict())
    monkeypatch.setattr(filter_text, "probed", OrderedDict())
    return fake
