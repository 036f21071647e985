"""Each dialect's word on text past the maximum length, as a ``core.text_encoding.Truncate`` side.

- OpenAI (``/v1/embeddings``): refused with a 400 naming the limit, as OpenAI does; qvl's extension
  ``truncate`` (also Jina's boolean ``truncate`` and NVIDIA's ``NONE``/``START``/``END``, which post
  to the same path) asks for a cut, and Voyage's ``truncation`` (its ``embed`` posts there too);
- Cohere (``/v2/embed``): ``truncate`` ``NONE``/``START``/``END``, END by default (Cohere's);
- Voyage (``/v1/multimodalembeddings``): ``truncation``, true (cut at the end) by default.

A cut item is named in the answer where the dialect has a place for it (``truncated_tokens`` beside
its embedding in OpenAI's and Voyage's ``data``, a warning in Cohere's ``meta.warnings``); usage
counts the tokens embedded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.vector_encoding import EncodedVector

SIDES = {"NONE": "none", "START": "start", "END": "end",
         "LEFT": "start", "RIGHT": "end"}  # Cohere's older names (weaviate-client still offers them)


def _side(value: Any, param: str, *, booleans: bool) -> str:
    if isinstance(value, bool) and booleans:
        return "end" if value else "none"
    if isinstance(value, str) and value.upper() in SIDES:
        return SIDES[value.upper()]
    allowed = "true, false, " if booleans else ""
    raise FieldError(param, f"unknown value {value!r}; expected {allowed}NONE, START or END")


def openai_side(truncate: Any, truncation: Any, *, token_arrays: bool = False) -> str:
    """``/v1/embeddings``: refuse unless ``truncate`` (qvl, Jina, NVIDIA) or ``truncation`` (Voyage)
    says cut. Token arrays are held to the limit in their own encoding's tokens (``token_arrays``):
    an array within it that comes out longer in the model's tokens (its prompt, another tokenizer)
    is cut at the end, and says so, rather than refused: its caller counted right by OpenAI's rules."""
    if truncate is not None and truncation is not None:
        raise FieldError("truncate", "send truncate or truncation (Voyage), not both")
    if truncation is not None:
        return voyage_side(truncation)
    if truncate is None:
        return "end" if token_arrays else "none"
    return _side(truncate, "truncate", booleans=True)


def cohere_side(truncate: Any) -> str:
    return "end" if truncate is None else _side(truncate, "truncate", booleans=False)


def voyage_side(truncation: Any) -> str:
    if truncation is None:
        return "end"
    if not isinstance(truncation, bool):
        raise FieldError("truncation", f"must be true or false, got {truncation!r}")
    return "end" if truncation else "none"


def cut_items(results: Sequence[EncodedVector | QvlError]) -> dict[int, int]:
    """Index -> tokens cut, for the items truncation shortened."""
    return {i: r.cut for i, r in enumerate(results) if isinstance(r, EncodedVector) and r.cut}


def cut_warning(cuts: dict[int, int], side: str, limit: int) -> str:
    """One line naming the cut inputs (for answers with no place beside each vector)."""
    named = ", ".join(f"input {i} ({n} tokens)" for i, n in sorted(cuts.items()))
    return (f"cut to the maximum length of {limit} tokens (QVL_EMBED_MAX_LENGTH, truncate {side.upper()}): "
            f"{named}")
