from __future__ import annotations

import torch

from vectorizer_service.fast_paths import use_fast_paths
from vectorizer_service.runtime import Models


def test_patch_embed_as_matmul_equals_the_convolution(models: Models) -> None:
    assert models.embedder is not None
    patch = models.embedder.ckpt.model.visual.patch_embed
    x = torch.randn(50, patch.proj.weight[0].numel())
    fast = patch(x)
    conv = patch.proj(x.view(-1, patch.in_channels, patch.temporal_patch_size, patch.patch_size,
                             patch.patch_size)).view(-1, patch.embed_dim)
    torch.testing.assert_close(fast, conv, rtol=1e-5, atol=1e-5)
    assert use_fast_paths(torch.nn.Linear(2, 2)) == 0
