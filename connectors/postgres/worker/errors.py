"""The two ways the service lets a batch down that are not any row's fault."""

from __future__ import annotations


class ServiceDown(Exception):
    """The service cannot take work now (down, starting, misconfigured, failing every item, or
    answering malformed results): the rows go back uncounted and the lane waits for it."""


class Malformed(Exception):
    """A result the service should never send (a vector of the wrong size)."""
