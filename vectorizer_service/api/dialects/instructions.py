"""Query or document, and the instruction that follows, from what each dialect says.

``input_type`` (Cohere, Voyage, NVIDIA) and ``task`` (Jina) say it; the ``model`` field names a
profile (its instructions and dimensions) unless the URL already did (``/profiles/{name}/...``), and
``name@fingerprint`` pins the model whose vectors the caller stores (core.model_identity).
No signal means a document (OpenAI's meaning), except plain strings on a profile that declares
``plain_strings_are_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastapi import Request

from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.api.route_profiles import RouteOptions, model_options, profile_options
from vectorizer_service.core.settings import Settings

QUERY_INPUT_TYPES = ("query", "search_query")
DOCUMENT_INPUT_TYPES = ("document", "passage", "search_document", "classification", "clustering", "image")
QUERY_TASKS = ("retrieval.query", "code.query")
DOCUMENT_TASKS = ("retrieval.passage", "code.passage", "text-matching", "classification", "separation")


def is_query_input_type(value: str | None, param: str = "input_type") -> bool | None:
    """True for a query, False for a document, None when unsaid."""
    if value is None:
        return None
    if value in QUERY_INPUT_TYPES:
        return True
    if value in DOCUMENT_INPUT_TYPES:
        return False
    raise FieldError(param, f"unknown value {value!r}; expected one of "
                            f"{', '.join(QUERY_INPUT_TYPES + DOCUMENT_INPUT_TYPES)}")


def is_query_task(value: str | None) -> bool | None:
    """Jina's ``task``: ``*.query`` is a query; passages and the symmetric tasks are documents."""
    if value is None:
        return None
    if value in QUERY_TASKS:
        return True
    if value in DOCUMENT_TASKS:
        return False
    raise FieldError("task", f"unknown task {value!r}; expected one of {', '.join(QUERY_TASKS + DOCUMENT_TASKS)}")


@dataclass
class Instructions:
    """A request's options once its profile is known."""

    document: str
    query: str
    rerank: str | None
    dimensions: int | None
    plain_strings_are_queries: bool
    profile: str | None = None
    fingerprint: str | None = None

    def embedding(self, is_query: bool) -> str:
        return self.query if is_query else self.document


def route_options(request: Request, settings: Settings, model: str | None) -> RouteOptions:
    """The URL's profile wins; otherwise the ``model`` field names one (any other name: defaults). A
    ``model@fingerprint`` pins the model either way."""
    by_model = model_options(settings, model)
    name = request.path_params.get("name")
    if name is not None:
        return replace(profile_options(settings, name), fingerprint=by_model.fingerprint)
    return by_model


def instructions(request: Request, settings: Settings, model: str | None) -> Instructions:
    opts = route_options(request, settings, model)
    return Instructions(document=opts.instruction or settings.default_instruction,
                        query=opts.query_instruction or settings.query_instruction,
                        rerank=opts.rerank_instruction, dimensions=opts.dimensions,
                        plain_strings_are_queries=opts.plain_strings_are_queries, profile=opts.profile,
                        fingerprint=opts.fingerprint)
