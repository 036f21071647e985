"""The framework integrations' way to the service: one blocking ``Client``, one ``AsyncClient``
per event loop (a grpc.aio channel belongs to the loop that made it), and the service's query
instruction (``Info``), asked once.

Only the client's public API is used (``Client``, ``AsyncClient`` and their methods).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from connectors.client import AsyncClient, Client, QvlClientError

DEFAULT_SERVICE = "127.0.0.1:50051"


def default_service() -> str:
    """``QVL_SERVICE`` (as ``qvl worker`` reads it), else the local default."""
    return os.environ.get("QVL_SERVICE", DEFAULT_SERVICE)


class ServiceLink:
    def __init__(self, service: str, *, token: str | None = None, tls: bool = False, ca_file: str | None = None,
                 timeout: float = 120.0) -> None:
        self.kwargs: dict[str, Any] = {"token": token, "tls": tls or ca_file is not None, "timeout": timeout}
        if ca_file is not None:
            self.kwargs["root_certificates"] = Path(ca_file).read_bytes()
        self.service = service
        self.lock = threading.Lock()
        self.blocking: Client | None = None
        self.by_loop: dict[asyncio.AbstractEventLoop, AsyncClient] = {}
        self.instructions: tuple[str, str] | None = None  # (document, query) as the service says

    def client(self) -> Client:
        with self.lock:
            if self.blocking is None:
                self.blocking = Client(self.service, **self.kwargs)
            return self.blocking

    def async_client(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        with self.lock:
            for gone in [old for old in self.by_loop if old.is_closed()]:
                del self.by_loop[gone]  # its channel went with its loop
            if loop not in self.by_loop:
                self.by_loop[loop] = AsyncClient(self.service, **self.kwargs)
            return self.by_loop[loop]

    def query_instruction(self) -> str:
        if self.instructions is None:
            self.instructions = _instructions(self.client().info())
        return self.instructions[1]

    async def aquery_instruction(self) -> str:
        if self.instructions is None:
            self.instructions = _instructions(await self.async_client().info())
        return self.instructions[1]

    def close(self) -> None:
        with self.lock:
            if self.blocking is not None:
                self.blocking.close()
                self.blocking = None


def _instructions(info: Any) -> tuple[str, str]:
    for model in info.models:
        if model.task == "embed":
            return model.default_instruction, model.query_instruction
    raise QvlClientError("the service serves no embedding model", code="FAILED_PRECONDITION")
