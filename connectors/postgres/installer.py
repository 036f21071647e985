"""``qvl pg install``: puts schema ``qvl`` into a database, or upgrades it in place, in one transaction.

``sql/`` is split the way pgai splits its extension:

- ``sql/incremental/NNN_*.sql``: tables, types and one-time data changes. Each runs once, in
  order, and its number is recorded in ``qvl.schema_version``; the installed version is
  ``max(version)``, so a second run applies only newer files.
- ``sql/idempotent/NNN_*.sql``: functions, views and grants (``CREATE OR REPLACE``). Every install
  applies them again, in order, so changing a function never needs a migration; a file numbered
  NNN is applied once the schema is at version NNN (a partial install, ``target``, gets the
  functions of its version only).

Where the installing role is no superuser or PL/Python is missing (managed Postgres), the same files
are applied as the managed install (``install_modes``, ``sql/managed.toml``): PL/Python functions
become PL/pgSQL functions that refuse with a clear error, and event triggers are left out.

The PL/Python library is a package of real Python modules, ``connectors/postgres/plpy/``. The
installer bundles them into one text (``plpy_bundle``): the body of ``qvl._load()``, written at the
``# qvl:library`` marker, imports them from memory; the prologue written at every ``# qvl:prologue``
marker fetches the package from ``GD``. The ``GD`` key is the bundle's hash, so backends that
loaded an older library load the new one after an upgrade, and nobody bumps a key by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql

from connectors.postgres.install_modes import FULL, MANAGED, Choice, choose, event_triggers, managed_sql, manifest
from connectors.postgres.plpy_bundle import BundleError, Library, library, render

log = logging.getLogger("qvl.pg.install")

FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
INCREMENTAL, IDEMPOTENT = "incremental", "idempotent"
LOCK_KEY = 0x71766C  # "qvl": concurrent installs wait for each other
PGVECTOR_MIN = (0, 7)
# Version from which qvl._apply_grants and qvl.set_service exist.
GRANTS_FROM = 3
SERVICE_FROM = 2
CA_FILE_FROM = 5  # qvl.set_service(..., ca_file)
BARE_ERRORS_FROM = 14  # qvl._bare_errors: public functions raise without a traceback (run after every file)

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
    applied: list[str] = field(default_factory=list)  # incremental files run by this install
    refreshed: list[str] = field(default_factory=list)  # idempotent files (re)applied by this install
    choice: Choice = field(default_factory=lambda: Choice(FULL, ""))  # the full or the managed install


def sql_dir() -> Path:
    """``QVL_SQL_DIR``, else the checkout's ``sql/``, else a copy shipped in the package."""
    if os.environ.get("QVL_SQL_DIR"):
        return Path(os.environ["QVL_SQL_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "sql"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("connectors.postgres") / "sql"))


def _numbered(directory: Path) -> list[SqlFile]:
    files = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if match:
            files.append(SqlFile(int(match.group(1)), path.stem, path))
    return files


def sql_files(directory: Path | None = None) -> list[SqlFile]:
    """The migrations (``sql/incremental/``): 001, 002, ... without gaps."""
    directory = directory or sql_dir() / INCREMENTAL
    files = _numbered(directory)
    versions = [f.version for f in files]
    if not files or versions != list(range(1, len(files) + 1)):
        raise InstallError(f"{directory}: expected 001_*.sql, 002_*.sql, ... without gaps, found {versions}")
    return files


def idempotent_files(directory: Path | None = None) -> list[SqlFile]:
    """The functions, views and grants (``sql/idempotent/``), in the order they are applied."""
    return _numbered(directory or sql_dir() / IDEMPOTENT)


def latest_version(directory: Path | None = None) -> int:
    return sql_files(directory)[-1].version


def _migration_text(root: Path, f: SqlFile, mode: str) -> str:
    """A migration's text as the install of ``mode`` runs it (a full_only one is empty when managed)."""
    text = f.path.read_text(encoding="utf-8")
    if mode != MANAGED:
        return text
    spec = manifest(root)
    return "" if f"{INCREMENTAL}/{f.path.name}" in spec.full_only else managed_sql(text, spec)


def _bundled(root: Path, lib: Library | None = None, mode: str = FULL) -> list[tuple[SqlFile, str]]:
    """Each idempotent file with its text, the library written in (``plpy_bundle.render``); for the
    managed install, its PL/Python functions as refusing stubs (and full_only files left out)."""
    try:
        lib = lib or library()
        spec = manifest(root) if mode == MANAGED else None
        out = []
        for f in idempotent_files(root / IDEMPOTENT):
            text = f.path.read_text(encoding="utf-8")
            if spec is not None:
                if f"{IDEMPOTENT}/{f.path.name}" in spec.full_only:
                    continue
                text = managed_sql(text, spec)
            out.append((f, render(text, lib, f"{IDEMPOTENT}/{f.path.name}")))
        return out
    except BundleError as exc:
        raise InstallError(str(exc)) from None


def script(directory: Path | None = None, lib: Library | None = None, public_grant: bool = True,
           mode: str = FULL) -> str:
    """The whole install as one SQL script, for a database where ``qvl pg install`` cannot run
    (``psql -1 -f``): every migration with its version row, every function, then the grants."""
    root = directory or sql_dir()
    parts = []
    for f in sql_files(root / INCREMENTAL):
        parts += [f"-- {INCREMENTAL}/{f.path.name}", _migration_text(root, f, mode),
                  f"INSERT INTO qvl.schema_version (version, name) VALUES ({f.version}, '{f.name}');"]
    parts.append(f"INSERT INTO qvl.config (key, value) VALUES ('install', '{mode}') "
                 f"ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;")
    for f, text in _bundled(root, lib, mode):
        parts += [f"-- {IDEMPOTENT}/{f.path.name}", text]
    parts.append("SELECT qvl._bare_errors();")
    parts.append(f"SELECT qvl._apply_grants({str(public_grant).lower()});")
    return "\n".join(parts) + "\n"


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


def _has_statements(text: str) -> bool:
    """Whether ``text`` holds more than comments and blank lines (a migration may hold none)."""
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())


def _privilege_words(where: str, message: str | None, mode: str) -> str:
    if mode == MANAGED:
        return (f"{where}: {message}; qvl in this database belongs to another role (a superuser made the full "
                f"install?), which alone may change its objects: run qvl pg install --managed as that role")
    return f"{where}: {message}; PL/Python is an untrusted language, so a superuser must run the install"


@contextlib.contextmanager
def _privileges(mode: str) -> Iterator[None]:
    """A privilege the installing role lacks, as an InstallError that says who can do it."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InstallError(_privilege_words("qvl pg install", exc.diag.message_primary, mode)) from None


def _run(conn: psycopg.Connection, name: str, text: str, mode: str = FULL) -> None:
    log.info("applying %s", name)
    try:
        conn.execute(text)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise InstallError(_privilege_words(name, exc.diag.message_primary, mode)) from None


def _follow_guard(conn: psycopg.Connection, migrations: list[SqlFile], version: int, mode: str) -> None:
    """The schema guard's event triggers as the install ``mode`` has them, whatever install made the
    database: made where missing on the full install (a managed database that gained PL/Python and a
    superuser), dropped on the managed one (a database moved off PL/Python)."""
    have = {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger").fetchall()}
    for f in migrations:
        if f.version > version:
            break
        for name, statement in event_triggers(f.path.read_text(encoding="utf-8")):
            if mode == FULL and name not in have:
                log.info("making event trigger %s (the schema guard)", name)
                conn.execute(statement)
            elif mode == MANAGED and name in have:
                log.info("dropping event trigger %s (the managed install has no schema guard)", name)
                conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(name)))


def ensure_worker_login(conn: psycopg.Connection, login: str, password: str | None = None) -> None:
    """Make ``login`` a login granted qvl_worker (the role the install makes), creating it if missing;
    ``password`` (when given) is set each time. A superuser login is refused: the worker refuses it."""
    if login == "qvl_worker":
        raise InstallError("--worker-login names the login to grant qvl_worker to, not qvl_worker itself")
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
    role = sql.Identifier(login)
    if row is None:
        # (A savepoint: an install into another database of the cluster may make it at the same time.)
        with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    elif row[0]:
        raise InstallError(f"--worker-login {login} is a superuser, which the worker refuses to run as "
                           f"(docs/postgres.md, \"The worker's role\"): name another login")
    if password is not None:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
    member = conn.execute("SELECT pg_has_role(%s, 'qvl_worker', 'MEMBER')", (login,)).fetchone()
    if not (member and member[0]):
        conn.execute(sql.SQL("GRANT qvl_worker TO {}").format(role))


def _set_service(conn: psycopg.Connection, after: int, mode: str, url: str, token: str | None,
                 ca_file: str | None) -> None:
    """``--service-url``: where the database calls the service (the full install only)."""
    if mode == MANAGED:
        log.warning("--service-url is not used on the managed install: the database never calls the "
                    "service (give the address to `qvl worker --service`)")
        return
    if after < SERVICE_FROM:
        raise InstallError("--service-url needs version >= 2")
    if ca_file is None:
        conn.execute("SELECT qvl.set_service(%s, %s)", (url, token))
    elif after < CA_FILE_FROM:
        raise InstallError(f"--service-ca-file needs version >= {CA_FILE_FROM}")
    else:
        conn.execute("SELECT qvl.set_service(%s, %s, ca_file => %s)", (url, token, ca_file))


def install(dsn: str, *, service_url: str | None = None, service_token: str | None = None,
            service_ca_file: str | None = None, public_grant: bool | None = None, target: int | None = None,
            directory: Path | None = None, worker_login: str | None = None,
            worker_password: str | None = None, managed: bool = False) -> InstallResult:
    """Install or upgrade qvl in the database at ``dsn`` (up to version ``target``; default: all).

    ``directory``: the ``sql/`` folder (its ``incremental/`` and ``idempotent/``). ``service_ca_file``:
    the CA file (on the database server) an https:// service's certificate is verified against. ``public_grant``:
    whether every role may embed, rerank and search; None keeps what an earlier install chose (True
    on a first install). ``worker_login``: a login for ``qvl worker``, made if missing and granted
    qvl_worker (``worker_password``, when given, is set as its password). ``managed``: the managed
    install even where the full one could be made (``install_modes.choose`` picks otherwise).
    """
    root = directory or sql_dir()
    migrations = sql_files(root / INCREMENTAL)
    newest = migrations[-1].version
    target = target or newest
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(_log_notice)
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))  # held until this connection closes
        choice = choose(conn, managed)
        _ensure_extension(conn, "vector")
        if choice.mode == FULL:
            _ensure_extension(conn, "plpython3u")
        else:
            log.warning(choice.line())
        functions = _bundled(root, mode=choice.mode)
        with _privileges(choice.mode), conn.transaction():
            before = installed_version(conn)
            schema = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                  "ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
            assert schema is not None
            # The files name pgvector's types unqualified: resolve them in the extension's schema.
            conn.execute(sql.SQL("SET LOCAL search_path = pg_catalog, {}").format(sql.Identifier(schema[0])))
            # No ALTER DEFAULT PRIVILEGES IN SCHEMA qvl REVOKE: a per-schema entry cannot take away
            # PUBLIC's global EXECUTE (it stored nothing). qvl._apply_grants revokes function by function.
            applied = []
            for f in migrations:
                if before < f.version <= target:
                    text = _migration_text(root, f, choice.mode)
                    if _has_statements(text):
                        _run(conn, f"{INCREMENTAL}/{f.path.name}", text, choice.mode)
                    conn.execute("INSERT INTO qvl.schema_version (version, name) VALUES (%s, %s)",
                                 (f.version, f.name))
                    applied.append(f.path.name)
            after = max(before, min(target, newest))
            if after >= 1:  # which install this is: create_vectorizer refuses mode => 'sync' on the managed one
                conn.execute("INSERT INTO qvl.config (key, value) VALUES ('install', %s) "
                             "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (choice.mode,))
            refreshed = []
            if before > newest:
                # A newer qvl installed this database: its functions stay (these would be older).
                log.warning("qvl schema at version %d, newer than this qvl (%d): functions left as they are",
                            before, newest)
            else:
                for f, text in functions:
                    if f.version <= after:
                        _run(conn, f"{IDEMPOTENT}/{f.path.name}", text, choice.mode)
                        refreshed.append(f.path.name)
                if after >= BARE_ERRORS_FROM:
                    conn.execute("SELECT qvl._bare_errors()")
            if before <= newest:
                _follow_guard(conn, migrations, after, choice.mode)
            if after >= GRANTS_FROM:
                if public_grant is None:
                    row = conn.execute("SELECT value::boolean FROM qvl.config WHERE key = 'public_grant'").fetchone()
                    public_grant = True if row is None else bool(row[0])
                conn.execute("SELECT qvl._apply_grants(%s)", (public_grant,))
            if worker_login is not None:
                if after < GRANTS_FROM:
                    raise InstallError(f"--worker-login needs version >= {GRANTS_FROM}")
                ensure_worker_login(conn, worker_login, worker_password)
            if service_url is not None:
                _set_service(conn, after, choice.mode, service_url, service_token, service_ca_file)
    if applied:
        log.info("qvl schema at version %d (was %d): applied %s", after, before, ", ".join(applied),
                 extra={"version": after, "version_before": before})
    else:
        log.info("qvl schema already at version %d", after, extra={"version": after})
    return InstallResult(before, after, applied, refreshed, choice)


def check_service(dsn: str) -> str | None:
    """None when the database reaches the service, else the error (install still succeeds)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT qvl.service_info()")
        except psycopg.Error as exc:
            hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
            return f"{exc.diag.message_primary or exc}{hint}"
    return None


if __name__ == "__main__":  # python -m connectors.postgres.installer > qvl.sql; psql -1 -f qvl.sql
    sys.stdout.write(script())
