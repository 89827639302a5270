"""The few-token int8 kernel (src/prefill/prefill_few_gfni.c: batched decode steps of 2..47
tokens on the AVX-512 VBMI tier): bit-identical to the portable twin for every plain 2..8-plane
layout and every two-level (K-quant) 2..6-plane one, at token counts on both sides of its 4-token
blocks, its 16-token passes and the hand-over to the many-token driver (PYLUT_I8_FEW_TO_GFNI: 18,
plain 2-bit 48), with one- and two-part activations, ragged rows and k, and threads splitting the
tiles. The twin's own accuracy against dequantize-then-matmul is tests/test_prefill.py's check()."""
import numpy as np
import pytest

import pylut
from pylut import _core

from test_prefill import check

pytestmark = [pytest.mark.usefixtures("restore_isa"),  # conftest.py
              pytest.mark.skipif("avx512vbmi" not in _core.isa_supported(),
                                 reason="the few-token kernel is the AVX-512 VBMI tier's")]
# both sides of the 4-token blocks, the 16-token passes and the hand-over at 18 (plain 2-bit: 48)
TOKENS = (1, 2, 3, 4, 5, 7, 8, 11, 15, 16, 17, 18, 19, 33, 47, 48)


def pair(q, x, split=False, n_threads=1):
    _core.isa_set("scalar")
    ref = pylut.gemm(q, x, n_threads=n_threads, int8=True, split=split)
    _core.isa_set("avx512vbmi")
    return ref, pylut.gemm(q, x, n_threads=n_threads, int8=True, split=split)


@pytest.mark.parametrize("mode,bits,group", [("sym", 4, 32), ("zp", 4, 64), ("sym", 3, 32), ("zp", 3, 16),
                                             ("zp", 2, 32), ("ternary", 2, 256), ("sym", 2, 128),
                                             ("sym", 5, 32), ("zp", 6, 16), ("zp", 7, 32), ("sym", 8, 32)])
def test_few_tokens_equal_the_twin(mode, bits, group):
    rng = np.random.default_rng(bits * 100 + group)
    # 200 rows: a ragged last tile; k 1000: a ragged last group and several 256-wide chunks
    q = pylut.quantize(rng.standard_normal((200, 1000)).astype(np.float32), bits=bits, group=group, mode=mode)
    for n in TOKENS:
        x = rng.standard_normal((n, 1000)).astype(np.float32)
        for split in (False, True):
            ref, got = pair(q, x, split)
            assert np.array_equal(got, ref), (n, split)


@pytest.mark.parametrize("bits,mode", [(4, "sym"), (2, "ternary")])
def test_few_tokens_within_the_rounding_bound(bits, mode):
    rng = np.random.default_rng(7)
    q = pylut.quantize(rng.standard_normal((70, 512)).astype(np.float32), bits=bits, group=32, mode=mode)
    for n in (2, 6):
        check(q, rng.standard_normal((n, 512)).astype(np.float32))


def test_few_tokens_threads_and_extremes():
    """Largest codes against +-max activations (int32 sums far from overflow, but every lane's
    byte at its extreme), zero rows of activations, and two threads sharing the tiles."""
    rng = np.random.default_rng(3)
    for bits in range(2, 9):
        codes = np.full((130, 512), (1 << bits) - 1, np.uint8)
        codes[::3] = 0
        s = rng.uniform(0.5, 2.0, (130, 512 // 32)).astype(np.float32)
        q = pylut.QMatrix.from_codes(codes, s, None, bits=bits, group=32, zero=None)
        x = np.where(rng.random((5, 512)) < 0.5, -1e3, 1e3).astype(np.float32)
        x[2] = 0.0
        ref, got = pair(q, x, n_threads=2)
        assert np.array_equal(got, ref), bits
        assert np.all(ref[2] == 0.0)



def k_quant(bits, group, sup, m, k, rng, bias=True, nibbles=False):
    """A K-quant-style two-level matrix: fp16 d (and dmin) per row and super-block of sup
    weights, int8 sub-values per group (Q4_K/Q5_K-style 0..63 with mins; without a bias array
    Q6_K-style signed sub-scales and the implied -zero * scale); k need not fill a super-block."""
    codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    n_super, n_groups = -(-k // sup), -(-k // sup) * sup // group
    d = rng.uniform(0.0005, 0.01, (m, n_super)).astype(np.float16).astype(np.float32)
    kw = dict(bits=bits, group=group, super_=sup)
    if not bias:
        sc = rng.integers(-32, 32, (m, n_groups)).astype(np.int8)
        return pylut.QMatrix.from_codes_super(codes, d, sc, zero=float(1 << (bits - 1)), **kw)
    top = 16 if nibbles else 64
    sc = rng.integers(0, top, (m, n_groups)).astype(np.int8)
    mn = -rng.integers(0, top, (m, n_groups)).astype(np.int8)
    dmin = rng.uniform(0.0005, 0.01, (m, n_super)).astype(np.float16).astype(np.float32)
    return pylut.QMatrix.from_codes_super(codes, d, sc, dmin, mn, nibbles=nibbles, **kw)


@pytest.mark.parametrize("bits,group,sup,bias,nibbles", [
    (4, 32, 256, True, False),    # Q4_K
    (5, 32, 256, True, False),    # Q5_K (a lone fifth plane)
    (6, 16, 256, False, False),   # Q6_K: signed sub-scales, zero 32, no bias array
    (3, 16, 256, False, False),   # Q3_K-style
    (2, 16, 256, True, True),     # Q2_K: nibble sub-values
    (6, 32, 96, True, False)])    # groups of a super-block split across 256-wide chunks
def test_few_tokens_two_level_equal_the_twin(bits, group, sup, bias, nibbles):
    rng = np.random.default_rng(bits * 10 + group + sup)
    # 200 rows: a ragged last tile; k 1000: a ragged last super-block, several chunks
    q = k_quant(bits, group, sup, 200, 1000, rng, bias, nibbles)
    for n in TOKENS:
        x = rng.standard_normal((n, 1000)).astype(np.float32)
        for split in (False, True):
            ref, got = pair(q, x, split, n_threads=2 if n % 2 else 1)
            assert np.array_equal(got, ref), (n, split)


def test_few_tokens_two_level_extremes():
    """Every 6-bit code at 63 (and rows of 0) against +-max activations, sub-scales at their
    int8 extremes: each plane's bit set in every lane, two threads sharing the tiles."""
    rng = np.random.default_rng(11)
    for bits in (5, 6):
        codes = np.full((130, 512), (1 << bits) - 1, np.uint8)
        codes[::3] = 0
        d = rng.uniform(0.5, 2.0, (130, 2)).astype(np.float16).astype(np.float32)
        sc = np.where(rng.random((130, 32)) < 0.5, -128, 127).astype(np.int8)
        q = pylut.QMatrix.from_codes_super(codes, d, sc, zero=float(1 << (bits - 1)), bits=bits, group=16,
                                           super_=256)
        x = np.where(rng.random((6, 512)) < 0.5, -1e3, 1e3).astype(np.float32)
        x[4] = 0.0
        ref, got = pair(q, x, n_threads=2)
        assert np.array_equal(got, ref), bits
        assert np.all(ref[4] == 0.0)


def test_few_tokens_two_level_within_the_rounding_bound():
    rng = np.random.default_rng(8)
    q = k_quant(6, 16, 256, 70, 512, rng, bias=False)
    check(q, rng.standard_normal((3, 512)).astype(np.float32))


def test_model_steps_take_int8_from_two_tokens():
    """The VBMI tier sends chunks of 2+ tokens of plain 2..8-bit and two-level 3..6-bit matrices
    to the int8 kernel (and one token to the tables); two-level 2-bit (Q2_K) from 32."""
    _core.isa_set("avx512vbmi")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    for bits in range(2, 9):
        q = pylut.quantize(w, bits=bits, group=32)
        assert not _core.i8_preferred(q, 1) and _core.i8_preferred(q, 2), bits
    for bits in (3, 4, 5, 6):
        q = k_quant(bits, 16, 256, 64, 256, rng)
        assert not _core.i8_preferred(q, 1) and _core.i8_preferred(q, 2), bits
    q2k = k_quant(2, 16, 256, 64, 256, rng, nibbles=True)
    assert not _core.i8_preferred(q2k, 31) and _core.i8_preferred(q2k, 32)
