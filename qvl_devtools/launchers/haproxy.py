"""HAProxy (Debian's ``haproxy`` package) in front of qvl replicas' HTTP ports, with a generated
config: tests and local setups put the SQL functions and Weaviate behind one address this way.

What the config does (docs/scaling.md explains it; ``docker/haproxy.cfg`` is the same for
docker-compose):

- ``option httpchk GET /.well-known/ready`` with ``http-check expect status 204``: a replica that
  is loading, draining or restarting its model process answers 503 and is taken out after
  ``fall`` failed checks, put back after ``rise`` good ones;
- ``retry-on conn-failure empty-response 503`` with ``option redispatch 1``: a request that could
  not be sent, that a replica dropped without a word (it died mid-request), or that it answered
  503 (draining, not ready) goes to another replica. qvl's embed and rerank are idempotent, so a
  replay is safe. Requests larger than ``tune.bufsize`` are not replayed (HAProxy keeps a copy
  only of those that fit): 1 MiB here;
- ``balance leastconn``: a replica busy with long requests gets fewer new ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from qvl_devtools.launchers.process import LocalProcess

DEFAULT_HAPROXY = "/usr/sbin/haproxy"
SETUP_HINT = "run `make setup` (scripts/setup.sh installs Debian's haproxy), or set QVL_HAPROXY"
BACKEND = "qvl_replicas"


def haproxy_binary() -> Path:
    return Path(os.environ.get("QVL_HAPROXY", DEFAULT_HAPROXY))


def haproxy_config(servers: Sequence[tuple[str, str]], *, bind: str, stats_socket: str | None = None,
                   check_inter_ms: int = 500, fall: int = 2, rise: int = 2, server_timeout_s: int = 310,
                   bufsize: int = 1 << 20) -> str:
    """The config text: ``servers`` are (name, host:port of a replica's HTTP listener)."""
    stats = f"    stats socket {stats_socket} mode 600 level admin\n" if stats_socket else ""
    lines = "".join(f"    server {name} {address} check\n" for name, address in servers)
    return f"""global
    log stdout format raw local0 info
{stats}    tune.bufsize {bufsize}

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client {server_timeout_s}s
    timeout server {server_timeout_s}s
    timeout http-request 30s
    # A request that could not be sent, that a replica dropped without answering (it died), or
    # that it answered 503 (draining, not ready) is sent again, to another replica (embed and
    # rerank are idempotent).
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend qvl
    bind {bind}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    # Only a replica whose models are loaded and warm answers 204; it answers 503 while it loads,
    # drains (SIGTERM) or restarts its model process.
    option httpchk GET /.well-known/ready
    http-check expect status 204
    default-server inter {check_inter_ms}ms fall {fall} rise {rise}
{lines}"""


class HAProxy(LocalProcess):
    """``haproxy -db`` on a free port of 127.0.0.1 in front of ``replicas`` (HTTP URLs of qvl serve).

    The port is bound here, at once, and HAProxy listens on that very socket (``bind fd@N``), so
    no other process can take it in between; ``port`` names one (refused at once if taken)."""

    def __init__(self, replicas: Sequence[str], *, port: int | None = None, check_inter_ms: int = 500) -> None:
        self.binary = haproxy_binary()
        if not self.binary.is_file():
            raise FileNotFoundError(f"HAProxy binary {self.binary} not found; {SETUP_HINT}")
        # Listening at once: no other socket may bind the port then, whatever its options (a
        # connection that comes before HAProxy waits in the backlog).
        self.socket = socket.create_server(("127.0.0.1", port or 0))
        self.port = self.socket.getsockname()[1]
        self.names = [f"qvl-{chr(ord('a') + i)}" for i in range(len(replicas))]
        self.servers = [(name, url.split("://", 1)[1].rstrip("/")) for name, url in zip(self.names, replicas,
                                                                                          strict=True)]
        self.check_inter_ms = check_inter_ms
        self.base_dir = Path(tempfile.mkdtemp(prefix="qvl-haproxy-"))
        self.log_path = self.base_dir / "haproxy.log"
        self.config_path = self.base_dir / "haproxy.cfg"
        self.stats_socket = self.base_dir / "admin.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        # The socket bound in __init__, inherited under the same number (pass_fds).
        return haproxy_config(self.servers, bind=f"fd@{self.socket.fileno()}", stats_socket=str(self.stats_socket),
                              check_inter_ms=self.check_inter_ms)

    def start(self, timeout: float = 60.0) -> HAProxy:
        self.config_path.write_text(self.config())
        fds = [self.socket.fileno()]
        checked = subprocess.run([str(self.binary), "-c", "-q", "-f", str(self.config_path)],
                                 capture_output=True, text=True, pass_fds=fds)
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy refused its config:\n{checked.stdout}{checked.stderr}\n{self.config()}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([str(self.binary), "-db", "-f", str(self.config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, pass_fds=fds)
        log.close()
        self.socket.close()  # HAProxy has it now
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until a replica is UP behind it (its /.well-known/ready answers 204 through HAProxy)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                  urllib.request.urlopen(f"{self.url}/.well-known/ready", timeout=2) as resp):
                if resp.status == 204:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"no replica became ready behind haproxy in {timeout} s:\n{self.log_tail()}")

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics of the replicas' backend (``show stat`` on its stats socket), by
        server name, and "BACKEND" for the backend as a whole."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = data.decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        out = {}
        for row in rows[1:]:
            fields = dict(zip(header, row.split(","), strict=False))
            if fields.get("pxname") == BACKEND:
                out[fields["svname"]] = fields
        return out

    def server_states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it ("UP", "DOWN", "UP 1/2", ...)."""
        return {name: fields["status"] for name, fields in self.stats().items() if name in self.names}

    def server_requests(self) -> dict[str, int]:
        """HTTP responses each replica gave through HAProxy so far (``hrsp_*`` summed), by name."""
        return {name: sum(int(v or 0) for k, v in fields.items() if k.startswith("hrsp_"))
                for name, fields in self.stats().items() if name in self.names}

    def retries(self) -> tuple[int, int]:
        """(requests sent again, of which to another replica) so far: ``wretr`` and ``wredis``."""
        backend = self.stats()["BACKEND"]
        return int(backend.get("wretr") or 0), int(backend.get("wredis") or 0)

    def stop(self) -> None:
        self.socket.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base_dir, ignore_errors=True)
