"""Attention against a numpy reference, softmax(q K^T / sqrt(d) + causal mask) V in float64
over the same (decoded) cache: the tiled online-softmax kernel on every ISA this machine runs,
head sizes 64..256, GQA ratios 1..8, prefill and decode, cache lengths 1..8192, f16 / int8 /
4-bit caches, 1 and 2 threads (decode slices merged). Tolerance: 2e-5 x max|V| x log2(len),
float summation order and the vector exp2's < 2e-7 relative error being the only differences.
The per-head three-pass kernel (attention_f16, the naive reference the benchmark compares
against) is checked the same way."""
import numpy as np
import pytest

from pylut import _core

ISAS = _core.isa_supported()


pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def reference(q, kf, vf, n_heads, pos0):
    """q [n, H*hd]; kf, vf [KV, len, hd] float; query t sees positions 0..pos0+t."""
    n_kv, _, hd = kf.shape
    g = n_heads // n_kv
    out = np.zeros(q.shape, np.float64)
    for t in range(q.shape[0]):
        end = pos0 + t + 1
        for h in range(n_heads):
            s = kf[h // g, :end].astype(np.float64) @ q[t, h * hd:(h + 1) * hd].astype(np.float64) / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[t, h * hd:(h + 1) * hd] = (p / p.sum()) @ vf[h // g, :end].astype(np.float64)
    return out


def run_case(isa, kv_type, n, length, n_heads, n_kv, hd, threads, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    k = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    v = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    kf, vf = _core.kv_decode(k, kv_type, hd), _core.kv_decode(v, kv_type, hd)
    _core.isa_set(isa)
    out = _core.attention(q, k, v, n_heads, n_kv, kv_type, pool=_core.ThreadPool(threads))
    ref = reference(q, kf, vf, n_heads, length - n)
    tol = 2e-5 * np.abs(vf).max() * max(1.0, np.log2(length))
    assert np.abs(out - ref).max() <= tol, (np.abs(out - ref).max(), tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [64, 80, 100, 128, 256])
# every type converts in registers for decode; the quantized ones skip 8192 (the long-run
# accumulation is the same code as f16's, and it is the slow case under qemu)
@pytest.mark.parametrize("kv_type,length", [(t, n) for t in ("f16", "q8", "q4") for n in (1, 7, 300, 2048, 8192)
                                             if t == "f16" or n < 8192])
def test_decode_every_head_size_and_length(isa, kv_type, hd, length):
    run_case(isa, kv_type, 1, length, 8, 2, hd, 2, hd * 7 + length)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", ["f16", "q8", "q4"])
@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (8, 2), (16, 2), (9, 3), (8, 1)])
def test_gqa_ratios_and_cache_types(isa, kv_type, n_heads, n_kv):
    run_case(isa, kv_type, 1, 1500, n_heads, n_kv, 64, 2, n_heads * 31 + n_kv)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", ["f16", "q4"])
@pytest.mark.parametrize("n,length,hd", [(5, 5, 64), (40, 300, 80), (130, 200, 128), (70, 70, 100), (33, 1000, 256)])
def test_prefill_causal(isa, kv_type, n, length, hd):
    """Many queries at once: query tiles, the causal limit inside a block and across tiles."""
    run_case(isa, kv_type, n, length, 8, 2, hd, 2, n * 3 + length)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_thread_counts_and_cache_slices_agree(threads):
    """Decode with few kv heads slices the cache per thread; any split gives the same answer."""
    run_case(_core.isa_active(), "q8", 1, 8192, 3, 1, 128, threads, 5)
    run_case(_core.isa_active(), "f16", 2, 4000, 6, 2, 64, threads, 6)


@pytest.mark.parametrize("kv_type,limit", [("q8", 0.01), ("q4", 0.15)])
def test_cache_encoding_error(kv_type, limit):
    """Round trip of the quantized rows: relative RMS error per type (int8 ~0.5 %, 4-bit ~9 %)."""
    x = np.random.default_rng(1).standard_normal((64, 100)).astype(np.float32)
    back = _core.kv_decode(_core.kv_encode(x, kv_type), kv_type, 100)
    rms = np.sqrt(np.mean((back - x) ** 2) / np.mean(x ** 2))
    assert rms < limit
    f16 = _core.kv_decode(_core.kv_encode(x, "f16"), "f16", 100)
    assert np.array_equal(f16, x.astype(np.float16).astype(np.float32))


def test_cache_bytes_per_row():
    assert _core.kv_row_bytes("f16", 128) == 256
    assert _core.kv_row_bytes("q8", 128) == 128 + 8 and _core.kv_row_bytes("q4", 128) == 64 + 8
    assert _core.kv_row_bytes("q4", 100) == 50 + 8  # blocks 32, 32, 32, 4


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("hd", [64, 100, 256])
def test_naive_per_head_kernel(isa, hd):
    rng = np.random.default_rng(hd)
    q = rng.standard_normal(hd).astype(np.float32)
    k = rng.standard_normal((2048, hd)).astype(np.float16)
    v = rng.standard_normal((2048, hd)).astype(np.float16)
    _core.isa_set(isa)
    out = _core.attention_f16(q, k, v, 1.0 / np.sqrt(hd))
    ref = reference(q[None], k[None], v[None], 1, 2047)[0]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(v.astype(np.float32)).max() * 11


def test_bad_arguments():
    q = np.zeros((1, 128), np.float32)
    k = _core.kv_encode(np.zeros((2, 4, 64), np.float32), "f16")
    with pytest.raises(ValueError, match="kv_type"):
        _core.attention(q, k, k, 2, 2, "q3")
    with pytest.raises(ValueError, match=r"k and v must be"):
        _core.attention(q, k, k[:, :2].copy(), 2, 2)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        _core.attention(np.zeros((1, 192), np.float32), _core.kv_encode(np.zeros((2, 4, 64), np.float32), "f16"),
                        _core.kv_encode(np.zeros((2, 4, 64), np.float32), "f16"), 3, 2)
    with pytest.raises(ValueError, match="run past"):
        _core.attention(np.zeros((5, 128), np.float32), k, k, 2, 2)
    with pytest.raises(ValueError, match="run past"):
        _core.attention(q, k, k, 2, 2, pos0=4)
    with pytest.raises(ValueError, match="head size"):
        _core.kv_encode(np.zeros((3, 63), np.float32), "q8")
    with pytest.raises(ValueError, match="bytes"):
        _core.kv_decode(np.zeros((3, 10), np.uint8), "q8", 64)
    with pytest.raises(TypeError, match="float16"):
        _core.attention_f16(q[0, :64], np.zeros((4, 64), np.float32), np.zeros((4, 64), np.float16), 1.0)
    with pytest.raises(ValueError, match="len"):
        _core.attention_f16(q[0, :64], np.zeros((0, 64), np.float16), np.zeros((0, 64), np.float16), 1.0)
