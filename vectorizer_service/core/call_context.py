"""A call's deadline, liveness and embedding options, as both processes of the service see them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vectorizer_service.core.errors import CancelledError, DeadlineError


@dataclass
class CallContext:
    """A caller's deadline (``time.monotonic``, the same clock in every process) and liveness."""

    deadline: float
    cancelled: bool = False

    @classmethod
    def within(cls, seconds: float) -> CallContext:
        return cls(deadline=time.monotonic() + seconds)

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError("the caller cancelled the request")
        if time.monotonic() > self.deadline:
            raise DeadlineError("the deadline passed before the work was done")


@dataclass
class EmbedOptions:
    dimensions: int | None = None
    encoding: str = "float32"
    normalize: bool = True
    instruction: str | None = None
    truncate: str = "end"  # past the maximum length: "none" refuses the item, "start"/"end" cut its text
