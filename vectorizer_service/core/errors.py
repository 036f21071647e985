"""The project's error types: every refusal names the item and the reason."""

from __future__ import annotations

from enum import StrEnum


class ErrorReason(StrEnum):
    """Why a call or an item failed, where a caller acts on it: the wire carries the name (gRPC
    ``ItemError.reason`` and the ``qvl-reason`` trailer, HTTP JSON ``"reason"``), so no caller
    reads the message for it. The names are those of the proto's ``ErrorReason``."""

    # The item never reached the model (the service was starting, draining or restarting its
    # model process): not the item's fault, and safe to send again, to another replica.
    NOT_READY = "NOT_READY"
    # The call pinned a model fingerprint the service does not serve (or the model changed under an
    # open stream): sending it again here fails again (core.model_identity).
    MODEL_MISMATCH = "MODEL_MISMATCH"


class QvlError(Exception):
    """Base class of the errors qvl raises on purpose.

    ``code`` is the gRPC status name every entry point reports, ``http_status`` the HTTP one,
    ``error_reason`` the machine-readable reason where there is one.
    """

    code = "INTERNAL"
    http_status = 500
    error_reason: ErrorReason | None = None
    # An item's own problem (bad input, a model failure on it) can stand beside its neighbours'
    # results; anything else (overload, outage, deadline, cancel) is a condition of the whole call.
    item_level = False

    def fails_call(self, allow_partial: bool) -> bool:
        """The one rule every entry point applies to an item's error: does it fail the whole call?"""
        return not (allow_partial and self.item_level)


class InputError(QvlError):
    """Bad input: the caller must change the request (gRPC INVALID_ARGUMENT, HTTP 400/413/422).

    ``item`` is the index of the offending item in its request (None when the request as a
    whole is wrong); ``part`` names the part inside the item, e.g. ``"image 1"``. ``limit`` names
    the limit that refused it: the ``QVL_*`` setting that raises it (the message then names it
    too), or ``"dimensions"`` for the model's own range. Callers read it to say what to change
    (HTTP error bodies carry it as ``limit``; the SQL functions' hints name that setting).
    """

    code = "INVALID_ARGUMENT"
    item_level = True

    def __init__(self, reason: str, *, item: int | None = None, part: str | None = None,
                 status: int = 400, limit: str | None = None) -> None:
        self.http_status = status
        self.reason = reason
        self.item = item
        self.part = part
        self.status = status
        self.limit = limit
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.item is not None:
            where.append(f"item {self.item}")
        if self.part:
            where.append(self.part)
        reason = self.reason
        if self.limit and self.limit.startswith("QVL_") and self.limit not in reason:
            reason = f"{reason} ({self.limit})"
        return f"{', '.join(where)}: {reason}" if where else reason

    def at(self, item: int | None = None, part: str | None = None) -> InputError:
        """The same error, placed at an item (and part) of a request."""
        return InputError(
            self.reason,
            item=self.item if item is None else item,
            part=part if part is not None else self.part,
            status=self.status,
            limit=self.limit,
        )

    def __reduce__(self):  # picklable across process pools and the pipe between the processes
        return (_rebuild_input_error, (self.reason, self.item, self.part, self.status, self.limit))


def _rebuild_input_error(reason: str, item: int | None, part: str | None, status: int,
                         limit: str | None = None) -> InputError:
    return InputError(reason, item=item, part=part, status=status, limit=limit)


class OverloadedError(QvlError):
    """The bounded queue is full (gRPC RESOURCE_EXHAUSTED, HTTP 503)."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 503


class UnavailableError(QvlError):
    """The service cannot do the work now (gRPC UNAVAILABLE, HTTP 503): e.g. its model process
    exited with the work in it."""

    code = "UNAVAILABLE"
    http_status = 503


class NotReadyError(UnavailableError):
    """The work never reached the model: the service is starting, draining or restarting its model
    process. The one place the NOT_READY reason is set; callers send the work again elsewhere."""

    error_reason = ErrorReason.NOT_READY


class DeadlineError(QvlError):
    """The caller's deadline passed before the work could be done."""

    code = "DEADLINE_EXCEEDED"
    http_status = 504


class CancelledError(QvlError):
    """The caller went away; the work was dropped."""

    code = "CANCELLED"
    http_status = 499


class ComputeError(QvlError):
    """The model failed on an item that was accepted (gRPC INTERNAL, HTTP 500)."""

    item_level = True


class ConfigError(Exception):
    """The service's own configuration is wrong (not a request's): it does not start."""
