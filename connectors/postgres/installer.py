"""``qvl pg install``: applies ``sql/NNN_*.sql`` in order, once each, in one transaction.

The installed version is ``max(version)`` in ``qvl.schema_version``; a second run applies only
newer files (so the same command installs and upgrades in place, and does nothing when current).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

log = logging.getLogger("qvl.pg.install")

FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
LOCK_KEY = 0x71766C  # "qvl": concurrent installs wait for each other
PGVECTOR_MIN = (0, 7)
# Version from which qvl._apply_grants and qvl.set_service exist.
GRANTS_FROM = 3
SERVICE_FROM = 2

EXTENSION_HELP = {
    "vector": "pgvector (>= 0.7) is not installed on the database server. Debian 13 / Ubuntu: "
              "apt install postgresql-NN-pgvector; Debian 12: build Debian's source package "
              "(scripts/setup.sh does it); elsewhere: https://github.com/pgvector/pgvector#installation",
    "plpython3u": "PL/Python (plpython3u) is not installed on the database server. Debian/Ubuntu: "
                  "apt install postgresql-plpython3-NN; RHEL: dnf install postgresql-plpython3; "
                  "the official Docker image needs it added too (see docker-compose.yml).",
}


class InstallError(RuntimeError):
    """The database cannot take qvl as it is; the message says what to do."""


@dataclass(frozen=True)
class SqlFile:
    version: int
    name: str
    path: Path


@dataclass
class InstallResult:
    version_before: int
    version_after: int
    applied: list[str] = field(default_factory=list)


def sql_dir() -> Path:
    """``QVL_SQL_DIR``, else the checkout's ``sql/``, else a copy shipped in the package."""
    if os.environ.get("QVL_SQL_DIR"):
        return Path(os.environ["QVL_SQL_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "sql"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("connectors.postgres") / "sql"))


def sql_files(directory: Path | None = None) -> list[SqlFile]:
    directory = directory or sql_dir()
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match:
            files.append(SqlFile(int(match.group(1)), path.stem, path))
    versions = [f.version for f in files]
    if not files or versions != list(range(1, len(files) + 1)):
        raise InstallError(f"{directory}: expected 001_*.sql, 002_*.sql, ... without gaps, found {versions}")
    return files


def latest_version(directory: Path | None = None) -> int:
    return sql_files(directory)[-1].version


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    log.info("postgres: %s", diag.message_primary)


def _ensure_extension(conn: psycopg.Connection, name: str) -> None:
    row = conn.execute("SELECT default_version, installed_version FROM pg_available_extensions WHERE name = %s",
                       (name,)).fetchone()
    if row is None:
        raise InstallError(EXTENSION_HELP[name])
    if row[1] is None:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InstallError(f"creating extension {name} needs a superuser ({exc.diag.message_primary}); "
                               f"ask one to run: CREATE EXTENSION {name};") from None
    if name == "vector":
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None
        parts = tuple(int(p) for p in re.findall(r"\d+", version[0])[:2])
        if parts < PGVECTOR_MIN:
            raise InstallError(f"pgvector {version[0]} is too old (qvl needs >= 0.7 for halfvec, bit and HNSW); "
                               f"install a newer build, then: ALTER EXTENSION vector UPDATE;")


def installed_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT to_regclass('qvl.schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute("SELECT coalesce(max(version), 0) FROM qvl.schema_version").fetchone()
    return int(got[0]) if got else 0


def install(dsn: str, *, service_url: str | None = None, service_token: str | None = None,
            public_grant: bool | None = None, target: int | None = None,
            directory: Path | None = None) -> InstallResult:
    """Install or upgrade qvl in the database at ``dsn`` (up to version ``target``; default: all).

    ``public_grant``: whether every role may embed, rerank and search; None keeps what an earlier
    install chose (True on a first install).
    """
    files = sql_files(directory)
    target = target or files[-1].version
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(_log_notice)
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))  # held until this connection closes
        for ext in ("vector", "plpython3u"):
            _ensure_extension(conn, ext)
        with conn.transaction():
            before = installed_version(conn)
            schema = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                  "ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
            assert schema is not None
            # The files name pgvector's types unqualified: resolve them in the extension's schema.
            conn.execute(sql.SQL("SET LOCAL search_path = pg_catalog, {}").format(sql.Identifier(schema[0])))
            if before:
                # Another role may upgrade: its new functions must be private by default as well.
                conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC")
            applied = []
            for f in files:
                if before < f.version <= target:
                    log.info("applying %s", f.path.name)
                    try:
                        conn.execute(f.path.read_text(encoding="utf-8"))
                    except psycopg.errors.InsufficientPrivilege as exc:
                        raise InstallError(f"{f.path.name}: {exc.diag.message_primary}; PL/Python is an untrusted "
                                           f"language, so a superuser must run the install") from None
                    conn.execute("INSERT INTO qvl.schema_version (version, name) VALUES (%s, %s)",
                                 (f.version, f.name))
                    applied.append(f.path.name)
            after = max(before, min(target, files[-1].version))
            if after >= GRANTS_FROM:
                if public_grant is None:
                    row = conn.execute("SELECT value::boolean FROM qvl.config WHERE key = 'public_grant'").fetchone()
                    public_grant = True if row is None else bool(row[0])
                conn.execute("SELECT qvl._apply_grants(%s)", (public_grant,))
            if service_url is not None:
                if after < SERVICE_FROM:
                    raise InstallError("--service-url needs version >= 2")
                conn.execute("SELECT qvl.set_service(%s, %s)", (service_url, service_token))
    if applied:
        log.info("qvl schema at version %d (was %d): applied %s", after, before, ", ".join(applied),
                 extra={"version": after, "version_before": before})
    else:
        log.info("qvl schema already at version %d", after, extra={"version": after})
    return InstallResult(before, after, applied)


def check_service(dsn: str) -> str | None:
    """None when the database reaches the service, else the error (install still succeeds)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT qvl.service_info()")
        except psycopg.Error as exc:
            hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
            return f"{exc.diag.message_primary or exc}{hint}"
    return None
