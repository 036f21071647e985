"""What a claimed batch comes to: which rows go to the service and how, and, from the results, which
rows are written, failed, tried again later or given back. Pure: no database, no service.

Rows never tried go to the service together; rows that failed before (``attempts > 0``) go one at a
time, so a row that kills the model process takes only itself down and is failed after
``max_attempts`` tries while its neighbours are stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from connectors.postgres.worker.attempts import AttemptRules
from connectors.postgres.worker.errors import ServiceDown
from qvl_proto import vectorizer_pb2 as pb

Key = tuple[Any, ...]
ITEM_PREFIX = re.compile(r"^item \d+")


class Refusal(Protocol):
    """A per-item failure from the service (connectors.client.ItemFailure)."""

    message: str
    code: str


@dataclass(frozen=True)
class CutVector:
    """A vector made from text the service cut to its maximum length (QVL_EMBED_MAX_LENGTH)."""

    vector: np.ndarray
    tokens: int  # text tokens cut


class Piece(Protocol):
    """One chunk of a chunked vectorizer's item (connectors.client.Chunk)."""

    vector: np.ndarray
    locator: dict[str, float | int]


# None: not answered; ServiceDown: the service's state; a list: a chunked vectorizer's item, its chunks
Result = np.ndarray | CutVector | list[Piece] | Refusal | ServiceDown | None


@dataclass
class Claimed:
    key: Key
    attempts: int
    present: bool  # False: the table row was deleted since it was queued
    content_hash: str | None
    item: pb.Item | None  # None: every embedded column is NULL (a NULL vector, no model call)


@dataclass
class Sorting:
    """A claimed batch sorted for the service: ``groups`` are positions in ``send``, one stream each."""

    rows: list[Claimed]
    gone: list[Claimed] = field(default_factory=list)
    empty: list[Claimed] = field(default_factory=list)
    too_big: list[tuple[Claimed, int]] = field(default_factory=list)  # with the item's size in bytes
    send: list[Claimed] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)


def sort_claimed(rows: Sequence[Claimed], max_item_bytes: int, size: Callable[[pb.Item], int]) -> Sorting:
    out = Sorting(list(rows))
    for row in rows:
        if not row.present:
            out.gone.append(row)
        elif row.item is None:
            out.empty.append(row)
        elif (n := size(row.item)) > max_item_bytes:
            out.too_big.append((row, n))
        else:
            out.send.append(row)
    fresh = [k for k, row in enumerate(out.send) if row.attempts == 0]
    out.groups = ([fresh] if fresh else []) + [[k] for k, row in enumerate(out.send) if row.attempts > 0]
    return out


@dataclass(frozen=True)
class ChunkWrite:
    """One chunk of a row, as the chunk table takes it."""

    seq: int  # 0-based, in the service's order
    locator: str  # JSON: {"page": n} | {"start_s", "end_s"} | {"char_start", "char_end"}
    vector: str  # pgvector's text input


@dataclass(frozen=True)
class Write:
    row: Claimed
    vector: str | None  # pgvector's text input; None for a row with nothing to embed (or chunked)
    cut: int = 0  # text tokens the service cut (qvl.cut_rows records the row)
    chunks: tuple[ChunkWrite, ...] = ()  # a chunked vectorizer's: the row's chunks (none: nothing to embed)


@dataclass(frozen=True)
class Failure:
    row: Claimed
    message: str
    code: str


@dataclass(frozen=True)
class Retry:
    row: Claimed
    delay_s: float
    message: str  # "CODE: words", kept in the queue row's last_error


@dataclass
class Plan:
    """The batch's write. Every claimed row not written, failed, retried or gone is given back."""

    rows: list[Claimed]
    writes: list[Write] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)
    gone: list[Claimed] = field(default_factory=list)
    # The model the vectors came from (its fingerprint and name): the write records it where the
    # vectorizer has none yet, and writes nothing where it records another.
    model: str | None = None
    model_name: str | None = None

    @property
    def vectors(self) -> bool:
        """Whether the plan writes any vector (a row with nothing to embed gets NULL, from no model)."""
        return any(w.vector is not None or w.chunks for w in self.writes)

    def only(self, keys: Collection[Key]) -> Plan:
        """The same plan for the rows whose key is in ``keys``."""
        return replace(self, rows=[r for r in self.rows if r.key in keys],
                       writes=[w for w in self.writes if w.row.key in keys],
                       failures=[f for f in self.failures if f.row.key in keys],
                       retries=[r for r in self.retries if r.row.key in keys],
                       gone=[g for g in self.gone if g.key in keys])


@dataclass
class Outcome:
    """What the write of a plan came to (counted, logged)."""

    written: int = 0
    cut: int = 0  # of the written rows, those whose text the service cut
    failed: int = 0
    retried: int = 0
    released: int = 0
    gone: int = 0
    stale: int = 0  # changed since the claim: the newer version wins
    busy: set[Key] = field(default_factory=set)  # keys left for later: another transaction held them


def row_message(source: str, key: Key, message: str) -> str:
    """The service's words about "item N" (a position that changes between tries) as the row's key."""
    row = f"row {key[0] if len(key) == 1 else '(' + ','.join(map(str, key)) + ')'} of {source}"
    if ITEM_PREFIX.match(message):
        return ITEM_PREFIX.sub(lambda m: row, message, count=1)
    return f"{row}: {message}"


def service_words(message: str) -> str:
    """The service's message without its "item N: " prefix."""
    return ITEM_PREFIX.sub("", message).lstrip(": ")


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def model_words(fingerprint: str, name: str | None) -> str:
    return f"{name} (fingerprint {fingerprint})" if name else f"fingerprint {fingerprint}"


def mismatch_words(vectorizer: str, recorded: str, recorded_name: str | None, served: str | None,
                   served_name: str | None, shadow: str | None = None) -> str:
    """Why a vectorizer's rows stay queued after a model change, and what an operator does about it
    (the SQL functions' refusal, connectors/postgres/plpy/models.py, says the same). ``shadow``: the
    column (chunk table) of a blue/green shadow that a worker started with --shadow fills: a new model's,
    or after a switch the old model's, kept for the way back."""
    now = model_words(served, served_name) if served else "another model"
    if shadow is not None:
        return (f"its shadow column {shadow} is for model {model_words(recorded, recorded_name)}, but this "
                f"worker's service serves {now}, so the shadow's rows stay queued (none is failed). Run "
                f"qvl worker --shadow with --service on model {recorded}'s service, or give the shadow up: "
                f"SELECT qvl.abandon_shadow({sql_literal(vectorizer)}) (a shadow being filled), or "
                f"SELECT qvl.drop_old_column({sql_literal(vectorizer)}) (the old side a switch left)")
    return (f"its vectors were made by model {model_words(recorded, recorded_name)}, but the service serves "
            f"{now}; vectors of two models are not comparable, so its rows stay queued (none is failed). Run "
            f"SELECT qvl.reembed({sql_literal(vectorizer)}) to move every row to the served model, or serve "
            f"the model {recorded} again")


def judge(sorting: Sorting, results: Sequence[Result], alone: Sequence[bool], *, rules: AttemptRules,
          source: str, max_item_bytes: int, literal: Callable[[np.ndarray], str]) -> Plan:
    """``results[k]`` answers ``sorting.send[k]``, ``alone[k]`` says whether it was sent by itself.

    A vector is written; a refusal fails the row (bad input, or ``max_attempts`` tries alone) or
    counts an attempt and sets the row's backoff; rows not answered, or answered with the service's
    state, are given back uncounted."""
    plan = Plan(sorting.rows, writes=[Write(r, None) for r in sorting.empty], gone=list(sorting.gone))
    plan.failures = [Failure(r, row_message(source, r.key, f"the row's item is {n} bytes, over the service's "
                                                           f"request limit of {max_item_bytes} bytes"),
                             "INVALID_ARGUMENT") for r, n in sorting.too_big]
    for row, res, by_itself in zip(sorting.send, results, alone, strict=True):
        if res is None or isinstance(res, ServiceDown):
            continue
        if isinstance(res, np.ndarray):
            plan.writes.append(Write(row, literal(res)))
            continue
        if isinstance(res, CutVector):
            plan.writes.append(Write(row, literal(res.vector), res.tokens))
            continue
        if isinstance(res, list):
            plan.writes.append(Write(row, None, chunks=tuple(ChunkWrite(i, json.dumps(c.locator, sort_keys=True),
                                                                        literal(c.vector)) for i, c in enumerate(res))))
            continue
        message = row_message(source, row.key, res.message)
        tries = row.attempts + 1
        if rules.gives_up(res.code, tries, by_itself):
            plan.failures.append(Failure(row, message, res.code))
        else:  # tried alone next time; failed only once it has failed alone max_attempts times
            plan.retries.append(Retry(row, rules.retry_delay(tries), f"{res.code}: {message}"))
    return plan
