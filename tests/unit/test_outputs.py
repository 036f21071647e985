from __future__ import annotations

import base64

import numpy as np
import pytest

from vectorizer_service.core.errors import InputError
from vectorizer_service.core.vector_encoding import check_options, encode_vector, vector_json


def raw(seed: int = 0, n: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32) * 3


def test_matryoshka_keeps_first_values_renormalized() -> None:
    v = raw()
    out = encode_vector(v, dimensions=32)
    expected = v[:32] / np.linalg.norm(v[:32])
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert out.dimensions == 32 and abs(np.linalg.norm(out.values) - 1) < 1e-6


def test_unnormalized_output_is_the_raw_state() -> None:
    v = raw()
    np.testing.assert_array_equal(encode_vector(v, normalize=False).values, v)


def test_int8_roundtrip_and_scale() -> None:
    out = encode_vector(raw(1), encoding="int8")
    assert out.values.dtype == np.int8 and out.scale is not None
    assert np.abs(out.values).max() == 127
    full = encode_vector(raw(1))
    deq = out.to_float()
    assert float(deq @ full.values / np.linalg.norm(deq)) > 0.9995


def test_binary_packs_sign_bits_msb_first() -> None:
    v = np.array([1, -1, 2, -3, 0.5, -0.1, 0.2, 4, -1] + [1] * 23, dtype=np.float32)
    out = encode_vector(v, encoding="binary")
    assert out.values.dtype == np.uint8 and out.values.shape == (4,)
    assert out.values[0] == 0b10101011
    assert out.values[1] >> 7 == 0  # the 9th value is negative
    np.testing.assert_array_equal(out.to_float(), np.where(v / np.linalg.norm(v) > 0, 1.0, -1.0))


def test_float16() -> None:
    out = encode_vector(raw(2), encoding="float16")
    assert out.values.dtype == np.float16


def test_json_forms() -> None:
    assert "embedding" in vector_json(encode_vector(raw()))
    packed = vector_json(encode_vector(raw(), encoding="int8"))
    assert len(base64.b64decode(packed["embedding_b64"])) == 64 and "scale" in packed
    bits = vector_json(encode_vector(raw(), encoding="binary"))
    assert len(base64.b64decode(bits["embedding_b64"])) == 8 and "scale" not in bits


@pytest.mark.parametrize(("dims", "enc"), [(31, "float32"), (65, "float32"), (0, "float32"), (64, "int4")])
def test_bad_options_are_refused(dims: int, enc: str) -> None:
    with pytest.raises(InputError) as err:
        check_options(dims, enc, 64)
    assert ("dimensions" in str(err.value)) or ("encoding" in str(err.value))
