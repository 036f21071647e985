"""The messages between the request process and the model process (pickled by ``pipe_framing``).

Each is a frozen dataclass; each side matches on the type. A row's value is a pooled hidden
state (embedding; a ``CutRow`` when truncation shortened its sequence), a score (rerank), or the
item's own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vectorizer_service.core.errors import QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.parts import DocumentPage, SourceFacts, VideoClip


@dataclass(frozen=True, slots=True)
class CutRow:
    """An embedding whose sequence truncation shortened: the pooled state, and the tokens cut."""

    value: np.ndarray
    cut: int


RowValue = np.ndarray | float | SourceFacts | QvlError | CutRow
Row = tuple[int, int, RowValue]  # (request id, index in the request, value)


# -- request process -> model process ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EmbedCall:
    """Items to embed; text-only ones arrive as token ids (prepared by the request process)."""

    rid: int
    deadline: float  # time.monotonic(), the same clock in both processes
    instruction: str | None
    entries: list[tuple[int, list[int] | Item]]  # (index in the request, token ids or a raw item)
    truncate: str = "end"  # for the raw items (``core.text_encoding.Truncate``); ids arrive cut already


@dataclass(frozen=True, slots=True)
class RerankCall:
    rid: int
    deadline: float
    query: Item
    documents: list[Item]
    instruction: str | None


@dataclass(frozen=True, slots=True)
class ProbeCall:
    """Chunking's first step: read each source's page count or length (a row of ``SourceFacts``
    each), where documents and videos are opened: in the model process and its renderers."""

    rid: int
    deadline: float
    entries: list[tuple[int, DocumentPage | VideoClip]]  # (index in the request, the whole source)


@dataclass(frozen=True, slots=True)
class Cancel:
    """The caller went away: drop the request's sequences before compute."""

    rid: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish: the request process has drained (or is going away)."""


ToModelProcess = EmbedCall | RerankCall | ProbeCall | Cancel | Stop


# -- model process -> request process ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServedModel:
    """What the model process serves for one task (gRPC ``ModelInfo`` plus the text stage's spec)."""

    task: str  # "embed" | "rerank"
    name: str
    hidden_size: int
    max_length: int
    modalities: list[str]
    dtype: str
    device: str
    attention: str
    default_instruction: str
    query_instruction: str
    text: dict[str, Any]  # core.text_encoding.TextSpec as plain data
    fingerprint: str = ""  # core.model_identity: what the model computes (checkpoint files and settings)

    def model_info(self) -> dict[str, Any]:
        """The fields of the gRPC ``ModelInfo`` message."""
        return {"task": self.task, "name": self.name, "hidden_size": self.hidden_size,
                "max_length": self.max_length, "modalities": self.modalities, "dtype": self.dtype,
                "device": self.device, "attention": self.attention,
                "default_instruction": self.default_instruction, "query_instruction": self.query_instruction,
                "fingerprint": self.fingerprint}


@dataclass(frozen=True, slots=True)
class Ready:
    """The models are loaded. Versions are plain strings: torch's version object would make the
    request process import torch to unpickle it."""

    models: dict[str, ServedModel]
    torch_version: str
    transformers_version: str
    pid: int


@dataclass(frozen=True, slots=True)
class LoadFailed:
    message: str


@dataclass(frozen=True, slots=True)
class BatchStats:
    """One batch (or the drops before it), and the queues now: the request process exports them."""

    task: str
    depth: dict[str, int]
    prepared_bytes: int
    waits: list[float] = field(default_factory=list)  # seconds each sequence queued
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> sequences dropped before compute
    size: int = 0  # sequences computed (0: nothing ran)
    seconds: float = 0.0
    padded: int = 0  # tokens including padding
    tokens: int = 0
    failed: int = 0  # sequences of the batch the model failed on (ComputeError)


@dataclass(frozen=True, slots=True)
class Rows:
    rows: list[Row]
    stats: BatchStats | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """The request as a whole failed (its rows are not sent)."""

    rid: int
    error: QvlError


FromModelProcess = Ready | LoadFailed | Rows | Fail
