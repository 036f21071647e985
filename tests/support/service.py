"""`qvl serve` on the tiny fixture checkpoint, as a real subprocess (see qvl_devtools.launchers.service)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from qvl_devtools.launchers import service as local_service
from vectorizer_service.core.settings import Settings

TINY = Path(__file__).parents[1] / "fixtures" / "tiny-qwen3-vl"


# The drain notice of a test about draining: the product's default.
DRAIN_NOTICE = {"QVL_DRAIN_NOTICE_SECONDS": str(Settings.model_fields["drain_notice_seconds"].default)}


class ServiceProcess(local_service.ServiceProcess):
    """Both models default to the tiny fixture. The drain notice (QVL_DRAIN_NOTICE_SECONDS) is 0
    unless ``env`` sets it: most tests stop a service only to end it (or to show an outage), and
    each notice costs a second; a test about draining passes ``DRAIN_NOTICE``."""

    def __init__(self, *, embedding_model: str | None = str(TINY), reranker_model: str | None = str(TINY),
                 env: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(embedding_model=embedding_model, reranker_model=reranker_model,
                         env={"QVL_DRAIN_NOTICE_SECONDS": "0", **(env or {})}, **kwargs)


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
