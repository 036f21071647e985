"""The request side of the service: text preparation and calls to the model process.

Requests enter on the event loop and take an admission permit (``admission``). Text-only
items are rendered and tokenized here (a few short texts inline, larger runs on a thread), so
the model process only batches and computes them; items with media travel raw and are decoded
there. The dynamic batching itself is ``engine``'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from vectorizer_service.core.batch_planning import is_small_text
from vectorizer_service.core.call_context import CallContext, EmbedOptions
from vectorizer_service.core.chunk_plans import ChunkTarget, Part, chunk_target, expand
from vectorizer_service.core.chunking import Chunking, ChunkVector, Passages
from vectorizer_service.core.errors import DeadlineError, InputError, NotReadyError, QvlError
from vectorizer_service.core.items import Item, check_item_count, check_unicode
from vectorizer_service.core.model_identity import ModelMismatchError, profile_fingerprint, public_model_name
from vectorizer_service.core.parts import DocumentPage, VideoClip
from vectorizer_service.core.pipe_messages import (
    BatchStats,
    CutRow,
    EmbedCall,
    ProbeCall,
    RerankCall,
    RowValue,
    ServedModel,
    ToModelProcess,
)
from vectorizer_service.core.prompts import embedding_prompt
from vectorizer_service.core.ranking import RerankResult, check_rerank_request, result_from_rows
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import TextEncoder, TextIds, check_truncate
from vectorizer_service.core.vector_encoding import EncodedVector, check_options, encode_vector
from vectorizer_service.serving.admission import Admission
from vectorizer_service.serving.metrics import record_batch
from vectorizer_service.serving.model_link import ModelLink
from vectorizer_service.serving.model_process_link import ModelProcessLink

STUCK_MARGIN_S = 30.0


def _placed(err: QvlError, index: int) -> QvlError:
    """A part's error as its item's (the part was an item of the expanded call)."""
    return err.at(item=index) if isinstance(err, InputError) else err


def _media_bytes(item: Item) -> int:
    """Raw media bytes of an item (a document's or a video's bytes once, however many parts use it)."""
    size = 0
    for p in (*item.images, *item.videos):
        if isinstance(p, DocumentPage | VideoClip):
            p = p.source
        if isinstance(p, bytes | bytearray):
            size += len(p)
        elif isinstance(p, list):
            size += sum(len(f) for f in p if isinstance(f, bytes | bytearray))
    return size


class Dispatcher:
    def __init__(self, settings: Settings, model_process: str, *, log_level: str = "INFO",
                 log_format: str = "json", link: ModelLink | None = None) -> None:
        """``model_process`` names the model process's entry (``module:function``); ``link``, when
        given, replaces the link to it (a test's stand-in for the model process)."""
        self.settings = settings
        self.link: ModelLink = link or ModelProcessLink(settings, model_process, log_level=log_level,
                                                        log_format=log_format)
        self.link.on_stats = self._batch_done
        self.failing_batches = 0  # batches in a row on which the model failed every sequence
        self.admission = Admission(settings)
        self.models: dict[str, ServedModel] = {}  # task -> what the model process serves
        self.text: dict[str, TextEncoder] = {}
        self.passages: Passages | None = None  # text chunking, with the embedding model's tokenizer
        self.profile_fingerprints: dict[str, str] = {}  # profile -> its embedding fingerprint

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Start (or restart) the model process; accept work once it has loaded."""
        ready = await self.link.start()
        self.failing_batches = 0
        self.models = ready.models
        self.text = {task: TextEncoder.from_dict(m.text) for task, m in self.models.items()}
        if "embed" in self.text:
            self.passages = Passages(self.text["embed"].backend)
        embed = self.models.get("embed")
        self.profile_fingerprints = {name: profile_fingerprint(embed.fingerprint, profile)
                                     for name, profile in self.settings.profiles.items()} if embed else {}
        self.admission.accepting = True

    def _batch_done(self, stats: BatchStats) -> None:
        record_batch(stats)
        if stats.size:
            self.failing_batches = self.failing_batches + 1 if stats.failed == stats.size else 0

    @property
    def alive(self) -> bool:
        """The model process runs and computes: one that fails every batch (a wedged GPU) is not
        alive, so an orchestrator's liveness probe restarts it."""
        return self.link.alive and self.failing_batches < self.settings.live_max_failing_batches

    @property
    def accepting(self) -> bool:
        return self.admission.accepting

    @property
    def admitted(self) -> int:
        return self.admission.items

    def model_name(self, task: str) -> str:
        return self.models[task].name if task in self.models else ""

    def fingerprint(self, task: str, profile: str | None = None) -> str:
        """The fingerprint of what ``task`` computes now (through ``profile``, for embeddings); "" while
        nothing is loaded."""
        if task == "embed" and profile is not None:
            return self.profile_fingerprints.get(profile, "")
        return self.models[task].fingerprint if task in self.models else ""

    def _identify(self, task: str, ctx: CallContext, pinned: str | None = None, profile: str | None = None) -> str:
        """Refuse a call pinned to another fingerprint, or one whose context was answered by another
        model before (a stream across a model change); else record the answering model in ``ctx``."""
        served = self.fingerprint(task, profile)
        what = f"{'embedding model' if task == 'embed' else 'reranker'} {public_model_name(self.model_name(task))}"
        what += f" (profile {profile!r})" if profile else ""
        if pinned is not None and pinned != served:
            raise ModelMismatchError.pinned(pinned, served, what)
        if ctx.fingerprint and ctx.fingerprint != served:
            raise ModelMismatchError.changed(ctx.fingerprint, served, what)
        ctx.fingerprint = served
        return served

    def stop_accepting(self) -> None:
        self.admission.accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until admitted work is done (True) or the grace period ends (False)."""
        self.stop_accepting()
        end = time.monotonic() + timeout
        while self.admitted and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.admitted == 0

    async def close(self) -> None:
        await self.link.stop()

    # -- requests ------------------------------------------------------------
    def _need(self, task: str, what: str) -> ServedModel:
        # While starting, no model is loaded yet: that is UNAVAILABLE (retry), not bad input.
        if not self.accepting:
            raise NotReadyError("the service is starting or draining; retry shortly")
        if task not in self.models:
            raise InputError(f"this service has no {what} model loaded", status=404)
        return self.models[task]

    async def embed(self, items: Sequence[Item] | Callable[[], Sequence[Item]], options: EmbedOptions,
                    ctx: CallContext, *, wait_for_capacity: bool = False,
                    size_hint: tuple[int, int] | None = None) -> list[EncodedVector | QvlError]:
        """Embed items. ``items`` may be a callable with a ``size_hint`` (count, bytes): it is then
        called only once the request is admitted, so a refused request never copies its media."""
        model = self._need("embed", "embedding")
        self._identify("embed", ctx, options.fingerprint, options.profile)
        check_options(options.dimensions, options.encoding, model.hidden_size)
        check_truncate(options.truncate)
        if options.instruction is not None:
            check_unicode(options.instruction, "instruction")
        if callable(items):
            assert size_hint is not None
            count, nbytes = size_hint
        else:
            count, nbytes = len(items), sum(_media_bytes(i) for i in items)
        check_item_count(count, self.settings)
        async with self.admission.permit(count, nbytes, wait=wait_for_capacity, ctx=ctx):
            if callable(items):
                items = items()
            rows = await self._embed_rows(list(items), options.instruction, options.truncate, ctx,
                                          model.fingerprint)
        return [r if isinstance(r, QvlError) else self._vector(r, options) for r in rows]

    @staticmethod
    def _vector(row: RowValue | None, options: EmbedOptions) -> EncodedVector:
        """A row in the asked form; a cut row's vector says how many tokens were cut."""
        cut = row.cut if isinstance(row, CutRow) else 0
        vec = encode_vector(row.value if isinstance(row, CutRow) else row, dimensions=options.dimensions,  # type: ignore[arg-type]
                            encoding=options.encoding, normalize=options.normalize)
        vec.cut = cut
        return vec

    async def embed_chunks(self, items: Sequence[Item], options: EmbedOptions, chunking: Chunking, ctx: CallContext,
                           *, wait_for_capacity: bool = False) -> list[list[ChunkVector] | QvlError]:
        """Each item split by ``chunking`` (``core.chunk_plans``); its parts are embedded like
        items, batched with everything else. An item whose split or any part fails gets that error."""
        model = self._need("embed", "embedding")
        self._identify("embed", ctx, options.fingerprint, options.profile)
        check_options(options.dimensions, options.encoding, model.hidden_size)
        check_truncate(options.truncate)
        chunking.check(self.settings)
        if options.instruction is not None:
            check_unicode(options.instruction, "instruction")
        check_item_count(len(items), self.settings)
        nbytes = sum(_media_bytes(i) for i in items)
        async with self.admission.permit(len(items), nbytes, wait=wait_for_capacity, ctx=ctx):
            plans = await self._plan_chunks(list(items), chunking, ctx)
        parts = [part for plan in plans if not isinstance(plan, QvlError) for part in plan]
        rows: list[RowValue | None] = []
        if parts:
            async with self.admission.permit(len(parts), nbytes, wait=wait_for_capacity, ctx=ctx):
                rows = await self._embed_rows([item for item, _ in parts], options.instruction, options.truncate,
                                              ctx, model.fingerprint)
        out: list[list[ChunkVector] | QvlError] = []
        at = iter(zip(parts, rows, strict=True))
        for i, plan in enumerate(plans):
            if isinstance(plan, QvlError):
                out.append(plan)
                continue
            chunks = [(locator, row) for (_, locator), row in (next(at) for _ in plan)]
            failed = next((row for _, row in chunks if isinstance(row, QvlError)), None)
            out.append(_placed(failed, i) if failed is not None else [
                ChunkVector(self._vector(row, options), locator) for locator, row in chunks])
        return out

    async def _plan_chunks(self, items: list[Item], chunking: Chunking,
                           ctx: CallContext) -> list[list[Part] | QvlError]:
        """Each item's parts; the sources that must be opened first are read in one probe call."""
        targets: list[ChunkTarget | QvlError] = []
        for i, item in enumerate(items):
            try:
                targets.append(chunk_target(item, chunking))
            except InputError as exc:
                targets.append(exc.at(item=i))
        probes = [(i, t.source) for i, t in enumerate(targets)
                  if isinstance(t, ChunkTarget) and t.needs_facts and t.source is not None]
        facts: list[RowValue | None] = [None] * len(items)
        if probes:
            facts = await self._call(len(items), len(probes), lambda rid: ProbeCall(rid, ctx.deadline, probes), ctx)
        passages = self.passages

        def expand_all() -> list[list[Part] | QvlError]:
            out: list[list[Part] | QvlError] = []
            for i, (item, target, fact) in enumerate(zip(items, targets, facts, strict=True)):
                if isinstance(target, QvlError) or isinstance(fact, QvlError):
                    out.append(target if isinstance(target, QvlError) else fact)  # type: ignore[arg-type]
                    continue
                try:
                    out.append(expand(item, target, chunking, fact, passages, self.settings))  # type: ignore[arg-type]
                except InputError as exc:
                    out.append(exc.at(item=i))
            return out

        return await asyncio.to_thread(expand_all) if chunking.kind == "text" else expand_all()

    async def _embed_rows(self, items: list[Item], instruction: str | None, truncate: str,
                          ctx: CallContext, fingerprint: str) -> list[RowValue | None]:
        out: list[RowValue | None] = [None] * len(items)
        cuts: dict[int, int] = {}  # text-only items cut here, in the request process
        light = [i for i, item in enumerate(items) if not item.images and not item.videos]
        entries: list[tuple[int, list[int] | Item]] = []
        if light:
            texts = [items[i] for i in light]
            if is_small_text(texts):
                prepared = self.encode_texts(texts, instruction, truncate)
            else:  # rendering many templates would hold the event loop
                prepared = await asyncio.to_thread(self.encode_texts, texts, instruction, truncate)
            for i, p in zip(light, prepared, strict=True):
                if isinstance(p, InputError):
                    out[i] = p.at(item=i)
                else:
                    entries.append((i, p.ids))
                    if p.cut:
                        cuts[i] = p.cut
        entries += [(i, item) for i, item in enumerate(items) if item.images or item.videos]
        if entries and self.fingerprint("embed") != fingerprint:
            # The model process was replaced (by another model) while this call waited: its answer
            # would not be the model the call was identified with.
            raise NotReadyError("the model process restarted while the call waited; send it again")
        if entries:
            rows = await self._call(len(items), len(entries),
                                    lambda rid: EmbedCall(rid, ctx.deadline, instruction, entries, truncate), ctx)
            for i, _ in entries:
                row = rows[i]
                out[i] = CutRow(row, cuts[i]) if i in cuts and isinstance(row, np.ndarray) else row
        return out

    def encode_texts(self, items: Sequence[Item], instruction: str | None,
                     truncate: str = "end") -> list[TextIds | InputError]:
        """Token ids of text-only items, exactly as the model process's preprocessor makes them."""
        text = self.text["embed"]
        out: list[TextIds | InputError] = [InputError("not prepared")] * len(items)
        prompts, slots = [], []
        for k, item in enumerate(items):
            try:
                item.validate(self.settings)
                text.check_texts(item.texts)
                if instruction is not None and item.instruction is None:
                    item = dataclasses.replace(item, instruction=instruction)
                prompts.append(embedding_prompt(item, self.settings.default_instruction))
                slots.append(k)
            except InputError as exc:
                out[k] = exc
        for k, ids in zip(slots, text.encode_texts(prompts, truncate), strict=True):
            out[k] = ids
        return out

    async def rerank(self, query: Item, documents: Sequence[Item], instruction: str | None, top_k: int | None,
                     ctx: CallContext) -> RerankResult:
        self._need("rerank", "reranker")
        served = self._identify("rerank", ctx)
        check_rerank_request(len(documents), top_k, self.settings)
        if instruction is not None:
            check_unicode(instruction, "instruction")
        nbytes = _media_bytes(query) + sum(_media_bytes(d) for d in documents)
        rows: list[RowValue | None] = []
        async with self.admission.permit(max(1, len(documents)), nbytes, ctx=ctx):
            if documents:
                docs = list(documents)
                if self.fingerprint("rerank") != served:
                    raise NotReadyError("the model process restarted while the call waited; send it again")
                rows = await self._call(len(docs), len(docs),
                                        lambda rid: RerankCall(rid, ctx.deadline, query, docs, instruction), ctx)
        return result_from_rows(rows, top_k)

    async def _call(self, rows: int, expected: int, build: Callable[[int], ToModelProcess],
                    ctx: CallContext) -> list[RowValue | None]:
        ctx.check()
        rid, future = self.link.call(rows, expected, build)
        try:
            # The model process answers a passed deadline itself (before compute); the margin
            # only guards against a model process that stopped answering at all.
            return await asyncio.wait_for(future, max(ctx.deadline - time.monotonic(), 0.0) + STUCK_MARGIN_S)
        except TimeoutError:
            self.link.cancel(rid)
            raise DeadlineError("the model process did not answer before the deadline") from None
        except asyncio.CancelledError:
            ctx.cancelled = True  # its queued sequences are dropped before compute
            self.link.cancel(rid)
            raise
