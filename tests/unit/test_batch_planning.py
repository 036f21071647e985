from __future__ import annotations

from vectorizer_service.core.batch_planning import padding_ratio, plan_batches


def test_every_index_exactly_once_and_budget_respected() -> None:
    lengths = [5, 300, 17, 17, 120, 90, 4000, 33, 64, 64, 2]
    plan = plan_batches(lengths, [0] * len(lengths), token_budget=512, max_items=4)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 4
        if len(batch) > 1:
            assert max(lengths[i] for i in batch) * len(batch) <= 512
    assert [6] in plan  # longer than the budget: alone, not refused


def test_sorting_cuts_padding() -> None:
    lengths = [10, 200, 12, 190, 11, 205, 9, 199]
    arrival = [list(range(i, i + 2)) for i in range(0, 8, 2)]
    planned = plan_batches(lengths, [0] * 8, token_budget=410, max_items=2)
    assert padding_ratio(lengths, planned) < padding_ratio(lengths, arrival) / 4


def test_patch_budget_splits_vision_heavy_batches() -> None:
    plan = plan_batches([100] * 4, [900] * 4, token_budget=10_000, max_items=8, patch_budget=2000)
    assert all(len(b) <= 2 for b in plan)
