"""The identity of what a model computes (issue 23): a fingerprint of its checkpoint's files and of the
settings that change its output, so that vectors of two models are never mixed unawares.

The model process hashes the files (``model.checkpoint_digest``) and combines the digest with the
settings here; the request process derives each profile's fingerprint, checks the fingerprint a call
pins (``EmbedOptions.fingerprint``, a dialect's ``model@fingerprint``, a ``/fingerprint/{f}`` URL)
and answers with the fingerprint of the model that computed the answer.

Which settings count (docs/model-upgrades.md says why for each):

- counted: the instructions (the prompt is part of the input), the image pixel bounds and the video
  frame settings (they decide what the model sees), the max length (it cuts long inputs), and the
  pipeline version below (how qvl builds inputs and pools);
- not counted: dtype, device and attention kernel (numerics only: bf16 and fp32 vectors of one input
  agree to cos 0.9999 on the tiny checkpoint, inside what batching moves a bf16 vector, and one
  collection must be servable by CPU fp32 and GPU bf16/fp16 replicas alike), batching and prefix
  sharing (the same computation), and the refusal limits (they refuse, never change a vector).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from vectorizer_service.core.errors import ErrorReason, InputError, QvlError
from vectorizer_service.core.settings import Profile, Settings

# Raised when qvl changes how it turns an item into a vector (prompt layout, pooling): every
# fingerprint changes with it, so stored vectors are never joined by vectors computed another way.
PIPELINE_VERSION = 1
FINGERPRINT = re.compile(r"[0-9a-f]{16}")
FINGERPRINT_KEY = "qvl-model-fingerprint"  # gRPC metadata key and HTTP header of every answer
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

_MEDIA_SETTINGS = ("image_min_pixels", "image_max_pixels", "video_fps", "video_max_frames", "video_total_pixels")
COUNTED_SETTINGS: dict[str, tuple[str, ...]] = {
    "embed": ("embed_max_length", "default_instruction", "query_instruction", *_MEDIA_SETTINGS),
    "rerank": ("rerank_max_length", "rerank_instruction", *_MEDIA_SETTINGS),
}


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def counted_settings(settings: Settings, task: str) -> dict[str, Any]:
    """The settings that change ``task``'s output, by name."""
    return {name: getattr(settings, name) for name in COUNTED_SETTINGS[task]}


def model_fingerprint(checkpoint_digest: str, settings: Settings, task: str) -> str:
    """The fingerprint of ``task`` served from a checkpoint whose files hash to ``checkpoint_digest``."""
    return _digest({"pipeline": PIPELINE_VERSION, "task": task, "checkpoint": checkpoint_digest,
                    "settings": counted_settings(settings, task)})


def profile_fingerprint(model: str, profile: Profile) -> str:
    """A profile's embedding fingerprint: the model's, and the profile's instructions and size (its
    rerank instruction changes no vector)."""
    return _digest({"model": model, "profile": profile.model_dump(exclude={"rerank_instruction"})})


def check_fingerprint(value: str, what: str) -> str:
    """A pinned fingerprint as given, or bad input naming where it came from."""
    if not FINGERPRINT.fullmatch(value):
        raise InputError(f"{what}: {value!r} is not a qvl model fingerprint (16 hex digits, as /v1/info lists them)")
    return value


def split_model_name(model: str | None) -> tuple[str | None, str | None]:
    """A dialect's ``model`` field: ``name`` or ``name@fingerprint`` (the name: a profile, or anything)."""
    if model is None or "@" not in model:
        return model, None
    name, _, pinned = model.rpartition("@")
    return name, check_fingerprint(pinned, "model")


def public_model_name(name: str) -> str:
    """The name a client may see: a hub id as it is, a local checkpoint by its last path component
    (where the service keeps its files is nobody's business; /v1/info is open to every caller)."""
    if HUB_ID.match(name) and not os.path.exists(name):
        return name
    return re.split(r"[\\/]", name.rstrip("/\\"))[-1]


class ModelMismatchError(QvlError):
    """A call pinned another model's fingerprint, or the model changed under an open stream (gRPC
    FAILED_PRECONDITION, HTTP 409): retrying here fails again."""

    code = "FAILED_PRECONDITION"
    http_status = 409
    error_reason = ErrorReason.MODEL_MISMATCH

    @classmethod
    def pinned(cls, pinned: str, served: str, what: str) -> ModelMismatchError:
        return cls(f"the request pins model fingerprint {pinned}, but this service's {what} has fingerprint "
                   f"{served}: their vectors are not comparable. Serve the checkpoint and settings the stored "
                   f"vectors were made with, or move them to this model (docs/model-upgrades.md)")

    @classmethod
    def changed(cls, before: str, served: str, what: str) -> ModelMismatchError:
        return cls(f"the service's {what} changed while this stream was open (fingerprint {before}, now "
                   f"{served}): its earlier items were embedded by the other model; open a new stream")
