"""The worker's hold gauge (qvl_worker_held) follows the holds, by reason, without flickering: set when a
vectorizer is held, kept while its hold lasts (over or not), dropped once a turn of it went through,
moved when the reason changes. The integration test (test_worker_metrics.py) shows the rights hold
against a real database; the model and claims reasons are shown here with a store that fails as told."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.claims import Claims
from connectors.postgres.worker.holds import Holds
from connectors.postgres.worker.metrics import HOLD_REASONS, WorkerMetrics


@dataclass(frozen=True)
class Definition:
    id: int
    name: str
    source: str


class Store:
    """Claims that fail while ``failing`` is set (a definition the table no longer matches, say)."""

    def __init__(self) -> None:
        self.failing = False

    def claim(self, conn: Any, vectorizer: Any, me: str) -> list[Any]:
        if self.failing:
            raise RuntimeError("column \"caption\" does not exist")
        return []


class Catalog:
    def invalidate(self) -> None:
        pass


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def held(metrics: WorkerMetrics, name: str) -> dict[str, float | None]:
    return {reason: metrics.registry.get_sample_value("qvl_worker_held", {"vectorizer": name, "reason": reason})
            for reason in HOLD_REASONS}


def test_the_hold_gauge_follows_each_hold_and_its_reason() -> None:
    clock, store, metrics = Clock(), Store(), WorkerMetrics()
    claims = Claims(store, Holds(lambda: Backoff(1.0, 4.0, uniform=lambda a, b: b), clock=clock),  # type: ignore[arg-type]
                    Catalog(), metrics)  # type: ignore[arg-type]
    photos = Definition(1, "photos", "public.photos")
    assert held(metrics, "photos") == {"rights": None, "model": None, "claims": None}  # never held: no series

    store.failing = True
    assert claims.claim(None, photos, "me") == []  # type: ignore[arg-type]
    claims.cleared(photos)  # the lane's turn ends: the hold stands
    assert held(metrics, "photos")["claims"] == 1
    clock.now += 5  # its wait is over; still held until a claim works
    claims.cleared(photos)
    assert held(metrics, "photos")["claims"] == 1

    store.failing = False
    claims.claim(None, photos, "me")  # type: ignore[arg-type]
    claims.cleared(photos)
    assert held(metrics, "photos") == {"rights": None, "model": None, "claims": 0}

    # The service serves another model: held for that reason; then the role loses its rights.
    claims.hold_model(photos)  # type: ignore[arg-type]
    claims.cleared(photos)
    assert held(metrics, "photos")["model"] == 1
    claims.hold_back(photos, PermissionError("permission denied for table photos"), quiet=True,  # type: ignore[arg-type]
                     reason="rights")
    assert held(metrics, "photos") == {"rights": 1, "model": 0, "claims": 0}
    clock.now += 10
    claims.claim(None, photos, "me")  # type: ignore[arg-type]
    claims.cleared(photos)
    assert held(metrics, "photos") == {"rights": 0, "model": 0, "claims": 0}
