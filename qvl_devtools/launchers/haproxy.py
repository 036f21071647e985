"""A throwaway HAProxy (Debian's ``haproxy``) balancing HTTP over qvl replicas, for tests and demos.

The balancing, health checks and retries are HAProxy's own: round robin, a server leaves the
pool after two failed ``GET /.well-known/ready`` checks (204 = loaded and not draining) and a
request whose connection fails is sent to another server.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from qvl_devtools.launchers.process import LocalProcess
from qvl_devtools.launchers.service import free_ports

DEFAULT_HAPROXY_BIN = "/usr/sbin/haproxy"


def haproxy_config(frontend_port: int, stats_port: int, backends: Sequence[str], *,
                   timeout_s: float = 300.0, check_interval_ms: int = 500) -> str:
    """The configuration: one HTTP frontend, one backend of ``backends`` (``http://host:port``)."""
    servers = []
    for i, url in enumerate(backends):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"backend {url!r}: expected http://host:port")
        servers.append(f"    server qvl{i} {parts.hostname}:{parts.port} check")
    return "\n".join([
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        f"    timeout client {int(timeout_s)}s",
        f"    timeout server {int(timeout_s)}s",
        "    retries 3",
        "    option redispatch",
        "frontend qvl_http",
        f"    bind 127.0.0.1:{frontend_port}",
        "    default_backend qvl",
        "backend qvl",
        "    balance roundrobin",
        "    option httpchk GET /.well-known/ready",
        "    http-check expect status 204",
        # A refused connection or a 503 (loading, draining) goes to another server.
        "    retry-on conn-failure empty-response 503",
        f"    default-server inter {check_interval_ms}ms fall 2 rise 1",
        *servers,
        "listen stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "",
    ])


class HAProxy(LocalProcess):
    """``haproxy -db`` on free loopback ports in front of ``backends``."""

    def __init__(self, backends: Sequence[str], *, binary: str | None = None, timeout_s: float = 300.0) -> None:
        self.binary = binary or os.environ.get("QVL_HAPROXY_BIN", DEFAULT_HAPROXY_BIN)
        if not Path(self.binary).is_file():
            raise FileNotFoundError(f"haproxy not found at {self.binary}: `make setup` installs Debian's haproxy")
        self.backends = list(backends)
        self.port, self.stats_port = free_ports(2)
        self.timeout_s = timeout_s
        self.base_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("haproxy has not been started")
        return self.base_dir / "haproxy.log"

    def start(self) -> HAProxy:
        if self._process is not None:
            return self
        self.base_dir = Path(tempfile.mkdtemp(prefix="qvl-haproxy-"))
        config = self.base_dir / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, self.stats_port, self.backends, timeout_s=self.timeout_s))
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{check.stdout}{check.stderr}")
        self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen([self.binary, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"haproxy exited during start-up\n{self.log_tail()}")
            try:
                self.stats()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"haproxy stats page did not answer\n{self.log_tail()}") from None
                time.sleep(0.1)

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's own per-proxy, per-server statistics (its CSV stats page)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as response:
            text = response.read().decode().lstrip("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def server_requests(self) -> dict[str, int]:
        """HTTP responses each backend server gave (``hrsp_*`` summed), by server name."""
        out = {}
        for row in self.stats():
            if row["pxname"] == "qvl" and row["svname"].startswith("qvl"):
                out[row["svname"]] = sum(int(row[k] or 0) for k in row if k.startswith("hrsp_"))
        return out

    def retries(self) -> int:
        """Requests HAProxy sent again (to the same or another server) after a failed try."""
        return sum(int(r["wretr"] or 0) + int(r["wredis"] or 0) for r in self.stats()
                   if r["pxname"] == "qvl" and r["svname"] == "BACKEND")

    def server_status(self) -> dict[str, str]:
        return {r["svname"]: r["status"] for r in self.stats()
                if r["pxname"] == "qvl" and r["svname"].startswith("qvl")}

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
