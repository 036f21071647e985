"""The options a route's profile selects: by URL prefix (``/profiles/{name}``, ``/dim/{d}``) or,
on the OpenAI/Cohere/Voyage/Jina dialects, by the body's ``model`` field; and the model fingerprint
a caller pins (``model@fingerprint``, a ``/fingerprint/{f}`` URL prefix: core.model_identity)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.model_identity import split_model_name
from vectorizer_service.core.settings import Settings


@dataclass
class RouteOptions:
    """Options a collection (or a client) selects through its URL or its model name."""

    instruction: str | None = None
    query_instruction: str | None = None
    rerank_instruction: str | None = None
    dimensions: int | None = None
    plain_strings_are_queries: bool = False
    profile: str | None = None  # the profile's name: answers carry its fingerprint
    fingerprint: str | None = None  # the pinned model fingerprint: another model's answer is refused


def profile_options(settings: Settings, name: str) -> RouteOptions:
    """A named profile's options; an unknown name in a URL is a 404."""
    if name not in settings.profiles:
        # Behind a token the names are not for anonymous callers (open module routes reach here).
        known = ("listed in /v1/info" if settings.token else
                 "known: " + (", ".join(sorted(settings.profiles)) or "none configured"))
        raise InputError(f"unknown profile {name!r} ({known})", status=404)
    p = settings.profiles[name]
    return RouteOptions(p.instruction, p.query_instruction, p.rerank_instruction, p.dimensions,
                        p.plain_strings_are_queries, profile=name)


def model_options(settings: Settings, model: str | None) -> RouteOptions:
    """The options a dialect body's ``model`` names: a profile's, or the defaults for any other name
    (a Qwen model id, an OpenAI model name, none); ``name@fingerprint`` pins the model besides."""
    name, pinned = split_model_name(model)
    opts = profile_options(settings, name) if name is not None and name in settings.profiles else RouteOptions()
    return replace(opts, fingerprint=pinned)
