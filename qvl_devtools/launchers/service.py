"""`qvl serve` as a real subprocess on free ports (tests, benchmarks and the demo start it this way)."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from qvl_devtools.launchers.ports import (
    START_ATTEMPTS,
    bind_failed,
    free_ports,
    hold_for,
    listening_ports,
    release_ports,
)
from qvl_devtools.launchers.process import LocalProcess

__all__ = ["ServiceProcess", "free_ports"]


class ServiceProcess(LocalProcess):
    """Starts `python -m qvl_cli serve` for the given checkpoints.

    `env` adds QVL_* settings; `args` adds CLI flags. If the first start cannot bind a port (another
    process took it), it starts again on fresh ports: the ports are final once it is ready. They
    survive `stop()`, so `start()` brings the service back on the same addresses (used to simulate
    an outage).
    """

    def __init__(self, *, embedding_model: str | None, reranker_model: str | None,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (), token: str | None = None,
                 startup_timeout: float = 180.0) -> None:
        self._ports = free_ports(2)
        hold_for(self, self._ports)
        self.grpc_port, self.http_port = self._ports
        self._settled = False  # ready once: the ports are the service's address from then on
        self._log_start = 0
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
        self._launch()
        if wait:
            self.wait_ready()
        return self

    def _launch(self) -> None:
        env = {**os.environ, "QVL_DEVICE": "cpu", **self.extra_env}
        if self.token:
            env["QVL_TOKEN"] = self.token
        self._log_start = self.log_path.stat().st_size
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=os.getcwd())
        log.close()

    def _bind_failed(self) -> bool:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return bind_failed(log.read().decode(errors="replace"))

    def _move_to_fresh_ports(self) -> None:
        old = list(self._ports)
        self._ports[:] = free_ports(2)  # in place: hold_for releases what the list holds at the end
        release_ports(old)
        self.grpc_port, self.http_port = self._ports

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
        """Until /.well-known/ready answers 204. A first start that could not bind a port goes on
        fresh ports (``grpc_port`` and ``http_port`` change): read them after this returns."""
        deadline = time.monotonic() + self.startup_timeout
        attempts = 1
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                if not self._settled and attempts < START_ATTEMPTS and self._bind_failed():
                    attempts += 1
                    self._move_to_fresh_ports()
                    self._launch()
                    deadline = time.monotonic() + self.startup_timeout
                    continue
                raise RuntimeError(f"qvl serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                context = ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None
                with urllib.request.urlopen(f"{self.http_url}/.well-known/ready", timeout=2, context=context) as resp:
                    # 204 from this service, not from whatever else listens there (it would exit soon)
                    if resp.status == 204 and set(self._ports) <= listening_ports(self.pids()):
                        self._settled = True
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
