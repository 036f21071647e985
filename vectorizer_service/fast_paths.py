"""Exact rewrites of slow stock kernels, applied to a loaded model.

The vision tower's patch embedding is a Conv3d whose kernel equals its stride and covers the
whole patch: one matrix product per patch. As a convolution it is slow on CPU (and not the
fastest path on GPU); as a matmul it computes the same sums.

Being a per-patch product, it can also run where an image is preprocessed, on the decoding
threads, instead of on the model thread after the batch's patches are concatenated: the model
thread then copies (and holds) a few values per patch instead of 1,536 (``embed_patches``;
used on CPU, where the model thread is the pipeline's bottleneck).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def _embed(module: Any, pixels: torch.Tensor) -> torch.Tensor:
    weight = module.proj.weight
    flat = pixels.reshape(-1, weight[0].numel()).to(weight.dtype)
    return nn.functional.linear(flat, weight.reshape(weight.shape[0], -1), module.proj.bias)


def _patch_embed_linear(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if self.rows_embedded:  # embedded during preprocessing (see embed_patches)
        return hidden_states
    return _embed(self, hidden_states)


def _patch_embeds(model: nn.Module) -> list[Any]:
    return [m for m in model.modules() if getattr(m, "forward", None) is not None
            and getattr(m.forward, "__func__", None) is _patch_embed_linear]


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


def embed_patches(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Patch rows -> embedded rows, for preprocessing; None when the model has no single
    rewritten patch embedding. Inputs made with it must go through ``patches_embedded``."""
    found = _patch_embeds(model)
    if len(found) != 1:
        return None
    module = found[0]

    @torch.inference_mode()
    def embed(pixels: torch.Tensor) -> torch.Tensor:
        return _embed(module, pixels)

    return embed


@contextlib.contextmanager
def patches_embedded(model: nn.Module) -> Iterator[None]:
    """A forward pass whose vision inputs were made with ``embed_patches``."""
    found = _patch_embeds(model)
    for module in found:
        module.rows_embedded = True
    try:
        yield
    finally:
        for module in found:
            module.rows_embedded = False
