"""Which install a database gets, and the managed install's SQL (issue 22).

The full install needs PL/Python (``plpython3u``, an untrusted language: only a superuser creates its
functions) and a superuser (event triggers). Where either is missing — RDS, Cloud SQL, AlloyDB, Azure,
Supabase, Neon — the managed install applies the same files with two changes, declared in one place
(``sql/managed.toml``): every PL/Python function becomes a PL/pgSQL function of the same signature that
raises a clear error, and event triggers are left out. Keeping every signature means the plain SQL
that grants, comments on or wraps those functions applies unchanged on both installs.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FULL, MANAGED = "full", "managed"
REFUSED_SQLSTATE = "0A000"  # feature_not_supported
LEFT_OUT = ("model calls inside the database (qvl.embed, qvl.rerank, qvl.query_embedding, text-query qvl.search "
            "and qvl.hybrid_search raise, naming the application-side call), mode => 'sync', and the schema "
            "guard (event triggers need a superuser; the worker holds a vectorizer whose table changed)")

# A PL/Python function: its header (the name, then everything up to the body, which never holds another
# statement's body or start), and its $py$ body.
PLPY_FUNCTION = re.compile(r"(?P<head>CREATE\s+OR\s+REPLACE\s+FUNCTION\s+(?P<name>[\w.]+)\s*\("
                           r"(?:(?!\$py\$|\$\$|;|CREATE\s).)*?)\bAS\s+\$py\$.*?\$py\$", re.S | re.I)
PLPY_LANGUAGE = re.compile(r"\bLANGUAGE\s+plpython3u\b", re.I)
EVENT_TRIGGER_NAMED = re.compile(r"^\s*CREATE\s+EVENT\s+TRIGGER\s+(\w+)\b[^;]*;", re.M | re.I)
EVENT_TRIGGER = re.compile(r"^\s*CREATE\s+EVENT\s+TRIGGER\b[^;]*;[ \t]*\n?", re.M | re.I)
STUB_TAG = "$qvl_managed$"


@dataclass(frozen=True)
class Manifest:
    """``sql/managed.toml``: the files left out whole, and each stub's hint by function name."""

    full_only: frozenset[str]
    hints: dict[str, str]

    def hint(self, function: str) -> str:
        return self.hints.get(function, self.hints["default"])


def manifest(sql_root: Path) -> Manifest:
    data: dict[str, Any] = tomllib.loads((sql_root / "managed.toml").read_text(encoding="utf-8"))
    return Manifest(frozenset(data.get("full_only", [])), dict(data["hints"]))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def stub(name: str, head: str, hint: str) -> str:
    """A PL/pgSQL body in place of a PL/Python one: the same signature, attributes and comment, and an
    error naming PL/Python and the application-side call."""
    message = (f"qvl: {name} needs PL/Python (plpython3u) inside the database, which this managed install "
               f"of qvl has not (no superuser, or no PL/Python on the server)")
    return (PLPY_LANGUAGE.sub("LANGUAGE plpgsql", head)
            + f"AS {STUB_TAG}\nBEGIN\n    RAISE EXCEPTION USING ERRCODE = '{REFUSED_SQLSTATE}', MESSAGE = "
            + f"{_literal(message)},\n        HINT = {_literal(hint)};\nEND\n{STUB_TAG}")


def managed_sql(text: str, spec: Manifest) -> str:
    """``text`` as the managed install applies it: PL/Python functions as stubs, no event triggers."""
    def replace(m: re.Match[str]) -> str:
        if not PLPY_LANGUAGE.search(m.group("head")):
            return m.group(0)
        return stub(m.group("name"), m.group("head"), spec.hint(m.group("name")))

    return EVENT_TRIGGER.sub("", PLPY_FUNCTION.sub(replace, text))


def event_triggers(text: str) -> list[tuple[str, str]]:
    """(name, statement) of each CREATE EVENT TRIGGER in ``text`` (a migration's): what the full
    install has and the managed one leaves out, also when a database moves between them in place."""
    return [(m.group(1), m.group(0).strip()) for m in EVENT_TRIGGER_NAMED.finditer(text)]


@dataclass(frozen=True)
class Choice:
    mode: str  # FULL or MANAGED
    why: str  # for the managed install: why it is the one

    def line(self) -> str:
        """The one line the install says (the managed install only)."""
        return f"qvl: managed install ({self.why}): left out {LEFT_OUT}" if self.mode == MANAGED else ""


def choose(conn: Any, forced_managed: bool) -> Choice:
    """The full install where the role may create PL/Python functions and PL/Python exists on the
    server; the managed install otherwise, or when asked."""
    if forced_managed:
        return Choice(MANAGED, "--managed")
    row = conn.execute("SELECT r.rolsuper, EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'plpython3u') "
                       "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    superuser, plpython = bool(row and row[0]), bool(row and row[1])
    if not superuser:
        return Choice(MANAGED, "the installing role is no superuser, and PL/Python functions need one")
    if not plpython:
        return Choice(MANAGED, "PL/Python (plpython3u) is not installed on the database server")
    return Choice(FULL, "")
