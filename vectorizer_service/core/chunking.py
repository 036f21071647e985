"""Chunking: how one item becomes several parts, each embedded like an item of its own.

``pages`` splits the item's document into its pages; ``video`` its video into windows of N
seconds with an overlap; ``text`` its last text into passages of at most N tokens (the model's own
tokenizer) with an overlap, cut at the largest sensible boundary that fits (paragraphs, then
sentences, then words: ``semantic-text-splitter``). The item's other parts (a title, an image) go
with every chunk. Each chunk carries its locator: ``{"page": n}``, ``{"start_s", "end_s"}`` or
``{"char_start", "char_end"}`` into the original text.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Literal

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.vector_encoding import EncodedVector

Kind = Literal["pages", "video", "text"]
Locator = dict[str, float | int]
MIN_PASSAGE_TOKENS = 8
MAX_NUMBER = 1e9  # a chunking's numbers: past this one is a mistake, and its digits are no message


@dataclass(frozen=True)
class ChunkVector:
    """One chunk of an item: its vector and where it lies in the source."""

    vector: EncodedVector
    locator: Locator


@dataclass(frozen=True)
class Chunking:
    kind: Kind
    seconds: float = 0.0  # video: window length
    overlap: float = 0.0  # video: seconds; text: tokens
    tokens: int = 0  # text: passage length
    max_pages: int | None = None  # pages: the caller's own limit (under QVL_MAX_DOCUMENT_PAGES)

    def check(self, settings: Settings) -> Chunking:
        """Refuse a configuration that cannot split anything (a 400 for the whole request)."""
        if self.kind == "video":
            if not (math.isfinite(self.seconds) and self.seconds > 0):
                raise InputError(f"chunking video: seconds must be a positive number, got {self.seconds}")
            if not (math.isfinite(self.overlap) and 0 <= self.overlap < self.seconds):
                raise InputError(f"chunking video: overlap must be at least 0 and less than seconds "
                                 f"({self.seconds}), got {self.overlap}")
        elif self.kind == "text":
            if not MIN_PASSAGE_TOKENS <= self.tokens <= settings.embed_max_length:
                raise InputError(f"chunking text: tokens must be between {MIN_PASSAGE_TOKENS} and "
                                 f"{settings.embed_max_length} (QVL_EMBED_MAX_LENGTH), got {self.tokens}")
            if not 0 <= self.overlap < self.tokens or self.overlap != int(self.overlap):
                raise InputError(f"chunking text: overlap must be a whole number of tokens, at least 0 and less "
                                 f"than tokens ({self.tokens}), got {self.overlap}")
        elif self.kind == "pages":
            if self.max_pages is not None and (isinstance(self.max_pages, bool) or not isinstance(self.max_pages, int)
                                               or self.max_pages < 1):
                raise InputError(f"chunking pages: max_pages must be a whole number from 1, got {self.max_pages}")
        else:
            raise InputError(f"unknown chunking type {self.kind!r} (pages, video or text)")
        return self


def chunking_from_json(value: Any) -> Chunking | None:
    """``{"type": "pages", "max_pages"?}``, ``{"type": "video", "seconds", "overlap"?}`` or
    ``{"type": "text", "tokens", "overlap"?}`` (the HTTP API's ``chunking``)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InputError(f"chunking must be an object with a type, got {type(value).__name__}")
    allowed = {"pages": {"max_pages"}, "video": {"seconds", "overlap"}, "text": {"tokens", "overlap"}}
    kind = value.get("type")
    if kind not in allowed:
        raise InputError(f"chunking type must be pages, video or text, got {kind!r}")
    unknown = set(value) - allowed[kind] - {"type"}
    if unknown:
        raise InputError(f"chunking {kind}: unknown keys {sorted(unknown)} (expected {sorted(allowed[kind])})")
    for key in sorted(allowed[kind] & set(value)):
        number = value[key]
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise InputError(f"chunking {kind}: {key} must be a finite number, got {number!r}")
        if abs(number) > MAX_NUMBER:
            raise InputError(f"chunking {kind}: {key} is out of range (at most {MAX_NUMBER:g})")
    if kind == "video":
        if "seconds" not in value:
            raise InputError("chunking video: seconds is required")
        return Chunking("video", seconds=float(value["seconds"]), overlap=float(value.get("overlap", 0)))
    if kind == "text":
        if "tokens" not in value:
            raise InputError("chunking text: tokens is required")
        tokens, overlap = value["tokens"], value.get("overlap", 0)
        if tokens != int(tokens):
            raise InputError(f"chunking text: tokens must be a whole number, got {tokens}")
        return Chunking("text", tokens=int(tokens), overlap=overlap)
    max_pages = value.get("max_pages")
    return Chunking("pages", max_pages=max_pages)


def chunking_from_spec(spec: str) -> Chunking:
    """The command line's form: ``pages``, ``pages:MAX``, ``video:SECONDS[:OVERLAP]``, ``text:TOKENS[:OVERLAP]``."""
    kind, *numbers = spec.split(":")
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        raise InputError(f"--chunk {spec!r}: numbers expected after the type") from None
    if kind == "pages" and len(values) <= 1:
        return Chunking("pages", max_pages=int(values[0]) if values else None)
    if kind == "video" and 1 <= len(values) <= 2:
        return Chunking("video", seconds=values[0], overlap=values[1] if len(values) > 1 else 0.0)
    if kind == "text" and 1 <= len(values) <= 2 and all(v == int(v) for v in values):
        return Chunking("text", tokens=int(values[0]), overlap=int(values[1]) if len(values) > 1 else 0)
    raise InputError(f"--chunk {spec!r}: expected pages, pages:MAX, video:SECONDS[:OVERLAP] or "
                     "text:TOKENS[:OVERLAP]")


def video_windows(seconds: float, window: float, overlap: float) -> list[tuple[float, float]]:
    """Windows [start, end) covering a video of ``seconds``: each ``window`` long, the next
    starting ``window - overlap`` later, the last cut at the video's end; a video shorter than
    one window is one window."""
    if seconds <= window:
        return [(0.0, seconds)]
    step = window - overlap
    out = []
    k = 0
    while True:
        start = round(k * step, 6)
        end = min(round(start + window, 6), seconds)
        out.append((start, end))
        if end >= seconds:
            return out
        k += 1


def window_count(seconds: float, window: float, overlap: float) -> int:
    """How many windows ``video_windows`` makes, without making them (checked against the limit first)."""
    if seconds <= window:
        return 1
    return 1 + math.ceil(max(seconds - window, 0.0) / (window - overlap) - 1e-9)


class Passages:
    """Text passages under the model's tokenizer; splitters are kept per (tokens, overlap)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.splitters: dict[tuple[int, int], TextSplitter] = {}
        self.lock = threading.Lock()

    def _splitter(self, tokens: int, overlap: int) -> TextSplitter:
        with self.lock:
            key = (tokens, overlap)
            if key not in self.splitters:
                if len(self.splitters) >= 16:
                    self.splitters.pop(next(iter(self.splitters)))
                self.splitters[key] = TextSplitter.from_huggingface_tokenizer(self.tokenizer, tokens, overlap=overlap)
            return self.splitters[key]

    def spans(self, text: str, tokens: int, overlap: int) -> list[tuple[int, int]]:
        """(char_start, char_end) of each passage, in order; a text with no words is one passage."""
        found = [(start, start + len(chunk)) for start, chunk in self._splitter(tokens, overlap).chunk_indices(text)]
        return found or [(0, len(text))]
