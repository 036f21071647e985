"""The embedding model: last-token pooling of Qwen3-VL's final hidden state."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from vectorizer_service.core.batch_planning import is_clip_run, preparation_chunks
from vectorizer_service.core.chunk_plans import Part, chunk_target, expand
from vectorizer_service.core.chunking import Chunking, ChunkVector, Passages
from vectorizer_service.core.errors import ComputeError, InputError, QvlError
from vectorizer_service.core.items import Item
from vectorizer_service.core.parts import DocumentPage, SourceFacts, VideoClip
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import check_truncate
from vectorizer_service.core.vector_encoding import EncodedVector, check_options, encode_vector
from vectorizer_service.model.checkpoint import Checkpoint
from vectorizer_service.model.decode_budget import DecodeBudget
from vectorizer_service.model.documents import shared_documents
from vectorizer_service.model.media import read_source
from vectorizer_service.model.preprocessing import Encoded
from vectorizer_service.model.sequence_model import SequenceModel
from vectorizer_service.model.video_clips import decode_clips, video_facts


class Embedder(SequenceModel):
    what = "item"
    task = "embed"

    def __init__(self, ckpt: Checkpoint, settings: Settings) -> None:
        super().__init__(ckpt, settings, settings.embed_max_length)

    def prepare(self, items: Sequence[Item], instruction: str | None = None,
                budget: DecodeBudget | None = None, truncate: str = "end") -> list[Encoded | QvlError]:
        """Decode and tokenize (CPU, thread-safe); a bad item becomes its own error. Windows of one
        video among the items are decoded once (``prepare_clips``)."""
        budget = budget or DecodeBudget(self.settings)
        chunks = preparation_chunks(items)
        if not any(is_clip_run(chunk) for _, chunk in chunks):
            return self._prepare(items, instruction, budget, truncate)
        out: list[Encoded | QvlError] = []
        for start, chunk in chunks:
            if is_clip_run(chunk):
                found = dict(self.prepare_clips(chunk, instruction, budget, truncate))
                part = [found[k].at(item=k) if isinstance(found[k], InputError) else found[k]
                        for k in range(len(chunk))]
            else:
                part = self._prepare(chunk, instruction, budget, truncate)
            out += [p.at(item=start + k) if isinstance(p, InputError) else p for k, p in enumerate(part)]
        return out

    def _prepare(self, items: Sequence[Item], instruction: str | None,
                 budget: DecodeBudget, truncate: str = "end") -> list[Encoded | QvlError]:
        prompts, slots = [], []
        out: list[Encoded | QvlError | None] = []
        for i, item in enumerate(self.pre.with_pages(items, budget)):
            try:
                if isinstance(item, QvlError):
                    raise item
                if instruction is not None and item.instruction is None:
                    item = dataclasses.replace(item, instruction=instruction)
                prompts.append(self.pre.embedding_prompt(self.pre.decode(item, budget)))
                slots.append(i)
                out.append(None)
            except InputError as exc:
                out.append(exc.at(item=i))
            except QvlError as exc:
                out.append(exc)
        for i, enc in zip(slots, self.pre.finish(prompts, truncate), strict=True):
            out[i] = enc.at(item=i) if isinstance(enc, InputError) else enc
        return out  # type: ignore[return-value]

    def prepare_clips(self, items: Sequence[Item], instruction: str | None,
                      budget: DecodeBudget, truncate: str = "end") -> Iterator[tuple[int, Encoded | QvlError]]:
        """Items whose one video is a window of the same file: the file is decoded once and each
        window prepared as soon as its frames are in (lazily: the caller paces the decoding).
        Every item gets exactly one answer, whatever fails."""
        answered: set[int] = set()
        try:
            clip = items[0].videos[0]
            data = read_source(clip.source, self.settings, "video 0")
            spans = [(item.videos[0].start_s, item.videos[0].end_s) for item in items]
            decoded = decode_clips(data, spans, self.settings, "video 0", [budget.item() for _ in items])
            for k, video in decoded:
                answered.add(k)
                if isinstance(video, QvlError):
                    yield k, video
                else:
                    yield k, self._prepare([dataclasses.replace(items[k], videos=[video])], instruction, budget,
                                           truncate)[0]
        except QvlError as err:
            failure: QvlError = err
        except Exception as exc:  # never leave a window unanswered
            failure = ComputeError(f"preparing the video's windows failed: {exc}")
        else:
            return
        for k in range(len(items)):
            if k not in answered:
                yield k, failure

    def facts(self, part: DocumentPage | VideoClip, budget: DecodeBudget) -> SourceFacts:
        """A document's page count or a video's length, read before chunking splits it."""
        if isinstance(part, DocumentPage):
            return shared_documents(self.settings).facts(part.source, budget.documents, "document")
        return video_facts(read_source(part.source, self.settings, "video"), self.settings, "video")

    def embed_chunks(self, items: Sequence[Item], chunking: Chunking, *, instruction: str | None = None,
                     dimensions: int | None = None, encoding: str = "float32",
                     normalize: bool = True, truncate: str = "end") -> list[list[ChunkVector] | QvlError]:
        """Items split by ``chunking`` and their parts embedded (the in-process path of ``qvl embed
        --chunk``): the same plans (``core.chunk_plans``) and parts as the service's."""
        chunking.check(self.settings)
        budget = DecodeBudget(self.settings)
        passages = Passages(self.pre.text.backend)
        plans: list[list[Part] | QvlError] = []
        for i, item in enumerate(items):
            try:
                target = chunk_target(item, chunking)
                facts = self.facts(target.source, budget) if target.needs_facts else None  # type: ignore[arg-type]
                plans.append(expand(item, target, chunking, facts, passages, self.settings))
            except InputError as exc:
                plans.append(exc.at(item=i))
        parts = [part for plan in plans if not isinstance(plan, QvlError) for part in plan]
        vectors = iter(self.embed([item for item, _ in parts], instruction=instruction, dimensions=dimensions,
                                  encoding=encoding, normalize=normalize, truncate=truncate))
        out: list[list[ChunkVector] | QvlError] = []
        for i, plan in enumerate(plans):
            if isinstance(plan, QvlError):
                out.append(plan)
                continue
            chunks = [(locator, next(vectors)) for _, locator in plan]
            failed = next((v for _, v in chunks if isinstance(v, QvlError)), None)
            out.append(failed.at(item=i) if isinstance(failed, InputError) else failed if failed is not None
                       else [ChunkVector(v, locator) for locator, v in chunks])  # type: ignore[arg-type]
        return out

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
