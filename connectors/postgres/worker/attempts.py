"""When a row the service refused is failed for good, and how long it waits before its next try.

A row's tries are counted in its queue row (``attempts``); the service's own state (down, starting,
restarting) never counts one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from connectors.postgres.worker.backoff import Uniform

# Codes that say "not now" rather than "never" (a probe that gets one waits and asks again).
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"})
# Bad input: the row fails at once (unless the probe shows the whole service refusing everything).
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})


def is_transient(problem: str) -> bool:
    """Whether a probe's answer ("CODE: words") says the service may answer later."""
    return problem.split(":", 1)[0] in TRANSIENT_CODES


@dataclass(frozen=True)
class AttemptRules:
    max_attempts: int  # tries for a row the model fails on
    retry_delay_s: float  # a failed row's first wait; doubled for each further attempt
    retry_delay_cap_s: float

    def gives_up(self, code: str, tries: int, alone: bool) -> bool:
        """Bad input fails at once. Any other failure fails the row only once it has failed alone (not
        beside rows that may have caused it) ``max_attempts`` times; until then it is tried again."""
        return code in PERMANENT_CODES or (tries >= self.max_attempts and alone)

    def retry_delay(self, tries: int, uniform: Uniform = random.uniform) -> float:
        """A row's wait after its ``tries``-th failure: doubling from retry_delay_s, +-10 % jitter."""
        base = min(self.retry_delay_cap_s, self.retry_delay_s * 2 ** min(tries - 1, 30))
        return base * uniform(0.9, 1.1)
