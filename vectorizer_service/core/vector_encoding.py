"""Output stage: Matryoshka truncation, normalization and quantized encodings."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vectorizer_service.core.errors import InputError

Encoding = Literal["float32", "float16", "int8", "binary"]
ENCODINGS: tuple[str, ...] = ("float32", "float16", "int8", "binary")
MIN_DIMENSIONS = 32


@dataclass
class EncodedVector:
    """An embedding in its wire form: ``values`` (float32/float16/int8, or packed bits as uint8)."""

    values: np.ndarray
    encoding: str
    dimensions: int
    scale: float | None = None  # int8: value = q * scale
    cut: int = 0  # tokens truncation removed from the item's text (callers are told; 0: none)

    def to_float(self) -> np.ndarray:
        """Back to float32 (binary gives +1/-1 per dimension)."""
        if self.encoding == "int8":
            return self.values.astype(np.float32) * np.float32(self.scale or 1.0)
        if self.encoding == "binary":
            bits = np.unpackbits(self.values)[: self.dimensions]
            return np.where(bits == 1, 1.0, -1.0).astype(np.float32)
        return self.values.astype(np.float32)


def check_options(dimensions: int | None, encoding: str, hidden_size: int) -> None:
    if dimensions is not None and not MIN_DIMENSIONS <= dimensions <= hidden_size:
        raise InputError(f"dimensions must be between {MIN_DIMENSIONS} and {hidden_size}, got {dimensions}",
                         limit="dimensions")
    if encoding not in ENCODINGS:
        raise InputError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def encode_vector(raw: np.ndarray, *, dimensions: int | None = None, encoding: str = "float32",
                  normalize: bool = True) -> EncodedVector:
    """From a pooled hidden state to the requested form: first ``dimensions`` values, renormalized."""
    vec = np.asarray(raw, dtype=np.float32)
    if dimensions is not None:
        vec = vec[:dimensions]
    if normalize:
        norm = float(np.linalg.norm(vec))
        vec = vec / norm if norm > 0 else vec
    dims = int(vec.shape[0])
    if encoding == "float32":
        return EncodedVector(vec.astype(np.float32), encoding, dims)
    if encoding == "float16":
        return EncodedVector(vec.astype(np.float16), encoding, dims)
    if encoding == "int8":
        peak = float(np.abs(vec).max()) if dims else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        q = np.clip(np.rint(vec / scale), -127, 127).astype(np.int8)
        return EncodedVector(q, encoding, dims, scale=scale)
    if encoding == "binary":
        return EncodedVector(np.packbits(vec > 0), encoding, dims)
    raise InputError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def vector_json(vec: EncodedVector) -> dict[str, object]:
    """JSON form: float encodings as a list, int8 and binary packed as base64 (with int8's scale)."""
    if vec.encoding in ("float32", "float16"):
        return {"embedding": [round(float(x), 7) for x in vec.values]}
    out: dict[str, object] = {"embedding_b64": base64.b64encode(vec.values.tobytes()).decode("ascii")}
    if vec.scale is not None:
        out["scale"] = vec.scale
    return out
