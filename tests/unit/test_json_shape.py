"""A body's JSON values and nesting, counted on its bytes before it is parsed (api.json_shape),
held to what the parser builds: the count is exact for compact JSON and never below the truth,
whatever the strings hold (quotes, backslashes, brackets, commas)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorizer_service.api.json_shape import json_values
from vectorizer_service.core.errors import InputError

# Strings full of what the count must not mistake for structure.
TRICKY = st.text(alphabet=st.sampled_from('ab"\\,[]{}: \n\u00e9\U0001f600'), max_size=8)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
                    max_leaves=30)


def truth(value: Any) -> tuple[int, int]:
    """(values, depth): every value, the body itself and object members included (not keys)."""
    if isinstance(value, list | dict):
        children = [truth(v) for v in (value.values() if isinstance(value, dict) else value)]
        return 1 + sum(c[0] for c in children), 1 + max((c[1] for c in children), default=0)
    return 1, 0


@settings(max_examples=400, deadline=None)
@given(JSON, st.booleans())
def test_the_count_matches_the_parser(value: Any, spaced: bool) -> None:
    raw = json.dumps(value, indent=1 if spaced else None, ensure_ascii=spaced,
                     separators=None if spaced else (",", ":")).encode()
    values, depth = truth(value)
    assert json_values(raw, 10**9, 10**9) == values
    if depth > 0:
        with pytest.raises(InputError) as err:
            json_values(raw, 10**9, depth - 1)
        assert err.value.limit == "QVL_MAX_JSON_DEPTH" and err.value.status == 400
        assert json_values(raw, 10**9, depth) == values
    with pytest.raises(InputError) as err:
        json_values(raw, values - 1, 10**9)
    assert err.value.limit == "QVL_MAX_JSON_VALUES" and err.value.status == 413


def test_what_the_parser_refuses_anyway() -> None:
    assert json_values(b"not json at all, [ {", 100, 100) >= 1  # the parser says why
    with pytest.raises(InputError, match="a string is not closed"):
        json_values(b'["a", "b' + b'\\"' * 1000, 10, 100)
    with pytest.raises(InputError, match="100000 deep"):
        json_values(b"[" * 100_000, 200_000, 32)  # never closed: still measured


def test_many_strings_are_refused_before_the_structure_is_read() -> None:
    raw = json.dumps(["ab"] * 1_000_000).encode()
    with pytest.raises(InputError, match="more than 1000 JSON values"):
        json_values(raw, 1000, 32)
