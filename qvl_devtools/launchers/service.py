"""`qvl serve` as a real subprocess on free ports (tests, benchmarks and the demo start it this way)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from qvl_devtools.launchers.process import LocalProcess


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class ServiceProcess(LocalProcess):
    """Starts `python -m qvl_cli serve` for the given checkpoints.

    `env` adds QVL_* settings; `args` adds CLI flags. Ports survive `stop()`, so `start()`
    brings the service back on the same addresses (used to simulate an outage).
    """

    def __init__(self, *, embedding_model: str | None, reranker_model: str | None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (), token: str | None = None,
                 startup_timeout: float = 180.0) -> None:
        self.grpc_port, self.http_port = free_ports(2)
        self.embedding_model = embedding_model
        self.reranker_model = reranker_model
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.token = token
        self.startup_timeout = startup_timeout
        self.log_path = Path(tempfile.mkstemp(prefix="qvl-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def tls_cert(self) -> str | None:
        return self.extra_env.get("QVL_TLS_CERT") or os.environ.get("QVL_TLS_CERT")

    @property
    def http_url(self) -> str:
        # A TLS certificate names a host, not an address: https goes to localhost.
        return f"https://localhost:{self.http_port}" if self.tls_cert else f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "qvl_cli", "--log-format", "json", "serve",
               "--host", "127.0.0.1", "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        if self.embedding_model:
            cmd += ["--embedding-model", self.embedding_model]
        if self.reranker_model:
            cmd += ["--reranker-model", self.reranker_model]
        return cmd + self.args

    def start(self, wait: bool = True) -> ServiceProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"qvl serve is already running (pid {self.proc.pid}); stop() it first")
        env = {**os.environ, "QVL_DEVICE": "cpu", **self.extra_env}
        if self.token:
            env["QVL_TOKEN"] = self.token
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=os.getcwd())
        log.close()
        if wait:
            self.wait_ready()
        return self

    def pids(self) -> list[int]:
        """``qvl serve`` and every process under it (the model process, multiprocessing's helper)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as fh:
                        todo += [int(p) for p in fh.read().split()]
        return found

    def model_pid(self) -> int | None:
        """The model process (the one that has loaded torch)."""
        for pid in self.pids()[1:]:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as fh:
                if "libtorch" in fh.read():
                    return pid
        return None

    def rss(self) -> int:
        """Resident memory of the whole service: every process's RSS, summed (shared pages count twice)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"qvl serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                context = ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None
                with urllib.request.urlopen(f"{self.http_url}/.well-known/ready", timeout=2, context=context) as resp:
                    if resp.status == 204:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"qvl serve not ready after {self.startup_timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the service and every process under it at once, as when its machine is lost:
        no drain, no goodbye on open connections (the kernel resets them)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
