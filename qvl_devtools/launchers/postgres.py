"""A throwaway PostgreSQL server in a temporary directory (benchmarks, the demo, tests), and hot
standbys of it fed by streaming replication (``pg_basebackup -R``).

PostgreSQL refuses to run as root, so when this process is root every server command runs as
the ``postgres`` OS user (``runuser -u postgres --``) and the directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from qvl_devtools.launchers.ports import START_ATTEMPTS, bind_failed, free_port, hold_for, release_ports
from qvl_devtools.launchers.process import LocalDataServer, remove_detached

DEFAULT_PG_BINDIR = "/usr/lib/postgresql/15/bin"
SETUP_HINT = "run `make setup` (scripts/setup.sh) to install it, or set QVL_PG_BINDIR"

THROWAWAY_SETTINGS: dict[str, str] = {
    "max_connections": "100",
    "shared_buffers": "128MB",
    # Durability is worthless for a throwaway cluster; these make DDL and inserts much faster.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


# A standby's own settings: queries on it are not cancelled because the primary vacuumed rows
# they still read (the primary hears what the standby's queries need).
STANDBY_SETTINGS: dict[str, str] = {"hot_standby": "on", "hot_standby_feedback": "on"}


# The login the demo, the benchmarks and the tests run `qvl worker` as (the worker refuses a superuser).
WORKER_LOGIN = "qvl_worker_login"


def worker_dsn(dsn: str, login: str = WORKER_LOGIN) -> str:
    """``dsn`` (the installing superuser's) as ``login``, made if missing and granted qvl_worker: what an
    operator runs the worker as (docs/postgres.md). qvl must be installed in the database first."""
    from connectors.postgres.installer import ensure_worker_login

    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_worker_login(conn, login)
    return make_conninfo(dsn, user=login)


def pg_bindir() -> Path:
    return Path(os.environ.get("QVL_PG_BINDIR", DEFAULT_PG_BINDIR))


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalPostgres(LocalDataServer):
    """initdb + pg_ctl start on a free port of 127.0.0.1, trust auth; ``stop()`` removes it all.

    A first start that cannot bind its port (another process took it) goes on a fresh one; a port
    given by the caller is kept (its failure is reported)."""

    def __init__(self, bindir: Path | None = None, *, port: int | None = None,
                 settings: Mapping[str, str] | None = None, os_user: str = "postgres") -> None:
        self.bindir = bindir or pg_bindir()
        for tool in ("initdb", "pg_ctl"):
            if not (self.bindir / tool).is_file():
                raise FileNotFoundError(f"PostgreSQL binary {self.bindir / tool} not found; {SETUP_HINT}")
        self._chosen = port is None  # ours to change while the server has never run
        self._ports = [port or free_port()]
        hold_for(self, self._ports)
        self.port = self._ports[0]
        self._settled = False
        self.slot_name: str | None = None  # a standby's replication slot on its primary
        self.settings = {**THROWAWAY_SETTINGS, **(settings or {})}
        self._as_root = os.geteuid() == 0
        self._os_user = os_user
        self.base_dir: Path | None = None
        self._running = False
        self.primary: LocalPostgres | None = None  # set on a standby

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def start(self) -> LocalPostgres:
        """Start the server, creating the cluster on first use; a stopped server restarts on its data."""
        if self._running:
            return self
        if self.base_dir is None:
            self._init_cluster()
        self._start()
        return self

    def start_standby(self, settings: Mapping[str, str] | None = None) -> LocalPostgres:
        """A hot standby of this (running) server on a new port: ``pg_basebackup -R`` copies the
        cluster and writes ``standby.signal`` and ``primary_conninfo``; a physical replication slot
        keeps the WAL it has not replayed yet. ``stop()`` it before this server."""
        if not self._running:
            raise RuntimeError("start the primary first")
        standby = LocalPostgres(self.bindir, settings={**self.settings, **STANDBY_SETTINGS, **(settings or {})},
                                os_user=self._os_user)
        standby.base_dir = Path(tempfile.mkdtemp(prefix="qvl-pg-standby-", dir="/tmp"))
        standby._own_dirs()
        standby.slot_name = f"qvl_standby_{standby.port}"
        standby._run(self.bindir / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     "-D", str(standby.data_dir), "-R", "-X", "stream", "-C", "-S", standby.slot_name,
                     "--checkpoint=fast", "--no-sync")
        standby._write_settings()  # after the copied postgresql.conf: its own port and socket
        standby.primary = self
        standby._start()
        return standby

    @property
    def in_recovery(self) -> bool:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def catch_up(self, timeout: float = 60.0) -> None:
        """Wait until this standby has replayed everything its primary had committed when called."""
        if self.primary is None:
            raise RuntimeError("not a standby")
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            # The insert position, not pg_current_wal_lsn (what is written out so far): with
            # synchronous_commit off a commit returns before its record is written, and the write
            # position can lag it by up to wal_writer_delay.
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            while True:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
                if done and done[0]:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby did not replay up to {row[0]} in {timeout} s")
                time.sleep(0.05)

    def promote(self) -> None:
        """Make this standby a primary (``pg_ctl promote``): it leaves recovery and takes writes."""
        self._pg_ctl("promote", "-w", "-t", "60")

    def _start(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path))
                break
            except RuntimeError as exc:
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    port_taken = bind_failed(log.read().decode(errors="replace"))
                if not (port_taken and self._chosen and not self._settled and attempt < START_ATTEMPTS):
                    raise RuntimeError(f"{exc}\n--- server log ---\n{self.log_tail()}") from exc
                self._move_to_a_fresh_port()
        self._running = self._settled = True

    def _move_to_a_fresh_port(self) -> None:
        old = self.port
        self._ports[:] = [free_port()]  # in place: hold_for releases what the list holds at the end
        release_ports([old])
        self.port = self._ports[0]
        self._write_settings()  # appended: the last `port` line wins

    def stop(self, *, remove: bool = True) -> None:
        """Fast shutdown; with remove (the default) the whole temporary directory goes too (in the
        background: ``remove_detached``), and a standby's replication slot on its primary (which
        would keep WAL for it forever). A cluster that is removed stops at once (immediate): nothing
        of it is kept, and a backend waiting in PL/Python sees fast mode's SIGTERM only once it
        returns."""
        try:
            if self._running:
                self._running = False
                self._pg_ctl("stop", "-m", "immediate" if remove else "fast", "-w", "-t", "60")
        finally:
            if remove and self.base_dir is not None:
                remove_detached(self.base_dir)
                self.base_dir = None
                self._drop_slot()

    def _drop_slot(self) -> None:
        if self.primary is None or not self.primary._running:
            return
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (self.slot_name,))

    def _init_cluster(self) -> None:
        # Under /tmp: the postgres user must be able to reach the directory.
        self.base_dir = Path(tempfile.mkdtemp(prefix="qvl-pg-", dir="/tmp"))
        self._own_dirs()
        # initdb's pg_hba.conf trusts local and 127.0.0.1 connections, replication ones included.
        initdb_args = ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        self._run(self.bindir / "initdb", *initdb_args, "--locale=C.UTF-8", "--no-sync")
        self._write_settings()

    def _own_dirs(self) -> None:
        self.socket_dir.mkdir()
        if self._as_root:
            entry = pwd.getpwnam(self._os_user)
            for path in (self._base(), self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _write_settings(self) -> None:
        settings = {**self.settings, "port": str(self.port), "listen_addresses": "127.0.0.1",
                    "unix_socket_directories": str(self.socket_dir)}
        lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# qvl throwaway settings\n" + "\n".join(lines) + "\n")

    def _pg_ctl(self, *args: str) -> None:
        self._run(self.bindir / "pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: Path, *args: str) -> None:
        command = [str(program), *args]
        if self._as_root:
            command = ["runuser", "-u", self._os_user, "--", *command]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        try:
            subprocess.run(command, cwd=self._base(), env=env, check=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{' '.join(command)} failed ({exc.returncode}):\n{exc.output}") from exc
