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
    # The fingerprint of the model that answers (core.model_identity): set by the call's first use of a
    # model; a later call on the same context (a stream's next items, a request's next chunk) must be
    # answered by the same model, or it is refused rather than mixed. One context serves one task.
    fingerprint: str = ""

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
    fingerprint: str | None = None  # refuse unless the embedder (the profile, if any) has this fingerprint
    profile: str | None = None  # the profile the route selected: its fingerprint is the answer's
