"""Embedding types of the dialects onto ``core.vector_encoding``, and how they travel.

| dialect type | qvl encoding | values |
| --- | --- | --- |
| ``float`` | float32 | floats |
| ``int8`` | int8 | -127..127 (qvl's symmetric per-vector scale; the scale is not sent: cosine ignores it) |
| ``uint8`` | int8 | the int8 values + 128 (1..255) |
| ``binary`` | binary | the sign bits packed 8 to a byte, each byte - 128 (signed, "offset binary") |
| ``ubinary`` | binary | the packed bytes as they are (0..255) |

``base64`` travel (OpenAI ``encoding_format``, Jina/Cohere ``base64``) is the little-endian bytes
of those values: float32 for ``float``, one byte each for the others.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from vectorizer_service.api.dialects.errors import FieldError
from vectorizer_service.core.vector_encoding import EncodedVector, encode_vector

DTYPES = ("float", "int8", "uint8", "binary", "ubinary")
_ENCODING = {"float": "float32", "int8": "int8", "uint8": "int8", "binary": "binary", "ubinary": "binary"}


def check_dtype(value: str, param: str) -> str:
    if value not in DTYPES:
        raise FieldError(param, f"unknown embedding type {value!r}; expected one of {', '.join(DTYPES)}")
    return value


def dtype_values(vec: EncodedVector, dtype: str) -> np.ndarray:
    """A float32 vector (as the dispatcher gives it) in a dialect's type."""
    if dtype == "float":
        return vec.values.astype(np.float32, copy=False)
    encoded = encode_vector(vec.values, encoding=_ENCODING[dtype], normalize=False)
    if dtype == "int8":
        return encoded.values
    if dtype == "uint8":
        return (encoded.values.astype(np.int16) + 128).astype(np.uint8)
    if dtype == "binary":
        return (encoded.values.astype(np.int16) - 128).astype(np.int8)
    return encoded.values  # ubinary: packed bits as uint8


def as_json(values: np.ndarray) -> list[Any]:
    return values.tolist()


def as_base64(values: np.ndarray) -> str:
    return base64.b64encode(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def render(vec: EncodedVector, dtype: str, in_base64: bool) -> list[Any] | str:
    values = dtype_values(vec, dtype)
    return as_base64(values) if in_base64 else as_json(values)
