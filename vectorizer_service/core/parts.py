"""Parts of a source as item parts: one page of a document, one span of a video (docs/documents.md).

A ``DocumentPage`` sits among an item's images (the page is drawn to an image in the model
process); a ``VideoClip`` among its videos. Sent alone or made by chunking, a part is the same
object, so a chunk's vector is exactly the embedding of its part sent alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from vectorizer_service.core.errors import InputError

# A document or a video file: bytes, a local path (qvl embed), or an allow-listed URI.
Source = bytes | str | os.PathLike | Any


@dataclass(frozen=True, eq=False)
class DocumentPage:
    """Page ``page`` (1-based) of a PDF; ``page`` None is the whole document, which only chunking
    ("pages") may split."""

    source: Source
    page: int | None = None


@dataclass(frozen=True, eq=False)
class VideoClip:
    """The span [start_s, end_s) of a video file, sampled as if it were a video of its own (the
    reference's fps and frame rules within the span, timestamps from its start). None: the
    video's start, or its end."""

    source: Source
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class SourceFacts:
    """What chunking needs to know of a source before splitting it (the model process reads it)."""

    pages: int | None = None  # a document's page count
    seconds: float | None = None  # a video's length: its frames / its frame rate


def check_page(page: Any, what: str = "page") -> int:
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise InputError(f"{what} must be a whole number from 1 (the first page), got {page!r}")
    return page


def check_span(start_s: Any, end_s: Any) -> tuple[float | None, float | None]:
    """A span in seconds: each end a finite number >= 0 (or None), the start before the end."""
    out = []
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is None:
            out.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a number of seconds from 0, got {value!r}")
        out.append(float(value))
    start, end = out
    if start is not None and end is not None and end <= start:
        raise InputError(f"end_s ({end}) must be after start_s ({start})")
    return start, end


def window_frames(start_s: float | None, end_s: float | None, rate: float, total: int) -> range:
    """The frames (ordinals) of a video of ``total`` frames at ``rate`` per second that lie in the
    span: frame k is at k / rate seconds. A span between two frames holds the frame before it."""
    first = 0 if start_s is None else math.ceil(start_s * rate - 1e-6)
    stop = total if end_s is None else math.ceil(end_s * rate - 1e-6)
    first, stop = max(0, min(first, total)), max(0, min(stop, total))
    if stop <= first:
        first = max(0, min(total - 1, math.floor((start_s or 0.0) * rate)))
        stop = first + 1
    return range(first, stop)
