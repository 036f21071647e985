"""Halving a refused stream until the item responsible stands alone, so it cannot block its neighbours.

Sans-IO: ``send`` makes one stream of the items it is given and says what came back; this module
only decides what to send next and whose result is whose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
RefusalT = TypeVar("RefusalT")


@dataclass
class Attempt(Generic[ResultT, RefusalT]):
    """What one stream came to: the results that came back, in input order, and, when the service
    refused the stream for bad input, what the item after them gets once it stands alone. A stream
    that ended early for any other reason has no refusal: its missing items stay unanswered."""

    results: list[ResultT] = field(default_factory=list)
    refusal: RefusalT | None = None


def bisect(items: Sequence[ItemT], send: Callable[[Sequence[ItemT]], Attempt[ResultT, RefusalT]]
           ) -> list[ResultT | RefusalT | None]:
    """One result per item (None: not answered)."""
    got = send(items)
    out: list[ResultT | RefusalT | None] = [*got.results, *[None] * (len(items) - len(got.results))]
    if got.refusal is None:
        return out
    done = len(got.results)
    rest = items[done:]
    if len(rest) == 1:
        out[done] = got.refusal
    elif rest:
        half = len(rest) // 2
        out[done:done + half] = bisect(rest[:half], send)
        out[done + half:] = bisect(rest[half:], send)
    return out
