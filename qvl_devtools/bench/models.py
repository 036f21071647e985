"""The model a benchmark runs: the tiny checkpoint or random weights at the 2B shape."""

from __future__ import annotations

from pathlib import Path

import torch

from qvl_devtools.tiny_model import build_checkpoint, build_model, build_processor
from vectorizer_service.core.settings import Settings
from vectorizer_service.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resolve_attention,
    resolve_device,
    wrap_model,
)

TINY_DIR = Path(".cache") / "tiny-qwen3-vl"


def bench_settings(args: object) -> Settings:
    device = getattr(args, "device", None) or "auto"
    return Settings.load(getattr(args, "settings", None), device=device, dtype=getattr(args, "dtype", None),
                         batch_tokens=getattr(args, "batch_tokens", None))


def bench_checkpoint(shape: str, settings: Settings, *, model: str | None = None) -> Checkpoint:
    """Both tasks read one full model (with its score head)."""
    if model:
        return load_checkpoint(model, settings, with_score_head=True)
    if shape == "tiny":
        return load_checkpoint(str(build_checkpoint(TINY_DIR)), settings, with_score_head=True)
    device = resolve_device(settings)
    dtype = torch.bfloat16 if device.type == "cuda" and settings.dtype == "auto" else (
        torch.float32 if settings.dtype == "auto" else getattr(torch, settings.dtype))
    processor = build_processor()
    full = build_model(shape, processor, dtype=dtype, device=device)
    full.set_attn_implementation(resolve_attention(settings, device))
    return wrap_model(f"random:{shape}", full, processor, device=device, with_score_head=True)
