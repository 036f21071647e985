"""Qwen3-VL conversations for embedding and reranking (the pipeline's formatting stage).

The two models treat instructions differently on purpose, as their reference code does: the
embedder's instruction is the system prompt and gets a final period; the reranker's goes
verbatim after ``<Instruct>: ``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol


class Parts(Protocol):
    """An item's parts (raw ``Item`` or decoded ``DecodedItem``)."""

    texts: list[str]
    images: list[Any]
    videos: list[Any]
    instruction: str | None

    @property
    def is_empty(self) -> bool: ...

RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


@dataclass
class Prompt:
    """Chat messages with media placeholders, and the media parts in placeholder order."""

    messages: list[dict[str, Any]]
    images: list[Any]
    videos: list[Any]


def embedding_instruction(instruction: str | None, default: str) -> str:
    """Strip; add a final '.' unless the instruction already ends in punctuation."""
    text = (instruction or "").strip()
    if not text:
        return default
    if not unicodedata.category(text[-1]).startswith("P"):
        text += "."
    return text


def _content(item: Parts, prefix: str | None) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Videos, then images, then texts; an empty side is the text "NULL"."""
    content: list[dict[str, Any]] = []
    if prefix is not None:
        content.append({"type": "text", "text": prefix})
    if item.is_empty:
        content.append({"type": "text", "text": "NULL"})
        return content, [], []
    content.extend({"type": "video"} for _ in item.videos)
    content.extend({"type": "image"} for _ in item.images)
    content.extend({"type": "text", "text": t} for t in item.texts)
    return content, list(item.images), list(item.videos)


def embedding_prompt(item: Parts, default_instruction: str) -> Prompt:
    content, images, videos = _content(item, None)
    system = embedding_instruction(item.instruction, default_instruction)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": content},
    ]
    return Prompt(messages, images, videos)


def rerank_prompt(query: Parts, document: Parts, instruction: str | None, default_instruction: str) -> Prompt:
    q_content, q_images, q_videos = _content(query, "<Query>:")
    d_content, d_images, d_videos = _content(document, "\n<Document>:")
    user = [{"type": "text", "text": "<Instruct>: " + (instruction or default_instruction)}]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
        {"role": "user", "content": user + q_content + d_content},
    ]
    return Prompt(messages, q_images + d_images, q_videos + d_videos)
