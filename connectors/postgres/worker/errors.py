"""The ways the service lets a batch down that are not any row's fault."""

from __future__ import annotations


class ServiceDown(Exception):
    """The service cannot take work now (down, starting, misconfigured, failing every item, or
    answering malformed results): the rows go back uncounted and the lane waits for it."""


class Malformed(Exception):
    """A result the service should never send (a vector of the wrong size)."""


class ModelMismatch(Exception):
    """The service serves another model than the one the vectorizer's vectors came from (its pinned
    streams are refused with MODEL_MISMATCH, or another model was recorded meanwhile): the rows go
    back uncounted and the vectorizer is held until the model is served again or qvl.reembed adopts
    the served one. The message says so in an operator's words (``judge.mismatch_words``)."""


class Unservable(Exception):
    """A vectorizer the worker cannot serve as it is defined: its table changed under it (no schema guard
    on the managed install) or the service cannot give its dimensions. Its rows stay queued, uncounted,
    and the vectorizer is held with the reason until the definition or the table is put right."""
