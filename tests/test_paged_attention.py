"""Attention through a block table (the paged KV cache) against the same cache handed over
contiguously, on every ISA this machine runs: blocks shuffled among spare blocks of noise,
block lengths that do and do not divide the kernel's 16-position step, prefill (many
queries, causal) and decode (cache slices merged across threads), GQA, f16 / q8 / q4,
sliding windows, soft-capping and streaming heads beside paged full heads. The driver hands
each ISA's kernel one run per block and carries the running max/sum/accumulator across
runs, so only float summation order differs from the contiguous call."""
import numpy as np
import pytest

from pylut import _core

ISAS = _core.isa_supported()

pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def _case(seed, n, length, n_heads, n_kv, hd, kv_type):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    k = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    v = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    return q, k, v


def _agree(paged, flat, kv_type, v, hd):
    vmax = np.abs(_core.kv_decode(v, kv_type, hd)).max()
    assert np.abs(paged - flat).max() <= 2e-5 * vmax * np.log2(max(2, v.shape[1])), np.abs(paged - flat).max()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", ["f16", "q8", "q4"])
@pytest.mark.parametrize("n,length,n_heads,n_kv,hd,block_len,threads", [
    (1, 1, 8, 2, 64, 16, 1),        # one position, one partial block
    (1, 2048, 8, 2, 128, 16, 2),    # decode: cache slices across threads, merged
    (1, 777, 4, 4, 80, 48, 2),      # a block of three kernel steps, partial last block
    (1, 300, 8, 1, 64, 7, 1),       # blocks that cut the kernel's steps in pieces
    (40, 300, 8, 2, 64, 16, 2),     # prefill: query tiles over many blocks, causal
    (130, 200, 16, 2, 128, 32, 2),
])
def test_paged_matches_contiguous(isa, kv_type, n, length, n_heads, n_kv, hd, block_len, threads):
    q, k, v = _case(n * 7 + length, n, length, n_heads, n_kv, hd, kv_type)
    _core.isa_set(isa)
    pool = _core.ThreadPool(threads)
    flat = _core.attention(q, k, v, n_heads, n_kv, kv_type, pool=pool)
    paged = _core.attention(q, k, v, n_heads, n_kv, kv_type, pool=pool, block_len=block_len, seed=length)
    _agree(paged, flat, kv_type, v, hd)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("swa,softcap", [(50, 0.0), (0, 30.0), (64, 20.0)])
def test_paged_sliding_window_and_softcap(isa, swa, softcap):
    q, k, v = _case(swa + 3, 24, 400, 8, 2, 64, "f16")
    _core.isa_set(isa)
    pool = _core.ThreadPool(2)
    for n in (24, 1):  # a prefill tile, then a decode
        flat = _core.attention(q[:n], k, v, 8, 2, "f16", pool=pool, swa=swa, softcap=softcap)
        paged = _core.attention(q[:n], k, v, 8, 2, "f16", pool=pool, swa=swa, softcap=softcap, block_len=16)
        _agree(paged, flat, "f16", v, 64)


@pytest.mark.parametrize("isa", ISAS)
def test_paged_full_heads_beside_streaming_heads(isa):
    q, k, v = _case(5, 6, 180, 8, 4, 64, "q8")
    _core.isa_set(isa)
    kw = dict(pool=_core.ThreadPool(2), streaming=[True, False, False, True], sink=4, window=32)
    flat = _core.attention(q, k, v, 8, 4, "q8", **kw)
    paged = _core.attention(q, k, v, 8, 4, "q8", block_len=16, **kw)
    _agree(paged, flat, "q8", v, 64)


def test_scalar_twin_agrees_paged():
    """Every SIMD kernel against the scalar one, both through the block table."""
    q, k, v = _case(9, 17, 333, 8, 2, 128, "q4")
    outs = {}
    for isa in ISAS:
        _core.isa_set(isa)
        outs[isa] = _core.attention(q, k, v, 8, 2, "q4", pool=_core.ThreadPool(2), block_len=16)
    for isa, out in outs.items():
        _agree(out, outs["scalar"], "q4", v, 128)


def test_bad_block_len():
    q, k, v = _case(1, 1, 8, 2, 2, 64, "f16")
    with pytest.raises(ValueError, match="block_len"):
        _core.attention(q, k, v, 2, 2, block_len=-1)
