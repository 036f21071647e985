"""Jina's embedding inputs and options (``/v1/embeddings``): ``{text}`` / ``{image}`` items,
``task``, ``embedding_type``, ``normalized``.

Weaviate's multi2vec-jinaai sends objects as ``{text}`` / ``{image}`` items (images as bare
base64) with no ``task``, and query texts as plain strings with ``task: retrieval.query`` only
when the collection's model name contains ``v3`` or ``clip``.
"""

from __future__ import annotations

from typing import Any

from vectorizer_service.api.dialects.content import add_media, media_reference
from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.core.errors import InputError
from vectorizer_service.core.items import Item

ITEM_KEYS = ("text", "image")
EMBEDDING_TYPES = {"float": ("float", False), "base64": ("float", True), "binary": ("binary", False),
                   "ubinary": ("ubinary", False)}


def jina_item(value: dict[str, Any]) -> Item:
    """``{"text": str}`` or ``{"image": data URI | URL | base64}``."""
    unknown = sorted(set(value) - set(ITEM_KEYS))
    if unknown or len(value) != 1:
        raise InputError(f"an object input is {{\"text\": ...}} or {{\"image\": ...}}, got keys {sorted(value)}")
    if "text" in value:
        if not isinstance(value["text"], str):
            raise InputError("text must be a string")
        return Item(texts=[value["text"]])
    item = Item()
    add_media(item, "image", media_reference(value["image"], "image", "image", bare_base64=True))
    return item


def embedding_type(value: Any) -> tuple[str, bool]:
    """Jina's ``embedding_type``: (dialect type, in base64)."""
    if not isinstance(value, str) or value not in EMBEDDING_TYPES:
        raise FieldError("embedding_type", f"unknown value {value!r}; expected one of {', '.join(EMBEDDING_TYPES)}")
    return EMBEDDING_TYPES[value]
