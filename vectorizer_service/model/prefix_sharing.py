"""Shared-prefix forward passes: a prefix common to every row of a batch is computed once.

Reranking pairs of one query share the system prompt, the instruction and the whole query
(often most of the sequence); embedding items share the system prompt. Causal attention makes
the prefix's keys and values independent of what follows, so computing them once and letting
each row's suffix attend to them gives the same result as the full forward pass.

A prefix never cuts through an image or a video, and the media inside it must be the very same
decoded parts in every row (a query decoded once), not merely the same number of tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vectorizer_service.model.preprocessing import Encoded, VisionPart


@dataclass
class Span:
    start: int
    end: int
    part: VisionPart


def vision_spans(enc: Encoded, image_token_id: int, video_token_id: int, merge_length: int) -> list[Span]:
    """Token ranges of each image and video of a sequence, in token order."""
    if not enc.images and not enc.videos:
        return []
    ids = torch.tensor(enc.input_ids)
    spans = []
    for parts, token in ((enc.images, image_token_id), (enc.videos, video_token_id)):
        positions = (ids == token).nonzero().flatten().tolist()
        cursor = 0
        for part in parts:
            n = int(part.grid_thw.prod()) // merge_length
            chunk = positions[cursor:cursor + n]
            spans.append(Span(chunk[0], chunk[-1] + 1, part))
            cursor += n
    return sorted(spans, key=lambda s: s.start)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(limit, len(a), len(b))
    i = 0
    # Compare in chunks: most of a shared prefix matches wholesale.
    step = 64
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix(batch: Sequence[Encoded], spans: Sequence[list[Span]]) -> int:
    """Length of the prefix every row shares, leaving each row at least one token of its own."""
    first = batch[0].input_ids
    n = min(e.length for e in batch) - 1
    for e in batch[1:]:
        n = _common_prefix(first, e.input_ids, n)
        if n == 0:
            return 0
    for k, span in enumerate(spans[0]):
        if span.start >= n:
            break
        same_everywhere = all(len(s) > k and s[k].part is span.part for s in spans[1:])
        if span.end > n or not same_everywhere:
            return span.start
    return n


def _rope_positions(model: Any, ids: torch.Tensor, spans: Sequence[list[Span]], offset: torch.Tensor | int,
                    image_token_id: int, video_token_id: int, mask: torch.Tensor | None) -> torch.Tensor:
    """M-RoPE positions (3, rows, len) of token rows, shifted to start after ``offset``."""
    parts = [s.part for row in spans for s in row]
    if not parts:
        pos = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1).expand(3, ids.shape[0], -1)
        return pos + offset
    types = torch.zeros_like(ids, dtype=torch.int)
    types[ids == image_token_id] = 1
    types[ids == video_token_id] = 2
    images = [p.grid_thw for p in parts if p.kind == "image"]
    videos = [p.grid_thw for p in parts if p.kind == "video"]
    pos, _ = model.get_rope_index(
        ids, types,
        image_grid_thw=torch.stack(images).to(ids.device) if images else None,
        video_grid_thw=torch.stack(videos).to(ids.device) if videos else None,
        attention_mask=mask,
    )
    return pos + offset


def _vision_inputs(parts: list[VisionPart], device: torch.device) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for kind, values, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):
        chosen = [p for p in parts if p.kind == kind]
        if chosen:
            out[values] = torch.cat([p.pixel_values for p in chosen]).to(device)
            out[grid] = torch.stack([p.grid_thw for p in chosen]).to(device)
    return out


def forward_with_prefix(model: Any, batch: Sequence[Encoded], spans: Sequence[list[Span]], prefix: int,
                        pad_id: int, image_token_id: int, video_token_id: int,
                        device: torch.device) -> torch.Tensor:
    """Final hidden state at each row's last token, the shared prefix computed once."""
    head = torch.tensor([batch[0].input_ids[:prefix]], dtype=torch.long, device=device)
    head_spans = [s for s in spans[0] if s.end <= prefix]
    head_pos = _rope_positions(model, head, [head_spans], 0, image_token_id, video_token_id, None)
    out = model(input_ids=head, position_ids=head_pos, use_cache=True,
                **_vision_inputs([s.part for s in head_spans], device))
    cache = out.past_key_values
    next_pos = head_pos.max() + 1

    width = max(e.length for e in batch) - prefix
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : e.length - prefix] = torch.tensor(e.input_ids[prefix:])
        mask[row, : e.length - prefix] = 1
    ids, mask = ids.to(device), mask.to(device)
    tails = [[Span(s.start - prefix, s.end - prefix, s.part) for s in row if s.start >= prefix] for row in spans]
    pos = _rope_positions(model, ids, tails, next_pos, image_token_id, video_token_id, mask)
    rows_cache = copy.deepcopy(cache) if len(batch) > 1 else cache
    if len(batch) > 1:
        rows_cache.batch_repeat_interleave(len(batch))
    # Right padding: pads follow each row's real tokens, which causal attention never lets them see.
    hidden = model(input_ids=ids, position_ids=pos, past_key_values=rows_cache, use_cache=True,
                   **_vision_inputs([s.part for row in tails for s in row], device)).last_hidden_state
    last = torch.tensor([e.length - prefix - 1 for e in batch], device=device)
    return hidden[torch.arange(len(batch), device=device), last].float()
