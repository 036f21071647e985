"""`qvl serve`'s request process on a thread of the test's own process, with the model process
replaced by ``FakeModelLink``: the real gRPC and HTTP listeners, auth, admission, adapters and
health, ready in milliseconds instead of a model load. For tests of the request side where the
model is not what they test; the rest use ``ServiceProcess`` (a real process, the real model).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from unittest import mock

from tests.support.fake_model_link import FakeModelLink
from tests.support.ports import free_ports
from tests.support.service import TINY
from vectorizer_service.core.settings import Settings
from vectorizer_service.server import serve


class InProcessService:
    """Addresses as ``ServiceProcess``'s (``http_url``, ``grpc_target``, ...). ``env`` holds QVL_*
    settings, read exactly as the real service reads its environment."""

    def __init__(self, *, embedding_model: str | None = str(TINY), reranker_model: str | None = str(TINY),
                 env: Mapping[str, str] | None = None, token: str | None = None,
                 startup_timeout: float = 30.0) -> None:
        self.grpc_port, self.http_port = free_ports(2)
        # No drain notice unless a test asks for one: nothing here is about the drain.
        self.env = {"QVL_DRAIN_NOTICE_SECONDS": "0", **(env or {})}
        self.token = token
        self.embedding_model = embedding_model
        self.reranker_model = reranker_model
        self.startup_timeout = startup_timeout
        self.link: FakeModelLink | None = None
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None

    def settings(self) -> Settings:
        with mock.patch.dict(os.environ, self.env):
            return Settings.load(embedding_model=self.embedding_model, reranker_model=self.reranker_model,
                                 host="127.0.0.1", grpc_port=self.grpc_port, http_port=self.http_port,
                                 token=self.token)

    @property
    def tls_cert(self) -> str | None:
        return self.env.get("QVL_TLS_CERT")

    @property
    def http_url(self) -> str:
        return f"https://localhost:{self.http_port}" if self.tls_cert else f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Self:
        settings = self.settings()
        self.link = FakeModelLink(settings)
        up = threading.Event()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stopping = asyncio.Event()
            up.set()
            self.exit_code = await serve(settings, "WARNING", "text", link=self.link, stop=self.stopping)

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by wait_ready / stop
                self.error = exc
                up.set()

        self.thread = threading.Thread(target=run, name=f"qvl-serve-{self.http_port}", daemon=True)
        self.thread.start()
        up.wait(self.startup_timeout)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        context = ssl.create_default_context(cafile=self.tls_cert) if self.tls_cert else None
        while time.monotonic() < deadline:
            if self.error is not None or (self.thread is not None and not self.thread.is_alive()):
                raise RuntimeError(f"the in-process service ended (exit {self.exit_code}): {self.error!r}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/.well-known/ready", timeout=2, context=context) as r:
                    if r.status == 204:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise TimeoutError(f"the in-process service was not ready after {self.startup_timeout}s")

    def stop(self) -> int | None:
        """As SIGTERM does: drain, close the listeners; returns serve()'s exit code."""
        if self.thread is None or self.loop is None or self.stopping is None:
            return self.exit_code
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(60)
        if self.thread.is_alive():
            raise TimeoutError("the in-process service did not stop within 60 s")
        self.thread = None
        if self.error is not None:
            raise RuntimeError("the in-process service failed") from self.error
        return self.exit_code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
