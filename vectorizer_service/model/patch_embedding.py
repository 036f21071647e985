"""Exact rewrites of slow stock kernels, applied to a loaded model.

The vision tower's patch embedding is a Conv3d whose kernel equals its stride and covers the
whole patch: one matrix product per patch. As a convolution it is slow on CPU (and not the
fastest path on GPU); as a matmul it computes the same sums.

Being a per-patch product, it can also run where an image is preprocessed, on the decoding
threads, instead of on the model thread after the batch's patches are concatenated: the model
thread then copies (and holds) a few values per patch instead of 1,536 (``PatchPreEmbedding``;
used on CPU, where the model thread is the pipeline's bottleneck).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _embed(module: Any, pixels: torch.Tensor) -> torch.Tensor:
    weight = module.proj.weight
    flat = pixels.reshape(-1, weight[0].numel()).to(weight.dtype)
    return nn.functional.linear(flat, weight.reshape(weight.shape[0], -1), module.proj.bias)


def _patch_embed_linear(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.rows_embedded:  # embedded during preprocessing (PatchPreEmbedding)
        return hidden_states
    return _embed(self, hidden_states)


def use_fast_paths(model: nn.Module) -> int:
    """Rewrite every patch embedding of ``model``; returns how many were rewritten."""
    count = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if (type(module).__name__.endswith("VisionPatchEmbed") and isinstance(proj, nn.Conv3d)
                and tuple(proj.kernel_size) == tuple(proj.stride) and proj.padding == (0, 0, 0)):
            module.forward = types.MethodType(_patch_embed_linear, module)
            module.rows_embedded = False
            count += 1
    return count


class PatchPreEmbedding:
    """Patch rows -> embedded rows on the decoding threads (call it), and the forward passes
    whose vision inputs were made that way (``active``). Bound to the module once, so a forward
    does not search the model's modules for it."""

    def __init__(self, module: Any) -> None:
        self.module = module

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return _embed(self.module, pixels)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.module.rows_embedded = True
        try:
            yield
        finally:
            self.module.rows_embedded = False


def patch_pre_embedding(model: nn.Module) -> PatchPreEmbedding | None:
    """None when the model has no single rewritten patch embedding."""
    found = [m for m in model.modules() if getattr(m.forward, "__func__", None) is _patch_embed_linear]
    return PatchPreEmbedding(found[0]) if len(found) == 1 else None
