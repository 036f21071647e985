"""One claimed batch, start to end: sort it, send it to the service, judge what came back, write it."""

from __future__ import annotations

import functools
import logging
import time

from connectors.postgres.row_encoding import item_size, vector_literal
from connectors.postgres.vectorizers import Vectorizer
from connectors.postgres.worker.attempts import AttemptRules
from connectors.postgres.worker.connections import LaneLink
from connectors.postgres.worker.errors import ModelMismatch, ServiceDown
from connectors.postgres.worker.judge import Claimed, Outcome, Plan, Result, Sorting, judge, sort_claimed
from connectors.postgres.worker.progress import Progress
from connectors.postgres.worker.service import ModelPin, ServiceCalls
from connectors.postgres.worker.store import BatchStore, keys

log = logging.getLogger("qvl.worker")


class BatchRunner:
    def __init__(self, rules: AttemptRules, service: ServiceCalls, store: BatchStore, progress: Progress,
                 write_lock_wait_s: float) -> None:
        self.rules, self.service, self.store, self.progress = rules, service, store, progress
        self.write_lock_wait_s = write_lock_wait_s

    def process(self, link: LaneLink, vectorizer: Vectorizer, rows: list[Claimed]) -> Outcome:
        """Embed and store one claimed batch (``judge`` says how).

        Every per-item failure counts an attempt and sets the row's backoff, unless it is the
        service's state rather than the row's: items that never reached the model, or failures the
        probe shows for a plain text too (no model, dimensions it cannot give, a wedged GPU) — then
        the rows go back uncounted and the lane pauses (``ServiceDown`` is raised once the batch is
        written). A service that serves another model than the vectorizer's refuses its pinned streams:
        the rows go back uncounted and ``ModelMismatch`` is raised once the batch is written (the lane
        holds that vectorizer).
        """
        started = time.monotonic()
        max_bytes = self.service.max_item_bytes
        sorting = sort_claimed(rows, max_bytes, item_size)
        pin = ModelPin(vectorizer.model_fingerprint)
        results, alone, down = self._embed(link, vectorizer, sorting, pin)
        plan = judge(sorting, results, alone, rules=self.rules, source=vectorizer.source, max_item_bytes=max_bytes,
                     literal=functools.partial(vector_literal, vectorizer))
        plan.model, plan.model_name = pin.fingerprint, vectorizer.model_name
        if plan.model is not None and plan.model != vectorizer.model_fingerprint and plan.vectors:
            assert link.client is not None
            plan.model_name = self.service.model_name(link.client, plan.model)  # the first write records it
        outcome = self.store.write(link, vectorizer, plan)
        seconds = time.monotonic() - started
        self.progress.add(vectorizer.name, outcome, seconds)
        self._say(vectorizer, plan, outcome, seconds)
        if down is not None:
            raise down
        return outcome

    def _embed(self, link: LaneLink, vectorizer: Vectorizer, sorting: Sorting, pin: ModelPin
               ) -> tuple[list[Result], list[bool], ServiceDown | ModelMismatch | None]:
        """Each group's stream in turn, until the service shows it cannot embed now."""
        assert link.client is not None
        results: list[Result] = [None] * len(sorting.send)
        alone = [False] * len(sorting.send)
        with self.store.renewing(link, vectorizer, keys(sorting.rows)):
            for group in sorting.groups:
                try:
                    got = self.service.embed_checked(link.client, vectorizer,  # type: ignore[misc]
                                                     [sorting.send[k].item for k in group], pin)
                except (ServiceDown, ModelMismatch) as exc:  # the rest of the batch goes back uncounted
                    return results, alone, exc
                for k, res in zip(group, got, strict=True):
                    results[k] = res
                    alone[k] = len(group) == 1
                down = next((res for res in got if isinstance(res, ServiceDown)), None)
                if down is not None:
                    return results, alone, down
        return results, alone, None

    def _say(self, vectorizer: Vectorizer, plan: Plan, outcome: Outcome, seconds: float) -> None:
        log.debug("batch", extra={"vectorizer": vectorizer.name, "rows": len(plan.rows), "written": outcome.written,
                                  "failed": outcome.failed, "retried": outcome.retried, "stale": outcome.stale,
                                  "busy": len(outcome.busy), "ms": round(1000 * seconds, 1)})
        if outcome.cut:
            log.info(f"vectorizer {vectorizer.name}: {outcome.cut} rows embedded from text cut to the service's "
                     f"maximum length (QVL_EMBED_MAX_LENGTH): their vectors miss the end of the text; "
                     f"qvl.vectorizer_status.cut counts them (chunk long text instead: docs/postgres.md)",
                     extra={"vectorizer": vectorizer.name, "rows": outcome.cut})
        if outcome.busy:
            log.info(f"vectorizer {vectorizer.name}: {len(outcome.busy)} rows stayed locked by other transactions for "
                     f"{self.write_lock_wait_s:g} s; the rest of the batch is written, those are embedded again "
                     f"later", extra={"vectorizer": vectorizer.name, "rows": len(outcome.busy)})
        for f in plan.failures:
            if f.row.key not in outcome.busy:
                log.warning(f"{f.message}: refused; moved to the failed table", extra={
                    "vectorizer": vectorizer.name, "key": list(map(str, f.row.key)), "code": f.code,
                    "error": f.message})
        for r in plan.retries:
            if r.row.key not in outcome.busy:
                log.info(f"{r.message}: tried {r.row.attempts + 1} of {self.rules.max_attempts} times; retrying "
                         f"in {r.delay_s:.1f} s", extra={"vectorizer": vectorizer.name,
                                                        "key": list(map(str, r.row.key)),
                                                        "attempts": r.row.attempts + 1})
