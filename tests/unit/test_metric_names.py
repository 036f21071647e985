"""docs/metrics.md lists every metric of the service and of the worker, with its type and labels: the
list is read here and compared with the registries the processes serve, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from connectors.postgres.worker.metrics import WorkerMetrics
from vectorizer_service.serving import metrics as service_metrics

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
Listed = dict[str, tuple[str, tuple[str, ...]]]  # exposed name -> (type, labels)


def listed(section: str) -> Listed:
    """The table under the ``## section`` heading of docs/metrics.md."""
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    out: Listed = {}
    for line in text[start:end if end > 0 else None].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`qvl_"):
            labels = tuple(sorted(re.findall(r"`(\w+)`", cells[2])))
            out[cells[0].strip("`")] = (cells[1], labels)
    return out


def served(registry: CollectorRegistry) -> Listed:
    """What ``registry`` exposes: the family's name as scraped (counters with ``_total``), type, labels."""
    out: Listed = {}
    # The metric objects registered, with the label names they were declared with (a family with
    # labels shows no sample, hence no label, until a child is made).
    for collector in list(registry._collector_to_names):  # the registry has no public list
        for family in collector.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = (family.type, tuple(sorted(getattr(collector, "_labelnames", ()))))
    return out


def test_every_service_metric_is_listed_with_its_type_and_labels() -> None:
    assert listed("The service (`qvl serve`)") == served(service_metrics.REGISTRY)


def test_every_worker_metric_is_listed_with_its_type_and_labels() -> None:
    got = served(WorkerMetrics().registry)
    assert listed("The worker (`qvl worker`)") == got
    assert all(name.startswith("qvl_worker_") for name in got)


def test_the_list_is_not_empty_and_the_names_are_unique() -> None:
    service, worker = listed("The service (`qvl serve`)"), listed("The worker (`qvl worker`)")
    assert len(service) >= 10 and len(worker) >= 10
    assert not set(service) & set(worker)
