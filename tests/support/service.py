"""`qvl serve` on the tiny fixture checkpoint, as a real subprocess (see qvl_devtools.launchers.service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qvl_devtools.launchers import service as local_service

TINY = Path(__file__).parents[1] / "fixtures" / "tiny-qwen3-vl"


class ServiceProcess(local_service.ServiceProcess):
    """Both models default to the tiny fixture."""

    def __init__(self, *, embedding_model: str | None = str(TINY), reranker_model: str | None = str(TINY),
                 **kwargs: Any) -> None:
        super().__init__(embedding_model=embedding_model, reranker_model=reranker_model, **kwargs)
