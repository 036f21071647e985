"""The reranker: sigmoid(h_last . (W[yes] - W[no])) for each query/document pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.ranking import RerankResult, check_rerank_request, result_from_rows
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import Checkpoint
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.preprocessing import DecodedItem, Encoded
from vectorizer_service.model.sequence_model import SequenceModel


class Reranker(SequenceModel):
    what = "pair"
    task = "rerank"
    max_length_setting = "QVL_RERANK_MAX_LENGTH"

    def __init__(self, ckpt: Checkpoint, settings: Settings) -> None:
        if ckpt.score_vector is None:
            raise ValueError("the reranker needs a checkpoint loaded with its score head")
        super().__init__(ckpt, settings, settings.rerank_max_length)
        self.score_vector = ckpt.score_vector

    def decode_query(self, query: Item, budget: DecodeBudget | None = None) -> DecodedItem:
        """The query decoded once for all its pairs; a bad query fails the whole request."""
        try:
            return self.pre.decode(query, budget)
        except InputError as exc:
            raise InputError(exc.reason, part="query" + (f" {exc.part}" if exc.part else ""),
                             status=exc.status, limit=exc.limit) from None

    def decode_documents(self, documents: Sequence[Item],
                         budget: DecodeBudget | None = None) -> list[DecodedItem | QvlError]:
        out: list[DecodedItem | QvlError] = []
        budget = budget or DecodeBudget(self.settings)
        for i, doc in enumerate(self.pre.with_pages(documents, budget)):
            try:
                if isinstance(doc, QvlError):
                    raise doc
                out.append(self.pre.decode(doc, budget))
            except InputError as exc:
                out.append(exc.at(item=i))
            except QvlError as exc:
                out.append(exc)
        return out

    def pairs(self, query: DecodedItem, documents: Sequence[DecodedItem | QvlError],
              instruction: str | None) -> list[Encoded | QvlError]:
        """One sequence per document, in document order."""
        prompts, slots = [], []
        out: list[Encoded | QvlError | None] = []
        for i, doc in enumerate(documents):
            if isinstance(doc, QvlError):
                out.append(doc)
                continue
            prompts.append(self.pre.rerank_prompt(query, doc, instruction))
            slots.append(i)
            out.append(None)
        for i, enc in zip(slots, self.pre.finish(prompts), strict=True):
            out[i] = enc.at(item=i) if isinstance(enc, InputError) else enc
        return out  # type: ignore[return-value]

    def instructions(self) -> tuple[str, str]:
        return self.settings.rerank_instruction, ""

    @torch.inference_mode()
    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        return torch.sigmoid(self.last_hidden(batch) @ self.score_vector).cpu().tolist()

    def rerank(self, query: Item, documents: Sequence[Item], *, instruction: str | None = None,
               top_k: int | None = None) -> RerankResult:
        """Score every document against the query (the in-process path)."""
        check_rerank_request(len(documents), top_k, self.settings)
        budget = DecodeBudget(self.settings)
        decoded = self.prepare_parallel(lambda chunk: self.decode_documents(chunk, budget), documents)
        prepared = self.pairs(self.decode_query(query, budget), decoded, instruction)
        return result_from_rows(self.run_ok(prepared), top_k)
