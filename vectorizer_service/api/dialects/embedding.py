"""One embedding call of a dialect: parsed inputs (items, or each one's input error) through the
dispatcher, with the dimensions and normalization asked for.

Without partial results the first bad input fails the whole request (400 naming it) before any
work; with them (OpenAI's ``/v1/embeddings`` and ``allow_partial``) a bad input stands as its own
error beside its neighbours' vectors.

A route may take more inputs than ``QVL_MAX_ITEMS_PER_REQUEST`` (``/v1/embeddings`` takes OpenAI's
2048): they are embedded in consecutive calls of at most that many items, so that no one call
holds more of the queue than the setting allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request

from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.dialects.instructions import Instructions
from vectorizer_service.api.http_service import HttpService
from vectorizer_service.core.call_context import EmbedOptions
from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.vector_encoding import MIN_DIMENSIONS, EncodedVector

Parsed = Item | InputError


def check_inputs(http: HttpService, values: Any, param: str, *, at_least: int = 0) -> list[Any]:
    """A non-empty list within the request limit: ``QVL_MAX_ITEMS_PER_REQUEST``, or ``at_least``
    where a route's callers are written to a larger one."""
    if not isinstance(values, list):
        raise FieldError(param, f"must be a list, got {type(values).__name__}")
    if not values:
        raise FieldError(param, "is empty: send at least one input")
    setting = http.settings.max_items_per_request
    if at_least and len(values) > max(setting, at_least) and at_least >= setting:
        # The limit of the API this route speaks (OpenAI's 2,048): refused as that API refuses it,
        # with a 400 (the openai SDK raises BadRequestError), not qvl's 413.
        raise FieldError(param, f"{len(values)} inputs, over OpenAI's limit of {at_least}")
    if len(values) > max(setting, at_least):
        raise FieldError(param, f"{len(values)} inputs, over the limit of {setting} (QVL_MAX_ITEMS_PER_REQUEST)",
                         status=413)
    return values


def check_dimensions(http: HttpService, dimensions: int | None, param: str) -> int | None:
    model = http.dispatcher.models.get("embed")
    if dimensions is not None and model is not None and not MIN_DIMENSIONS <= dimensions <= model.hidden_size:
        raise FieldError(param, f"must be between {MIN_DIMENSIONS} and {model.hidden_size} (the model's size), "
                                f"got {dimensions}")
    return dimensions


def parse_each(values: Sequence[Any], parse: Callable[[Any, int], Item]) -> list[Parsed]:
    """Each input parsed on its own: a bad one becomes its error, named by its index."""
    out: list[Parsed] = []
    for i, value in enumerate(values):
        try:
            out.append(parse(value, i))
        except InputError as err:
            out.append(err.at(item=i))
    return out


async def embed_parsed(http: HttpService, request: Request, parsed: Sequence[Parsed], *, dimensions: int | None,
                       normalize: bool = True, allow_partial: bool = False,
                       truncate: str = "end", opts: Instructions | None = None) -> list[EncodedVector | QvlError]:
    """float32 vectors (or errors, in place, with ``allow_partial``) in input order; ``opts`` gives the
    route's profile (answers carry its fingerprint) and the model fingerprint the caller pinned."""
    if not allow_partial:
        for p in parsed:
            if isinstance(p, InputError):
                raise p
    good = [i for i, p in enumerate(parsed) if isinstance(p, Item)]
    out: list[Any] = [p if isinstance(p, InputError) else None for p in parsed]
    items = [p for p in parsed if isinstance(p, Item)]
    options = EmbedOptions(dimensions=dimensions, normalize=normalize, truncate=truncate,
                           profile=opts.profile if opts else None, fingerprint=opts.fingerprint if opts else None)
    step = http.settings.max_items_per_request
    for start in range(0, len(good), step):
        where = good[start:start + step]
        # Every result comes back (partial), so that an error is named by its index in the request,
        # not in its call; then the rule of the request applies.
        results = await http.embed_items(request, items[start:start + step], options, allow_partial=True)
        for i, r in zip(where, results, strict=True):
            out[i] = r.at(item=i) if isinstance(r, InputError) else r
            if isinstance(out[i], QvlError) and out[i].fails_call(allow_partial):
                raise out[i]
    return out


def vectors_only(results: Sequence[EncodedVector | QvlError]) -> list[EncodedVector]:
    """The results of a call without partial results (every one a vector by then)."""
    return [r for r in results if isinstance(r, EncodedVector)]
