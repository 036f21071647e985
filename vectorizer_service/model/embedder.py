"""The embedding model: last-token pooling of Qwen3-VL's final hidden state."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import check_truncate
from vectorizer_service.core.vector_encoding import EncodedVector, check_options, encode_vector
from vectorizer_service.model.checkpoint import Checkpoint
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.preprocessing import Encoded
from vectorizer_service.model.sequence_model import SequenceModel


class Embedder(SequenceModel):
    what = "item"
    task = "embed"

    def __init__(self, ckpt: Checkpoint, settings: Settings) -> None:
        super().__init__(ckpt, settings, settings.embed_max_length)

    def prepare(self, items: Sequence[Item], instruction: str | None = None,
                budget: DecodeBudget | None = None, truncate: str = "end") -> list[Encoded | QvlError]:
        """Decode and tokenize (CPU, thread-safe); a bad item becomes its own error."""
        prompts, slots = [], []
        out: list[Encoded | QvlError | None] = []
        for i, item in enumerate(items):
            try:
                if instruction is not None and item.instruction is None:
                    item = dataclasses.replace(item, instruction=instruction)
                prompts.append(self.pre.embedding_prompt(self.pre.decode(item, budget)))
                slots.append(i)
                out.append(None)
            except InputError as exc:
                out.append(exc.at(item=i))
        for i, enc in zip(slots, self.pre.finish(prompts, truncate), strict=True):
            out[i] = enc.at(item=i) if isinstance(enc, InputError) else enc
        return out  # type: ignore[return-value]

    def instructions(self) -> tuple[str, str]:
        return self.settings.default_instruction, self.settings.query_instruction

    @torch.inference_mode()
    def forward(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        """Pooled, unnormalized float32 hidden states, one per sequence."""
        return list(self.last_hidden(batch).cpu().numpy())

    def embed(self, items: Sequence[Item], *, instruction: str | None = None, dimensions: int | None = None,
              encoding: str = "float32", normalize: bool = True,
              truncate: str = "end") -> list[EncodedVector | QvlError]:
        """Embed items in one call (the in-process path of the CLI, benchmarks and tests); a vector
        whose text was cut carries the tokens cut (``EncodedVector.cut``)."""
        check_options(dimensions, encoding, self.hidden_size)
        check_truncate(truncate)
        budget = DecodeBudget(self.settings)
        prepared = self.prepare_parallel(lambda chunk: self.prepare(chunk, instruction, budget, truncate), items)
        rows = self.run_ok(prepared)
        out: list[EncodedVector | QvlError] = []
        for enc, row in zip(prepared, rows, strict=True):
            if isinstance(row, QvlError):
                out.append(row)
                continue
            vec = encode_vector(row, dimensions=dimensions, encoding=encoding, normalize=normalize)
            vec.cut = enc.cut if isinstance(enc, Encoded) else 0
            out.append(vec)
        return out
