"""The worker's rules without Postgres or gRPC: how a batch is sorted and judged, attempts and backoff,
bisection around bad input, holds (connectors/postgres/worker: judge, attempts, backoff, bisection, holds)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from connectors.postgres.worker.attempts import AttemptRules, is_transient
from connectors.postgres.worker.backoff import Backoff
from connectors.postgres.worker.bisection import Attempt, bisect
from connectors.postgres.worker.errors import ServiceDown
from connectors.postgres.worker.holds import Holds
from connectors.postgres.worker.judge import (
    Claimed,
    Failure,
    Result,
    Retry,
    judge,
    mismatch_words,
    row_message,
    service_words,
    sort_claimed,
)
from qvl_proto import vectorizer_pb2 as pb

RULES = AttemptRules(max_attempts=3, retry_delay_s=5.0, retry_delay_cap_s=600.0)
SOURCE = '"public"."photos"'


@dataclass
class Refused:  # the shape of connectors.client.ItemFailure that the rules read
    message: str
    code: str


def row(key: int, attempts: int = 0, text: str | None = "a caption", present: bool = True) -> Claimed:
    item = pb.Item(parts=[pb.Part(text=text)]) if text is not None else None
    return Claimed((key,), attempts, present, f"hash{key}", item)


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:g}" for x in vector) + "]"


def size(item: pb.Item) -> int:
    return int(item.ByteSize())


# -- sorting a claimed batch ------------------------------------------------------------------------

def test_fresh_rows_go_together_and_rows_that_failed_before_go_alone() -> None:
    rows = [row(1), row(2, attempts=1), row(3), row(4, present=False), row(5, text=None), row(6, attempts=2),
            row(7, text="x" * 500)]
    sorting = sort_claimed(rows, max_item_bytes=100, size=size)
    assert [r.key for r in sorting.gone] == [(4,)]
    assert [r.key for r in sorting.empty] == [(5,)]
    assert [(r.key, n) for r, n in sorting.too_big] == [((7,), size(rows[6].item))]  # type: ignore[arg-type]
    assert [r.key for r in sorting.send] == [(1,), (2,), (3,), (6,)]
    assert sorting.groups == [[0, 2], [1], [3]]
    assert sort_claimed([row(1, attempts=1)], 100, size).groups == [[0]]  # no empty group of fresh rows


# -- judging the results ---------------------------------------------------------------------------

def test_a_batch_is_judged_row_by_row() -> None:
    rows = [row(1), row(2), row(3), row(4, present=False), row(5, text=None), row(6, text="x" * 500)]
    sorting = sort_claimed(rows, max_item_bytes=100, size=size)
    results: list[Result] = [np.array([1.0, 0.5], dtype=np.float32),
                             Refused("item 1: the image cannot be decoded", "INVALID_ARGUMENT"),
                             Refused("item 2: the model failed on it", "INTERNAL")]
    plan = judge(sorting, results, [False] * 3, rules=RULES, source=SOURCE, max_item_bytes=100, literal=literal)
    assert [(w.row.key, w.vector) for w in plan.writes] == [((5,), None), ((1,), "[1,0.5]")]
    assert [(f.row.key, f.code) for f in plan.failures] == [((6,), "INVALID_ARGUMENT"), ((2,), "INVALID_ARGUMENT")]
    assert plan.failures[0].message.startswith(f"row 6 of {SOURCE}: the row's item is ")
    assert plan.failures[0].message.endswith("bytes, over the service's request limit of 100 bytes")
    assert plan.failures[1].message == f"row 2 of {SOURCE}: the image cannot be decoded"
    [retry] = plan.retries
    assert retry.row.key == (3,) and retry.message == f"INTERNAL: row 3 of {SOURCE}: the model failed on it"
    assert 5.0 * 0.9 <= retry.delay_s <= 5.0 * 1.1  # the first failure's wait
    assert [g.key for g in plan.gone] == [(4,)]
    assert plan.rows == rows  # every claimed row not written, failed or retried is given back


@pytest.mark.parametrize(("attempts", "alone", "verdict"), [
    (0, False, "retry"), (1, True, "retry"), (2, False, "retry"),  # the 3rd failure beside others: tried alone
    (2, True, "fail"), (5, True, "fail"),
])
def test_a_row_the_model_fails_on_is_failed_after_max_attempts_alone(attempts: int, alone: bool,
                                                                      verdict: str) -> None:
    sorting = sort_claimed([row(1, attempts)], 100, size)
    plan = judge(sorting, [Refused("item 0: boom", "INTERNAL")], [alone], rules=RULES, source=SOURCE,
                 max_item_bytes=100, literal=literal)
    assert [type(x) for x in plan.failures + plan.retries] == [Failure if verdict == "fail" else Retry]


def test_rows_not_answered_or_answered_with_the_services_state_are_given_back_uncounted() -> None:
    sorting = sort_claimed([row(1), row(2), row(3)], 100, size)
    results: list[Result] = [None, ServiceDown("UNAVAILABLE: the model is loading"), np.zeros(2, np.float32)]
    plan = judge(sorting, results, [False] * 3, rules=RULES, source=SOURCE, max_item_bytes=100, literal=literal)
    assert [w.row.key for w in plan.writes] == [(3,)] and plan.failures == [] and plan.retries == []


def test_the_plan_for_the_rows_free_now() -> None:
    rows = [row(1), row(2), row(3, present=False)]
    plan = judge(sort_claimed(rows, 100, size), [np.zeros(2, np.float32), Refused("x", "INTERNAL")], [False] * 2,
                 rules=RULES, source=SOURCE, max_item_bytes=100, literal=literal)
    free = plan.only({(2,), (3,)})
    assert [r.key for r in free.rows] == [(2,), (3,)] and free.writes == []
    assert [r.row.key for r in free.retries] == [(2,)] and [g.key for g in free.gone] == [(3,)]


def test_the_services_words_about_an_item_name_the_row() -> None:
    assert row_message(SOURCE, (7,), "item 12: bad image") == f"row 7 of {SOURCE}: bad image"
    assert row_message(SOURCE, (7, "b"), "too long") == f"row (7,b) of {SOURCE}: too long"
    assert service_words("item 3: the model is loading") == "the model is loading"


# -- attempts and backoff --------------------------------------------------------------------------

def test_a_rows_wait_doubles_from_the_retry_delay_up_to_its_cap() -> None:
    exact = [RULES.retry_delay(tries, uniform=lambda a, b: 1.0) for tries in range(1, 10)]
    assert exact == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]
    assert RULES.retry_delay(1000, uniform=lambda a, b: 1.0) == 600.0  # no overflow
    for tries in range(1, 10):
        assert 0.9 * exact[tries - 1] <= RULES.retry_delay(tries) <= 1.1 * exact[tries - 1]


def test_bad_input_fails_at_once_and_outages_are_transient() -> None:
    assert RULES.gives_up("INVALID_ARGUMENT", 1, alone=False) and RULES.gives_up("OUT_OF_RANGE", 1, alone=False)
    assert not RULES.gives_up("INTERNAL", 1, alone=True)
    assert is_transient("UNAVAILABLE: the model process is restarting") and is_transient("DEADLINE_EXCEEDED: x")
    assert not is_transient("INVALID_ARGUMENT: 4096 dimensions are more than the model's 2048")


def test_backoff_grows_with_full_jitter_up_to_its_cap_and_resets() -> None:
    bounds: list[tuple[float, float]] = []
    top = Backoff(1.0, 8.0, uniform=lambda a, b: (bounds.append((a, b)), b)[1])
    assert [top.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert {a for a, _ in bounds} == {0.5}
    top.reset()
    assert top.next() == 1.0
    jittered = Backoff(0.5, 30.0, uniform=random.Random(7).uniform)
    for k in range(40):
        assert 0.25 <= jittered.next() <= min(30.0, 0.5 * 2 ** k)


# -- bisection -------------------------------------------------------------------------------------

class Stream:
    """A service that answers items in order and refuses the whole stream at the first bad one."""

    def __init__(self, bad: set[str], transient_after: int | None = None) -> None:
        self.bad, self.transient_after = bad, transient_after
        self.sent: list[list[str]] = []

    def __call__(self, items: Sequence[str]) -> Attempt[str, str]:
        self.sent.append(list(items))
        got: list[str] = []
        for item in items:
            if self.transient_after is not None and len(got) == self.transient_after:
                return Attempt(got)  # the stream broke off: no refusal, the rest stays unanswered
            if item in self.bad:
                return Attempt(got, f"refused {item}")
            got.append(f"vector {item}")
        return Attempt(got)


def test_a_refused_stream_is_halved_until_the_bad_item_stands_alone() -> None:
    items = [f"i{k}" for k in range(8)]
    stream = Stream(bad={"i5"})
    out = bisect(items, stream)
    assert out == [f"vector i{k}" for k in range(5)] + ["refused i5", "vector i6", "vector i7"]
    # i0..i4 came back before the refusal; the rest (i5, i6, i7) is halved: [i5] alone, then [i6, i7].
    assert stream.sent == [items, ["i5"], ["i6", "i7"]]


def test_each_of_several_bad_items_is_refused_alone_and_its_neighbours_answered() -> None:
    items = [f"i{k}" for k in range(16)]
    out = bisect(items, Stream(bad={"i0", "i9", "i10", "i15"}))
    assert [k for k, res in enumerate(out) if res and res.startswith("refused")] == [0, 9, 10, 15]
    assert all(res == f"vector i{k}" for k, res in enumerate(out) if k not in (0, 9, 10, 15))


def test_a_stream_that_broke_off_keeps_what_came_and_leaves_the_rest_unanswered() -> None:
    stream = Stream(bad=set(), transient_after=2)
    assert bisect(["a", "b", "c"], stream) == ["vector a", "vector b", None]
    assert len(stream.sent) == 1


def test_a_refusal_after_every_result_sends_nothing_more() -> None:
    calls: list[Sequence[str]] = []

    def send(items: Sequence[str]) -> Attempt[str, str]:
        calls.append(items)
        return Attempt([f"vector {x}" for x in items], "refused at the end")

    assert bisect(["a", "b"], send) == ["vector a", "vector b"] and len(calls) == 1


# -- holds -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Definition:
    id: int
    source: str


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_held_vectorizer_waits_its_own_backoff_and_a_new_definition_is_tried_at_once() -> None:
    clock = Clock()
    holds = Holds(lambda: Backoff(1.0, 4.0, uniform=lambda a, b: b), clock=clock)
    photos, clips = Definition(1, "photos"), Definition(2, "clips")
    first = holds.hold(photos)
    assert (first.failures, first.delay_s) == (1, 1.0)
    assert holds.held(photos) and not holds.held(clips)
    clock.now += 1.0
    assert not holds.held(photos)  # its wait is over
    second = holds.hold(photos)
    assert (second.failures, second.delay_s) == (2, 2.0)  # the backoff grows
    assert not holds.held(Definition(1, "photos_renamed"))  # a changed definition is tried at once
    renamed = holds.hold(Definition(1, "photos_renamed"))
    assert (renamed.failures, renamed.delay_s) == (1, 1.0)  # and starts a backoff of its own
    released = holds.release(Definition(1, "photos_renamed"))
    assert released is not None and released.failures == 1
    assert not holds.held(Definition(1, "photos_renamed")) and holds.release(photos) is None


def test_a_model_mismatch_says_which_models_and_what_to_run() -> None:
    words = mismatch_words("o'brien notes", "00112233aabbccdd", "tiny-qwen3-vl", "ffeeddcc99887766", "Qwen3-VL-2B")
    assert "tiny-qwen3-vl (fingerprint 00112233aabbccdd)" in words
    assert "Qwen3-VL-2B (fingerprint ffeeddcc99887766)" in words
    # The statement to run is valid SQL for any name (the quote doubled).
    assert "SELECT qvl.reembed('o''brien notes') to move every row to the served model" in words
    assert words.endswith("or serve the model 00112233aabbccdd again")
    # A service whose Info did not answer: the recorded model is still named.
    assert "serves another model" in mismatch_words("n", "00112233aabbccdd", None, None, None)


def test_a_chunked_rows_chunks_are_written_in_order_with_their_locators() -> None:
    from connectors.client import Chunk

    rows = [row(1), row(2)]
    sorting = sort_claimed(rows, max_item_bytes=1000, size=size)
    pages = [Chunk(np.array([1.0, 0.0], dtype=np.float32), {"page": 1}),
             Chunk(np.array([0.0, 1.0], dtype=np.float32), {"page": 2})]
    results: list[Result] = [pages, Refused("item 1: the document is not a PDF", "INVALID_ARGUMENT")]
    plan = judge(sorting, results, [False] * 2, rules=RULES, source=SOURCE, max_item_bytes=1000, literal=literal)
    [write] = plan.writes
    assert write.row.key == (1,) and write.vector is None and plan.vectors
    assert [(c.seq, c.locator, c.vector) for c in write.chunks] == [(0, '{"page": 1}', "[1,0]"),
                                                                    (1, '{"page": 2}', "[0,1]")]
    assert [f.message for f in plan.failures] == [f"row 2 of {SOURCE}: the document is not a PDF"]
