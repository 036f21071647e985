"""Loading Qwen3-VL checkpoints (directory or hub id) with transformers' own model classes."""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoProcessor, Qwen3VLForConditionalGeneration, Qwen3VLModel
from transformers.utils import logging as hf_logging

from vectorizer_service.core.settings import Settings
from vectorizer_service.model.patch_embedding import use_fast_paths

log = logging.getLogger("qvl.model")
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@dataclass
class Checkpoint:
    """A loaded base model (vision tower + language model, no LM head) and its processor."""

    path: str
    model: Qwen3VLModel
    processor: Any
    device: torch.device
    dtype: torch.dtype
    attention: str
    hidden_size: int
    # W[yes] - W[no] of the output head; present when loaded for reranking.
    score_vector: torch.Tensor | None = None


def resolve_device(settings: Settings) -> torch.device:
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(settings.device)


def resolve_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_attention(settings: Settings, device: torch.device) -> str:
    if settings.attention != "auto":
        return settings.attention
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def checkpoint_hidden_size(path: str) -> int:
    """The language model's width, from the checkpoint's config alone (no weights are read)."""
    config = AutoConfig.from_pretrained(path)
    return int(getattr(config, "text_config", config).hidden_size)


_cache: dict[tuple[str, bool], Checkpoint] = {}
_cache_lock = threading.Lock()


def load_checkpoint(path: str, settings: Settings, *, with_score_head: bool = False) -> Checkpoint:
    """Load once per (path, head) in this process; embedder and reranker may share one copy."""
    key = (path, with_score_head)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        device = resolve_device(settings)
        dtype = resolve_dtype(settings, device)
        attention = resolve_attention(settings, device)
        log.info("loading checkpoint", extra={"path": path, "device": str(device), "dtype": str(dtype),
                                              "attention": attention})
        processor = AutoProcessor.from_pretrained(path)
        if with_score_head:
            model: Any = Qwen3VLForConditionalGeneration.from_pretrained(
                path, dtype=dtype, attn_implementation=attention)
        else:
            model = Qwen3VLModel.from_pretrained(path, dtype=dtype, attn_implementation=attention)
        ckpt = wrap_model(path, model, processor, device=device, with_score_head=with_score_head)
        # A reranker checkpoint serves embeddings too when the same path is asked for both.
        _cache[key] = ckpt
        if with_score_head:
            _cache.setdefault((path, False), ckpt)
        return ckpt


def wrap_model(path: str, model: Any, processor: Any, *, device: torch.device,
               with_score_head: bool) -> Checkpoint:
    """A ``Checkpoint`` from a loaded or freshly built model (full model when a score head is wanted)."""
    score_vector = None
    if with_score_head:
        vocab = processor.tokenizer.get_vocab()
        if "yes" not in vocab or "no" not in vocab:
            raise ValueError(f"{path}: the tokenizer has no 'yes'/'no' tokens; not a Qwen3-VL reranker")
        weight = model.lm_head.weight.detach()
        score_vector = (weight[vocab["yes"]] - weight[vocab["no"]]).float().clone()
        model = model.model  # the LM head is dropped where it is not tied to the embeddings
    model.to(device).eval()
    model.requires_grad_(False)
    use_fast_paths(model)
    return Checkpoint(
        path=path, model=model, processor=processor, device=device, dtype=next(model.parameters()).dtype,
        attention=str(model.config._attn_implementation),
        hidden_size=int(model.config.text_config.hidden_size),
        score_vector=score_vector.to(device) if score_vector is not None else None,
    )
