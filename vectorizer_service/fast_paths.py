"""Exact rewrites of slow stock kernels, applied to a loaded model.

The vision tower's patch embedding is a Conv3d whose kernel equals its stride and covers the
whole patch: one matrix product per patch. As a convolution it is slow on CPU (and not the
fastest path on GPU); as a matmul it computes the same sums.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


def _patch_embed_linear(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight
    flat = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
    return nn.functional.linear(flat, weight.reshape(weight.shape[0], -1), self.proj.bias)


def use_fast_paths(model: nn.Module) -> int:
    """Rewrite every patch embedding of ``model``; returns how many were rewritten."""
    count = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if (type(module).__name__.endswith("VisionPatchEmbed") and isinstance(proj, nn.Conv3d)
                and tuple(proj.kernel_size) == tuple(proj.stride) and proj.padding == (0, 0, 0)):
            module.forward = types.MethodType(_patch_embed_linear, module)
            count += 1
    return count
