"""vLLM's chat-style embedding input: ``messages`` on ``/v1/embeddings`` is ONE item (one vector).

A ``system`` message's text is the instruction; ``user`` messages carry the content parts
(``text``, ``image_url``, ``video_url``, as ``content.add_part`` reads them).
"""

from __future__ import annotations

from typing import Any

from vectorizer_service.api.dialects.content import add_part
from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.core.items import Item, check_part_count
from vectorizer_service.core.settings import Settings


def item_from_messages(messages: Any, settings: Settings) -> Item:
    """The messages and their parts are counted (``QVL_MAX_PARTS_PER_ITEM``) before they are read."""
    if not isinstance(messages, list) or not messages:
        raise FieldError("messages", "must be a non-empty list of {role, content} messages")
    check_part_count(len(messages), settings, "messages")
    item = Item()
    system: list[str] = []
    seen = 0  # parts of the messages so far
    for k, message in enumerate(messages):
        what = f"messages[{k}]"
        if not isinstance(message, dict):
            raise FieldError(what, "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user"):
            raise FieldError(f"{what}.role", f"is {role!r}; an embedding conversation has system and user messages")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise FieldError(f"{what}.content", "must be a string or a list of content parts")
        seen += len(parts)
        check_part_count(seen, settings, "content parts (messages)")
        if role == "system":
            for j, part in enumerate(parts):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise FieldError(f"{what}.content[{j}]", "a system message holds text only (the instruction)")
                system.append(part["text"])
        else:
            for j, part in enumerate(parts):
                add_part(item, part, f"{what}.content[{j}]")
    if system:
        item.instruction = "\n".join(system)
    return item
