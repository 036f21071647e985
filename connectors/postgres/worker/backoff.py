"""The waits of a lane or a held vectorizer between tries: exponential with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable

Uniform = Callable[[float, float], float]


class Backoff:
    """Exponential with full jitter (spreads many workers' retries), reset on success."""

    def __init__(self, base: float, cap: float, uniform: Uniform = random.uniform) -> None:
        self.base, self.cap, self.attempt = base, cap, 0
        self._uniform = uniform

    def next(self) -> float:
        delay = self._uniform(self.base / 2, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0
