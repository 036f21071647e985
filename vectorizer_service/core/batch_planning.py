"""Grouping sequences into model batches by a token budget counted before the forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vectorizer_service.core.parts import DocumentPage, VideoClip

TEXT_CHUNK = 32  # text-only items prepared together in one pool task
PAGE_GROUP = 4  # pages of one document drawn in one renderer job (and prepared in one pool task)
INLINE_TEXT_CHARS = 4096  # text-only requests this small are prepared without a pool task


def plan_batches(lengths: Sequence[int], patches: Sequence[int], *, token_budget: int, max_items: int,
                 patch_budget: int | None = None, keys: Sequence[int] | None = None) -> list[list[int]]:
    """Index groups, longest first, so that rows of a batch have similar lengths.

    A batch's cost is its padded size (rows x longest row); vision patches have their own
    budget because the vision tower runs on them before the language model. A sequence larger
    than the budget gets a batch of its own rather than an error: the budget is a throughput
    knob, the per-item maximum length is the limit. With ``keys``, sequences of one key stay
    together (a rerank request's pairs share their query as a prefix).
    """
    patch_budget = patch_budget if patch_budget is not None else 4 * token_budget
    if keys is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    else:
        order = sorted(range(len(lengths)), key=lambda i: (keys[i], -lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    used_patches = 0
    for i in order:
        new_width = max(width, lengths[i])
        fits = (
            current
            and len(current) < max_items
            and new_width * (len(current) + 1) <= token_budget
            and used_patches + patches[i] <= patch_budget
        )
        if current and not fits:
            batches.append(current)
            current, width, used_patches = [], 0, 0
            new_width = lengths[i]
        current.append(i)
        width = new_width
        used_patches += patches[i]
    if current:
        batches.append(current)
    return batches


def padding_ratio(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Share of padded positions in the planned batches (0 = no padding)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths)
    return 0.0 if padded == 0 else 1.0 - real / padded


def _light(item: Any) -> bool:
    return not item.images and not item.videos


def is_small_text(chunk: Sequence[Any]) -> bool:
    return all(_light(i) for i in chunk) and sum(len(t) for i in chunk for t in i.texts) <= INLINE_TEXT_CHARS


def source_key(item: Any) -> tuple[str, int] | None:
    """What makes consecutive items one preparation task: the windows of one video (decoded
    once), or pages of one document (drawn in one renderer job)."""
    if len(item.videos) == 1 and isinstance(item.videos[0], VideoClip):
        return ("clip", id(item.videos[0].source))
    for src in item.images:
        if isinstance(src, DocumentPage):
            return ("document", id(src.source))
    return None


def is_clip_run(chunk: Sequence[Any]) -> bool:
    """Several windows of one video: one task decodes the file once for all of them."""
    key = source_key(chunk[0])
    return len(chunk) > 1 and key is not None and key[0] == "clip"


def preparation_chunks(items: Sequence[Any]) -> list[tuple[int, list[Any]]]:
    """(start, items) for preprocessing tasks: runs of text-only items together, runs of one
    document's pages (up to PAGE_GROUP) and of one video's windows together, each other item
    with media alone (decoding is the work)."""
    chunks: list[tuple[int, list[Any]]] = []
    for i, item in enumerate(items):
        prev = chunks[-1][1] if chunks else None
        key = source_key(item)
        texts = _light(item) and prev and _light(prev[-1]) and len(prev) < TEXT_CHUNK
        same_source = key is not None and prev and source_key(prev[-1]) == key and (
            key[0] == "clip" or len(prev) < PAGE_GROUP)
        if texts or same_source:
            prev.append(item)  # type: ignore[union-attr]
        else:
            chunks.append((i, [item]))
    return chunks
