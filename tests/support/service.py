"""`qvl serve` on the tiny fixture checkpoint, as a real subprocess (see qvl_devtools.launchers.service)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from qvl_devtools.launchers import service as local_service

TINY = Path(__file__).parents[1] / "fixtures" / "tiny-qwen3-vl"


class ServiceProcess(local_service.ServiceProcess):
    """Both models default to the tiny fixture."""

    def __init__(self, *, embedding_model: str | None = str(TINY), reranker_model: str | None = str(TINY),
                 **kwargs: Any) -> None:
        super().__init__(embedding_model=embedding_model, reranker_model=reranker_model, **kwargs)


@contextlib.contextmanager
def started_together(*services: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Replicas started side by side (their model loads overlap), each ready before the body runs;
    all killed at the end, whatever the body did to them."""
    for svc in services:
        svc.start(wait=False)
    try:
        for svc in services:
            svc.wait_ready()
        yield services
    finally:
        for svc in services:
            svc.kill()


def metric(svc: ServiceProcess, prefix: str) -> float:
    """The first sample of the service's /metrics whose line starts with ``prefix`` (0 when none)."""
    for line in httpx.get(f"{svc.http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
