from __future__ import annotations

import torch

from vectorizer_service.model.patch_embedding import use_fast_paths
from vectorizer_service.model.served_models import Models


def test_patch_embed_as_matmul_equals_the_convolution(models: Models) -> None:
    assert models.embedder is not None
    patch = models.embedder.ckpt.model.visual.patch_embed
    x = torch.randn(50, patch.proj.weight[0].numel())
    fast = patch(x)
    conv = patch.proj(x.view(-1, patch.in_channels, patch.temporal_patch_size, patch.patch_size,
                             patch.patch_size)).view(-1, patch.embed_dim)
    torch.testing.assert_close(fast, conv, rtol=1e-5, atol=1e-5)
    assert use_fast_paths(torch.nn.Linear(2, 2)) == 0


def test_patches_embedded_while_preprocessing_give_the_same_vectors(models: Models) -> None:
    """On CPU the decoding threads embed patch rows; the model then takes them as they are."""
    from tests.media_factory import image_bytes
    from vectorizer_service.core.items import Item
    from vectorizer_service.model.patch_embedding import patch_pre_embedding

    embedder = models.embedder
    assert embedder is not None and embedder.pre.embed_patches is not None
    model = embedder.ckpt.model
    [enc] = embedder.prepare([Item(images=[image_bytes("PNG", (96, 64))], texts=["a caption"])])
    rows = enc.images[0].pixel_values  # type: ignore[union-attr]
    assert rows.shape[1] == model.visual.patch_embed.embed_dim  # embedded, not 1,536 pixel values
    pixels = torch.randn(8, model.visual.patch_embed.proj.weight[0].numel())
    embed = patch_pre_embedding(model)
    assert embed is not None
    with embed.active():
        passed = model.visual.patch_embed(embed(pixels))
    torch.testing.assert_close(passed, model.visual.patch_embed(pixels))
    assert not model.visual.patch_embed.rows_embedded  # the flag lives only inside the forward
