"""A throwaway PostgreSQL server in a temporary directory (benchmarks, the demo, tests).

PostgreSQL refuses to run as root, so when this process is root every server command runs as
the ``postgres`` OS user (``runuser -u postgres --``) and the directory is handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from qvl_devtools.launchers.process import LocalDataServer

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


def pg_bindir() -> Path:
    return Path(os.environ.get("QVL_PG_BINDIR", DEFAULT_PG_BINDIR))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalPostgres(LocalDataServer):
    """initdb + pg_ctl start on a free port of 127.0.0.1, trust auth; ``stop()`` removes it all."""

    def __init__(self, bindir: Path | None = None, *, port: int | None = None,
                 settings: Mapping[str, str] | None = None, os_user: str = "postgres") -> None:
        self.bindir = bindir or pg_bindir()
        for tool in ("initdb", "pg_ctl"):
            if not (self.bindir / tool).is_file():
                raise FileNotFoundError(f"PostgreSQL binary {self.bindir / tool} not found; {SETUP_HINT}")
        self.port = port or free_port()
        self.settings = {**THROWAWAY_SETTINGS, **(settings or {})}
        self._as_root = os.geteuid() == 0
        self._os_user = os_user
        self.base_dir: Path | None = None
        self._running = False

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
        try:
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path))
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{self.log_tail()}") from exc
        self._running = True
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Fast shutdown; with remove (the default) the whole temporary directory goes too."""
        try:
            if self._running:
                self._running = False
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
        finally:
            if remove and self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def _init_cluster(self) -> None:
        # Under /tmp: the postgres user must be able to reach the directory.
        self.base_dir = Path(tempfile.mkdtemp(prefix="qvl-pg-", dir="/tmp"))
        self.socket_dir.mkdir()
        if self._as_root:
            entry = pwd.getpwnam(self._os_user)
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        initdb_args = ["-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
        self._run(self.bindir / "initdb", *initdb_args, "--locale=C.UTF-8", "--no-sync")
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
