"""From an item to model inputs (the pipeline's preprocessing stage).

Media are decoded and resized (``media``), the conversation is rendered with the checkpoint's
chat template (``prompts``), vision placeholders are expanded the way the reference's
transformers 4.57 processor does it, and the ids are truncated keeping special tokens.
Everything here is CPU work that is safe to run on several threads at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vectorizer_service.core.errors import InputError, QvlError
from vectorizer_service.core.items import Decoded, Item
from vectorizer_service.core.parts import DocumentPage, VideoClip
from vectorizer_service.core.prompts import Prompt, embedding_prompt, rerank_prompt
from vectorizer_service.core.settings import Settings
from vectorizer_service.core.text_encoding import TextEncoder
from vectorizer_service.model.decode_budget import DecodeBudget, ItemBudget
from vectorizer_service.model.documents import shared_documents
from vectorizer_service.model.media import (
    DecodedVideo,
    decode_image,
    decode_video,
    read_source,
    resize_image,
    resize_video,
)
from vectorizer_service.model.video_clips import decode_clips


@dataclass
class VisionPart:
    """One image or video after the processor: patch rows and its (t, h, w) grid."""

    kind: str  # "image" | "video"
    pixel_values: torch.Tensor  # one row per patch: pixels, or already embedded (Preprocessor.embed_patches)
    grid_thw: torch.Tensor  # shape (3,)
    timestamps: list[float] = field(default_factory=list)


@dataclass
class DecodedItem:
    """An item whose media are decoded and converted to patches; reusable across pairs."""

    texts: list[str]
    images: list[VisionPart]
    videos: list[VisionPart]
    instruction: str | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.texts or self.images or self.videos)


@dataclass
class Encoded:
    """Model-ready inputs of one sequence (an embedding item or a rerank pair)."""

    input_ids: list[int]
    images: list[VisionPart]
    videos: list[VisionPart]
    cut: int = 0  # text tokens truncation removed

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def vision_patches(self) -> int:
        return sum(int(p.pixel_values.shape[0]) for p in (*self.images, *self.videos))


class Preprocessor:
    def __init__(self, processor: Any, settings: Settings, max_length: int,
                 embed_patches: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_length_setting: str = "QVL_EMBED_MAX_LENGTH") -> None:
        self.processor = processor
        self.embed_patches = embed_patches  # patch rows -> embedded rows, here instead of in the forward
        self.text = TextEncoder.from_processor(processor, max_length, max_length_setting)
        self.settings = settings
        self.max_length = max_length
        self.merge_length = processor.image_processor.merge_size ** 2
        self.temporal_patch = processor.video_processor.temporal_patch_size
        self.image_token = processor.image_token
        self.image_token_id = processor.image_token_id
        self.video_token = processor.video_token
        self.vision_start = processor.vision_start_token
        self.vision_end = processor.vision_end_token
        self.tokenizer = processor.tokenizer  # transformers' own, for decoding ids only
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # -- media -----------------------------------------------------------------
    def decode(self, item: Item, budget: DecodeBudget | None = None) -> DecodedItem:
        """Decode, bound and patchify every media part; errors name the part. ``budget`` is the
        request's (its pixels and deadline); without one the item gets a budget of its own."""
        s = self.settings
        item.validate(s)
        self.text.check_texts(item.texts)
        budget = budget or DecodeBudget(s)
        pixels = budget.item()
        if any(isinstance(src, DocumentPage) for src in item.images):
            rendered = self.render_pages([item], budget)[0]
            if isinstance(rendered, QvlError):
                raise rendered
            item = rendered
        images = []
        for i, src in enumerate(item.images):
            img = resize_image(decode_image(src, s, f"image {i}", pixels), s)
            images.append(self._image_part(img))
        videos = []
        for i, src in enumerate(item.videos):
            videos.append(self._video_part(self._decode_video(src, f"video {i}", pixels), f"video {i}"))
        return DecodedItem(texts=list(item.texts), images=images, videos=videos, instruction=item.instruction)

    def _decode_video(self, src: object, what: str, pixels: ItemBudget) -> DecodedVideo:
        if isinstance(src, DecodedVideo):  # a clip decoded with the other windows of its video
            return src
        if isinstance(src, VideoClip):  # a clip alone: the same function, one span
            data = read_source(src.source, self.settings, what)
            ((_, clip),) = decode_clips(data, [(src.start_s, src.end_s)], self.settings, what, [pixels])
            if isinstance(clip, QvlError):
                raise clip
            return clip
        assert not isinstance(src, Decoded)
        return decode_video(src, self.settings, what, pixels)  # type: ignore[arg-type]

    def with_pages(self, items: Sequence[Item], budget: DecodeBudget) -> list[Item | QvlError]:
        """``render_pages`` where any item has a page to draw; the items as they are otherwise."""
        if not any(isinstance(src, DocumentPage) for item in items for src in item.images):
            return list(items)
        return self.render_pages(items, budget)

    def render_pages(self, items: Sequence[Item], budget: DecodeBudget) -> list[Item | QvlError]:
        """Items with their document pages drawn (PIL images in their place). The pages a run of
        items wants from one document are drawn in one renderer job, so a document's bytes
        travel to a renderer once per run; a page sent alone takes the same path, one page."""
        wanted: dict[int, tuple[object, set[int]]] = {}
        for item in items:
            for src in item.images:
                if isinstance(src, DocumentPage) and src.page is not None:
                    wanted.setdefault(id(src.source), (src.source, set()))[1].add(src.page)
        drawn: dict[tuple[int, int], Image.Image | QvlError] = {}
        documents = shared_documents(self.settings)
        for key, (source, numbers) in wanted.items():
            order = sorted(numbers)
            try:
                pages: list[Image.Image | InputError] = documents.pages(source, order, budget.documents, "document")
            except QvlError as err:
                pages = [err] * len(order)  # type: ignore[list-item]
            drawn.update({(key, n): page for n, page in zip(order, pages, strict=True)})
        out: list[Item | QvlError] = []
        for item in items:
            images = [drawn[(id(src.source), src.page)] if isinstance(src, DocumentPage) and src.page is not None
                      else src for src in item.images]
            failed = next((img for img in images if isinstance(img, QvlError)), None)
            out.append(failed if failed is not None else dataclasses.replace(item, images=images))
        return out

    def _image_part(self, img: Image.Image) -> VisionPart:
        out = self.processor.image_processor(images=[img], do_resize=False, return_tensors="pt")
        return VisionPart("image", self._rows(out["pixel_values"]), out["image_grid_thw"][0])

    def _rows(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_patches(pixels) if self.embed_patches is not None else pixels

    def _video_part(self, video: DecodedVideo, what: str) -> VisionPart:
        try:
            frames, meta = resize_video(video, self.settings)
        except ValueError as exc:
            raise InputError(f"{what} cannot be resized: {exc}") from None
        out = self.processor.video_processor(
            videos=[frames], video_metadata=[meta], do_sample_frames=False, do_resize=False,
            cap_pixels_per_frame=True, return_tensors="pt",
        )
        grid = out["video_grid_thw"][0]
        return VisionPart("video", self._rows(out["pixel_values_videos"]), grid, self._timestamps(meta, int(grid[0])))

    def _timestamps(self, meta: dict[str, Any], groups: int) -> list[float]:
        """Seconds at the middle of each temporal patch (Qwen3-VL's frame labels)."""
        fps = float(meta.get("fps") or 24.0)
        indices = list(meta.get("frames_indices") or range(groups * self.temporal_patch))
        if hasattr(indices, "tolist"):
            indices = indices.tolist()
        while len(indices) % self.temporal_patch:
            indices.append(indices[-1])
        secs = [i / fps for i in indices]
        tp = self.temporal_patch
        return [(secs[i] + secs[i + tp - 1]) / 2 for i in range(0, len(secs), tp)][:groups]

    # -- text ------------------------------------------------------------------
    def render(self, prompt: Prompt, *, expand_images: bool = True) -> str:
        """The chat template's text with each vision placeholder expanded to its tokens (images
        may stay one placeholder each: ``expand_image_ids`` expands them after tokenizing)."""
        text = self.text.render(prompt.messages)
        for part in prompt.images if expand_images else ():
            text = text.replace(self.image_token, "\x00IMG\x00" * self._tokens(part), 1)
        wrapped = self.vision_start + self.video_token + self.vision_end
        for part in prompt.videos:
            t, h, w = (int(x) for x in part.grid_thw)
            per_frame = h * w // self.merge_length
            frame = self.vision_start + "\x00VID\x00" * per_frame + self.vision_end
            expansion = "".join(f"<{part.timestamps[i]:.1f} seconds>" + frame for i in range(t))
            # transformers 4.57 (the reference) replaces the template's own start/end pair.
            if wrapped in text:
                text = text.replace(wrapped, expansion, 1)
            else:
                text = text.replace(self.video_token, expansion, 1)
        return text.replace("\x00IMG\x00", self.image_token).replace("\x00VID\x00", self.video_token)

    def _tokens(self, part: VisionPart) -> int:
        return int(part.grid_thw.prod()) // self.merge_length

    def expand_image_ids(self, ids: list[int], images: list[VisionPart]) -> list[int]:
        """Each image's placeholder id repeated to its token count. The placeholder is an added
        token, so the text around it tokenizes the same whether it appears once or n times:
        these are the ids of the expanded text, without tokenizing hundreds of placeholders."""
        if not images:
            return ids
        counts = iter([self._tokens(p) for p in images])
        out: list[int] = []
        start = 0
        for at, token in enumerate(ids):
            if token == self.image_token_id:
                out += ids[start:at]
                out += [token] * next(counts)
                start = at + 1
        return out + ids[start:]

    def finish(self, prompts: list[Prompt], truncate: str = "end") -> list[Encoded | InputError]:
        """Render, tokenize in one batch call, and truncate (or refuse: ``TextEncoder.truncate``);
        per-prompt errors stay per prompt."""
        ids = self.text.tokenize([self.render(p, expand_images=False) for p in prompts])
        out: list[Encoded | InputError] = []
        for p, seq in zip(prompts, ids, strict=True):
            if isinstance(seq, InputError):
                out.append(seq)
                continue
            try:
                seq = self.expand_image_ids(seq, p.images)
                kept = self.text.truncate(seq, truncate)
                out.append(Encoded(kept, list(p.images), list(p.videos), len(seq) - len(kept)))
            except InputError as exc:
                out.append(exc)
        return out

    # -- the two tasks ---------------------------------------------------------
    def embedding_prompt(self, item: DecodedItem) -> Prompt:
        return embedding_prompt(item, self.settings.default_instruction)

    def rerank_prompt(self, query: DecodedItem, document: DecodedItem, instruction: str | None) -> Prompt:
        return rerank_prompt(query, document, instruction, self.settings.rerank_instruction)


def collate(batch: list[Encoded], pad_id: int, image_token_id: int, video_token_id: int,
            device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded model inputs of a batch, and the index of each row's last real token."""
    width = max(e.length for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : e.length] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[row, : e.length] = 1
    inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
    images = [p for e in batch for p in e.images]
    videos = [p for e in batch for p in e.videos]
    if images or videos:
        types = torch.zeros_like(ids, dtype=torch.int)
        types[ids == image_token_id] = 1
        types[ids == video_token_id] = 2
        inputs["mm_token_type_ids"] = types
    if images:
        inputs["pixel_values"] = torch.cat([p.pixel_values for p in images])
        inputs["image_grid_thw"] = torch.stack([p.grid_thw for p in images])
    if videos:
        inputs["pixel_values_videos"] = torch.cat([p.pixel_values for p in videos])
        inputs["video_grid_thw"] = torch.stack([p.grid_thw for p in videos])
    last = torch.tensor([e.length - 1 for e in batch], dtype=torch.long)
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}, last.to(device)
