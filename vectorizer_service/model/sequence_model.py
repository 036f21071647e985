"""What the embedder and the reranker share: one forward pass over planned, isolated batches."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from vectorizer_service.core.batch_planning import plan_batches, preparation_chunks
from vectorizer_service.core.errors import ComputeError, InputError, QvlError
from vectorizer_service.core.pipe_messages import ServedModel
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import Checkpoint
from vectorizer_service.model.patch_embedding import patch_pre_embedding
from vectorizer_service.model.prefix_sharing import forward_with_prefix, shared_prefix, vision_spans
from vectorizer_service.model.preprocessing import Encoded, Preprocessor, collate

log = logging.getLogger("qvl.model")
MIN_SHARED_PREFIX = 16


class SequenceModel:
    """A Qwen3-VL base model read at each sequence's last real token."""

    what = "sequence"
    task = ""  # "embed" | "rerank"
    max_length_setting = "QVL_EMBED_MAX_LENGTH"  # the setting max_length comes from (named in refusals)
    fingerprint = ""  # set by served_models.load_models (core.model_identity)

    def __init__(self, ckpt: Checkpoint, settings: Settings, max_length: int) -> None:
        self.ckpt = ckpt
        self.settings = settings
        # On CPU the model thread is the bottleneck: patch embedding moves to the decoding threads.
        self.pre_embedding = patch_pre_embedding(ckpt.model) if ckpt.device.type == "cpu" else None
        self.pre = Preprocessor(ckpt.processor, settings, max_length, self.pre_embedding, self.max_length_setting)

    @property
    def hidden_size(self) -> int:
        return self.ckpt.hidden_size

    def last_hidden(self, batch: Sequence[Encoded]) -> torch.Tensor:
        """Final hidden state at each row's last real token (right padding)."""
        if self.pre_embedding is None:
            return self._last_hidden(batch)
        with self.pre_embedding.active():
            return self._last_hidden(batch)

    def _last_hidden(self, batch: Sequence[Encoded]) -> torch.Tensor:
        proc = self.ckpt.processor
        if len(batch) > 1 and self.settings.share_prefix:
            spans = [vision_spans(e, proc.image_token_id, proc.video_token_id, self.pre.merge_length)
                     for e in batch]
            prefix = shared_prefix(batch, spans)
            shortest = min(e.length for e in batch)
            # Worth it when the prefix is a real share of the work, not a handful of tokens.
            if prefix >= MIN_SHARED_PREFIX and prefix * 4 >= shortest:
                return forward_with_prefix(self.ckpt.model, batch, spans, prefix, self.pre.pad_id,
                                           proc.image_token_id, proc.video_token_id, self.ckpt.device)
        inputs, last = collate(list(batch), self.pre.pad_id, proc.image_token_id, proc.video_token_id,
                               self.ckpt.device)
        # Right padding + causal attention: real tokens never see the pads that follow them, so no
        # padding mask is needed and attention takes its fast causal path (rows stay independent).
        inputs.pop("attention_mask")
        hidden = self.ckpt.model(**inputs, use_cache=False).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()

    def forward(self, batch: Sequence[Encoded]) -> list[Any]:
        raise NotImplementedError

    def instructions(self) -> tuple[str, str]:
        """The default instruction and the query instruction ("" where the task has none)."""
        raise NotImplementedError

    def describe(self) -> ServedModel:
        ckpt = self.ckpt
        default, query = self.instructions()
        return ServedModel(task=self.task, name=ckpt.path, hidden_size=ckpt.hidden_size,
                           max_length=self.pre.max_length, modalities=["text", "image", "video"],
                           dtype=str(ckpt.dtype).replace("torch.", ""), device=str(ckpt.device),
                           attention=ckpt.attention, default_instruction=default, query_instruction=query,
                           text=self.pre.text.to_dict(), fingerprint=self.fingerprint)

    def forward_isolating(self, batch: Sequence[Encoded]) -> list[Any]:
        """``forward``, but a failing batch is split so one bad sequence fails alone, and a row
        that is not finite (NaN, inf: a numeric fault) is that sequence's error, never a vector."""
        try:
            rows = self.forward(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("forward failed", extra={"model": self.what})
                return [ComputeError(f"the model failed on this {self.what}: {exc}")]
            mid = len(batch) // 2
            return self.forward_isolating(batch[:mid]) + self.forward_isolating(batch[mid:])
        return [row if _finite(row) else ComputeError(f"the model gave non-finite values for this {self.what}")
                for row in rows]

    def plan(self, encoded: Sequence[Encoded]) -> list[list[int]]:
        return plan_batches([e.length for e in encoded], [e.vision_patches for e in encoded],
                            token_budget=self.settings.batch_tokens, max_items=self.settings.max_batch_items,
                            patch_budget=self.settings.batch_max_patches)

    def run(self, encoded: Sequence[Encoded]) -> list[Any]:
        """Forward many sequences in planned batches; results (or errors) in input order."""
        out: list[Any] = [None] * len(encoded)
        for group in self.plan(encoded):
            for i, row in zip(group, self.forward_isolating([encoded[i] for i in group]), strict=True):
                out[i] = row
        return out

    def prepare_parallel(self, prepare: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
        """``prepare`` over chunks of ``items`` on decoding threads; results in order,
        item indices of errors counted from the start of ``items``."""
        chunks = preparation_chunks(items)
        workers = self.settings.decode_threads(beside_model=False)
        if len(chunks) == 1 or workers == 1:
            return prepare(list(items))
        with ThreadPoolExecutor(workers, thread_name_prefix="qvl-prepare") as pool:
            parts = list(pool.map(lambda chunk: prepare(chunk[1]), chunks))
        out: list[Any] = []
        for (start, _), part in zip(chunks, parts, strict=True):
            out += [p.at(item=start + i) if isinstance(p, InputError) else p for i, p in enumerate(part)]
        return out

    def run_ok(self, prepared: Sequence[Encoded | QvlError]) -> list[Any]:
        """``run`` over the prepared sequences that are not errors; errors pass through in place."""
        ok = [i for i, p in enumerate(prepared) if isinstance(p, Encoded)]
        out: list[Any] = list(prepared)
        for i, row in zip(ok, self.run([prepared[i] for i in ok]), strict=True):  # type: ignore[misc]
            out[i] = row
        return out


def _finite(row: Any) -> bool:
    return bool(np.isfinite(row).all()) if isinstance(row, np.ndarray) else math.isfinite(row)
