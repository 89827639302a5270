"""Attention over the fp16 KV cache: every ISA variant against a numpy reference
(softmax(q K^T / sqrt(d)) V over the same fp16 keys/values). Tolerance 1e-5 relative to
max|V|: the only differences are float summation order and exp rounding."""
import numpy as np
import pytest

from pylut import _core

ISAS = _core.isa_supported()


@pytest.fixture(autouse=True)
def restore_isa():
    before = _core.isa_active()
    yield
    _core.isa_set(before)


def reference(q, k, v):
    s = (k.astype(np.float64) @ q.astype(np.float64)) / np.sqrt(q.shape[0])
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v.astype(np.float64)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [64, 80, 100, 128, 256])
@pytest.mark.parametrize("length", [1, 7, 300, 2048, 8192])
def test_attention_matches_reference(isa, hd, length):
    rng = np.random.default_rng(hd * 7 + length)
    q = rng.standard_normal(hd).astype(np.float32)
    k = rng.standard_normal((length, hd)).astype(np.float16)
    v = rng.standard_normal((length, hd)).astype(np.float16)
    _core.isa_set(isa)
    out = _core.attention_f16(q, k, v, 1.0 / np.sqrt(hd))
    ref = reference(q, k, v)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(v.astype(np.float32)).max() * max(1, np.log2(length))


def test_attention_bad_arguments():
    q = np.zeros(64, np.float32)
    with pytest.raises(TypeError, match="float16"):
        _core.attention_f16(q, np.zeros((4, 64), np.float32), np.zeros((4, 64), np.float16), 1.0)
    with pytest.raises(ValueError, match="len"):
        _core.attention_f16(q, np.zeros((4, 32), np.float16), np.zeros((4, 32), np.float16), 1.0)
    with pytest.raises(ValueError, match="len"):
        _core.attention_f16(q, np.zeros((0, 64), np.float16), np.zeros((0, 64), np.float16), 1.0)
