"""The baseline of the runtime benchmarks: inputs processed the way the reference code does.

Embedding: fixed batches of 32 in arrival order, the whole batch through the HF processor with
padding to the longest row. Reranking: one pair at a time. Same model, same weights, same
decoded media as the measured path; only the pipeline around the model differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from qwen_vl_utils import process_vision_info

from vectorizer_service.core.prompts import RERANK_SYSTEM, embedding_instruction
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import Checkpoint
from vectorizer_service.model.media import DecodedVideo, decode_image, decode_video

REFERENCE_BATCH = 32


class ReferenceStyle:
    def __init__(self, ckpt: Checkpoint, settings: Settings) -> None:
        self.ckpt = ckpt
        self.settings = settings
        self.processor = ckpt.processor

    # The reference hands the processor PIL images and frame lists with its pixel bounds.
    def _media(self, images: Sequence[bytes], videos: Sequence[bytes]) -> list[dict[str, Any]]:
        s = self.settings
        content: list[dict[str, Any]] = []
        for v in videos:
            decoded: DecodedVideo = decode_video(v, s)
            frames = decoded.frames
            if isinstance(frames, torch.Tensor):
                frames = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
            content.append({"type": "video", "video": frames, "total_pixels": s.video_total_pixels})
        for i in images:
            content.append({"type": "image", "image": decode_image(i, s),
                            "min_pixels": s.image_min_pixels, "max_pixels": s.image_max_pixels})
        return content

    def _side(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        content = self._media(item.get("images", []), item.get("videos", []))
        content += [{"type": "text", "text": t} for t in item.get("texts", [])]
        return content or [{"type": "text", "text": "NULL"}]

    def _inputs(self, conversations: list[list[dict[str, Any]]], padding: bool) -> dict[str, torch.Tensor]:
        text = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        images, videos, video_kwargs = process_vision_info(
            conversations, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True)
        metadata = None
        if videos is not None:
            videos, metadata = (list(x) for x in zip(*videos, strict=True))
        inputs = self.processor(text=text, images=images, videos=videos, video_metadata=metadata,
                                padding=padding, padding_side="right", do_resize=False, return_tensors="pt",
                                **video_kwargs)
        return {k: v.to(self.ckpt.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def embed(self, items: Sequence[dict[str, Any]]) -> torch.Tensor:
        out = []
        for start in range(0, len(items), REFERENCE_BATCH):
            conversations = [
                [{"role": "system", "content": [{"type": "text", "text": embedding_instruction(
                    it.get("instruction"), self.settings.default_instruction)}]},
                 {"role": "user", "content": self._side(it)}]
                for it in items[start:start + REFERENCE_BATCH]
            ]
            inputs = self._inputs(conversations, padding=True)
            hidden = self.ckpt.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"]
            last = mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def rerank(self, query: dict[str, Any], documents: Sequence[dict[str, Any]],
               instruction: str | None = None) -> list[float]:
        assert self.ckpt.score_vector is not None
        scores = []
        for doc in documents:
            user = [{"type": "text", "text": "<Instruct>: " + (instruction or self.settings.rerank_instruction)},
                    {"type": "text", "text": "<Query>:"}, *self._side(query),
                    {"type": "text", "text": "\n<Document>:"}, *self._side(doc)]
            pair = [{"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
                    {"role": "user", "content": user}]
            inputs = self._inputs([pair], padding=False)
            h = self.ckpt.model(**inputs).last_hidden_state[:, -1].float()
            scores.append(float(torch.sigmoid(h @ self.ckpt.score_vector)[0]))
        return scores
