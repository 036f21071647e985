"""What the model process needs from the models (``engine/`` is typed on these, not on the classes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.parts import DocumentPage, SourceFacts, VideoClip
from vectorizer_service.core.pipe_messages import ServedModel
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.preprocessing import DecodedItem, Encoded


class SequenceScorer(Protocol):
    def forward_isolating(self, batch: Sequence[Encoded]) -> Sequence[np.ndarray | float | QvlError]:
        """One row per sequence; a sequence the model fails on gets its own error."""
        ...

    def describe(self) -> ServedModel:
        """What it serves, for the request process (text stage spec included)."""
        ...


class EmbeddingModel(SequenceScorer, Protocol):
    def prepare(self, items: Sequence[Item], instruction: str | None = None,
                budget: DecodeBudget | None = None, truncate: str = "end") -> list[Encoded | QvlError]:
        """Decode and tokenize (thread-safe); a bad item becomes its own error."""
        ...

    def prepare_clips(self, items: Sequence[Item], instruction: str | None,
                      budget: DecodeBudget) -> Iterator[tuple[int, Encoded | QvlError]]:
        """Windows of one video, decoded once: (position in ``items``, prepared or error), each once."""
        ...

    def facts(self, part: DocumentPage | VideoClip, budget: DecodeBudget) -> SourceFacts:
        """A document's page count or a video's length (raises on a bad source)."""
        ...


class RerankingModel(SequenceScorer, Protocol):
    def decode_query(self, query: Item, budget: DecodeBudget | None = None) -> DecodedItem:
        """A bad query raises: it fails the whole request."""
        ...

    def decode_documents(self, documents: Sequence[Item],
                         budget: DecodeBudget | None = None) -> list[DecodedItem | QvlError]: ...

    def pairs(self, query: DecodedItem, documents: Sequence[DecodedItem | QvlError],
              instruction: str | None) -> list[Encoded | QvlError]: ...
