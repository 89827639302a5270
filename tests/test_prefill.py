"""The int8-activation prefill GEMM (pylut.h "Prefill through int8"): the portable twin within
the int8 rounding bound of dequantize-then-matmul, every ISA bit-identical to the twin, and the
model's choice between it and the table lookups.

Tolerance: x is rounded to int8 per scale group g with step xs_g = max|x_g| / 127, each value
off by at most xs_g / 2, so |y - x W^T| <= sum_g xs_g / 2 * sum_{j in g} |W_rj| (the
integer dot products are exact; the float epilogue adds a few ulps, 1e-5 * max|y|)."""
import numpy as np
import pytest

import pylut
from pylut import _core

from test_kernels import ISAS, two_level_pair

pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def run(q, x, isa, n_threads=1, split=False):
    _core.isa_set(isa)
    return pylut.gemm(q, x, n_threads=n_threads, int8=True, split=split)


def rounding_bound(q, x):
    w = np.abs(q.dequantize().astype(np.float64))
    g, k = q.group, q.shape[1]
    k_pad = -(-k // g) * g
    xp = np.zeros((x.shape[0], k_pad))
    xp[:, :k] = x
    wp = np.zeros((w.shape[0], k_pad))
    wp[:, :k] = w
    xs = np.abs(xp.reshape(len(x), -1, g)).max(2) / 127            # [n, groups]
    wsum = wp.reshape(len(w), -1, g).sum(2)                         # [m, groups]
    return 0.5 * xs @ wsum.T


def check(q, x):
    ref = run(q, x, "scalar")
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    assert np.all(np.abs(ref - exact) <= rounding_bound(q, x) + 1e-5 * np.abs(exact).max())
    rms = np.sqrt(np.mean((ref - exact) ** 2) / np.mean(exact ** 2))
    assert rms < 0.02, rms  # measured ~0.3-0.6 %: a systematic error cannot hide in the bound
    for isa in ISAS:
        assert np.array_equal(run(q, x, isa), ref), isa


# (mode, bits): every plane count, with and without a bias array
CASES = [("sym", 1), ("zp", 2), ("sym", 3), ("zp", 3), ("sym", 4), ("zp", 4), ("sym", 5),
         ("zp", 6), ("sym", 7), ("sym", 8), ("ternary", 2)]
# (m, k, group, n): ragged rows and k, groups 8..256, token counts around the kernel's
# 4-token blocks and 128-token passes (PYLUT_I8_TOKENS), k over several 256-wide chunks
SHAPES = [(37, 100, 32, 1), (64, 256, 32, 5), (130, 1000, 8, 7), (70, 800, 96, 130),
          (65, 512, 256, 4), (100, 768, 16, 19)]


@pytest.mark.parametrize("mode,bits", CASES)
@pytest.mark.parametrize("m,k,group,n", SHAPES)
def test_int8_prefill_within_the_rounding_bound_and_equal_on_every_isa(mode, bits, m, k, group, n):
    rng = np.random.default_rng(bits * 1000 + m + n)
    q = pylut.quantize(rng.standard_normal((m, k)).astype(np.float32), bits=bits, group=group, mode=mode)
    check(q, rng.standard_normal((n, k)).astype(np.float32))


@pytest.mark.parametrize("mode,bits", CASES)
@pytest.mark.parametrize("m,k,group,n", SHAPES[:4])
def test_split_int8_within_its_residual_bound_and_equal_on_every_isa(mode, bits, m, k, group, n):
    """Two-part activations (precision='high'): the residual x - xs*round(x/xs) is at most
    xs/2 per element, so its own int8 step is <= xs/254 and the bound shrinks 254-fold."""
    rng = np.random.default_rng(bits * 1000 + m + n)
    q = pylut.quantize(rng.standard_normal((m, k)).astype(np.float32), bits=bits, group=group, mode=mode)
    x = rng.standard_normal((n, k)).astype(np.float32)
    ref = run(q, x, "scalar", split=True)
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    assert np.all(np.abs(ref - exact) <= rounding_bound(q, x) / 254 + 1e-5 * np.abs(exact).max())
    rms = np.sqrt(np.mean((ref - exact) ** 2) / np.mean(exact ** 2))
    assert rms < 1e-4, rms  # one part: 3e-3 - 6e-3
    for isa in ISAS:
        assert np.array_equal(run(q, x, isa, n_threads=2, split=True), ref), isa
    with pytest.raises(ValueError, match="split=True needs int8=True"):
        pylut.gemm(q, x, split=True)


@pytest.mark.parametrize("bits,group,sup,m,k,n", [
    (2, 16, 256, 130, 768, 9),    # Q2_K (nibble sub-values)
    (3, 16, 256, 70, 512, 17),    # Q3_K-style, no bias array
    (4, 32, 256, 64, 512, 5),     # Q4_K
    (6, 16, 256, 65, 256, 3),     # Q6_K-style
    (3, 32, 96, 100, 288, 6)])    # odd groups per super-block
def test_int8_prefill_two_level_scales(bits, group, sup, m, k, n):
    a, b, rng = two_level_pair(bits, group, sup, m, k, seed=bits + m)
    x = rng.standard_normal((n, k)).astype(np.float32)
    check(a, x)
    for isa in ISAS:  # the nibble form reads the same values
        assert np.array_equal(run(b, x, isa), run(a, x, isa)), isa
    two_part = run(a, x, "scalar", split=True)  # precision='high' over two-level scales
    for isa in ISAS:
        assert np.array_equal(run(b, x, isa, split=True), two_part), isa
    z = float(1 << (bits - 1))  # two-level without a bias array: bias = -zero * scale
    codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    d = rng.uniform(0.001, 0.01, (m, k // sup)).astype(np.float16).astype(np.float32)
    sc = rng.integers(-32, 32, (m, k // group)).astype(np.int8)
    check(pylut.QMatrix.from_codes_super(codes, d, sc, zero=z, bits=bits, group=group, super_=sup), x)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group", [16, 32, 256])
def test_largest_codes_and_activations_do_not_overflow(bits, group):
    """Every code at 2^bits - 1 against activations of +-127 after quantization: the AVX2
    kernel adds a whole group's int16 pair sums before widening, up to the bound it computes
    (Q4_0's 8 k-groups of 32 weights are exactly at it); one step past it would wrap."""
    m, k = 64, 512
    codes = np.full((m, k), (1 << bits) - 1, np.uint8)
    q = _core.QMatrix.from_codes(codes, np.ones((m, k // group), np.float32), bits=bits, group=group,
                                 zero=0)
    x = np.ones((3, k), np.float32)
    x[1] = -1.0
    x[2, ::2] = -1.0  # pairs that cancel
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    for isa in ISAS:
        np.testing.assert_allclose(run(q, x, isa), exact, rtol=1e-6, err_msg=isa)


@pytest.mark.parametrize("split", [False, True])
def test_int8_activations_ties_zeros_and_ragged_groups_equal_on_every_isa(split):
    """The activation quantizer of every ISA (AVX-512: its own, 16 values a step) writes the
    twin's bytes: values at exact halves after scaling (amax 127, so the step is 1) round to
    even, an all-zero group gets step 0, and k = 1000 leaves a ragged last group."""
    rng = np.random.default_rng(9)
    m, k, g = 64, 1000, 32
    q = pylut.QMatrix.from_codes(rng.integers(0, 16, (m, k)).astype(np.uint8),
                                 rng.uniform(0.5, 1.0, (m, -(-k // g))).astype(np.float32), None, bits=4, group=g)
    x = rng.standard_normal((6, k)).astype(np.float32)
    x[0] = rng.integers(-127, 127, k) + 0.5   # every value a tie
    x[0, ::g] = 127.0                          # each group's max: step exactly 1
    x[1, :3 * g] = 0.0                         # whole zero groups
    x[2] *= 1e-30                              # tiny steps
    x[3] *= 1e30                               # huge ones
    ref = run(q, x, "scalar", split=split)
    for isa in ISAS:
        assert np.array_equal(run(q, x, isa, split=split), ref), isa


def test_q4_0_grid_and_threads():
    """Q4_0: codes - 8 without a bias array; 2 threads split the tiles, results unchanged."""
    rng = np.random.default_rng(4)
    m, k, g = 200, 512, 32
    codes = rng.integers(0, 16, (m, k)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (m, k // g)).astype(np.float16).astype(np.float32)
    q = pylut.QMatrix.from_codes(codes, d, None, bits=4, group=g, zero=8.0)
    x = rng.standard_normal((70, k)).astype(np.float32)
    check(q, x)
    for isa in ISAS:
        assert np.array_equal(run(q, x, isa, n_threads=2), run(q, x, isa)), isa


def test_close_to_the_table_path():
    """Both kernels approximate the same product: their difference is rounding-sized."""
    rng = np.random.default_rng(9)
    q = pylut.quantize(rng.standard_normal((96, 1024)).astype(np.float32), bits=4, group=32)
    x = rng.standard_normal((24, 1024)).astype(np.float32)
    lut, i8 = pylut.gemm(q, x), pylut.gemm(q, x, int8=True)
    assert np.abs(lut - i8).max() <= 0.02 * np.abs(lut).max()
    assert not np.array_equal(lut, i8)


def test_refused_inputs():
    rng = np.random.default_rng(1)
    for group in (6, 102, 768):  # a padded triple, a lone triple pair's half k-group, past a chunk
        t3 = pylut.quantize(rng.standard_normal((64, 768)).astype(np.float32), group=group, mode="t3")
        with pytest.raises(ValueError, match="T3"):
            pylut.gemm(t3, np.ones(768, np.float32), int8=True)
    f16 = _core.QMatrix.from_f16(rng.standard_normal((64, 64)).astype(np.float16))
    with pytest.raises(ValueError, match="F16"):
        pylut.gemm(f16, np.ones(64, np.float32), int8=True)
    q = pylut.quantize(rng.standard_normal((64, 256)).astype(np.float32), bits=4, group=32)
    other = pylut.quantize(rng.standard_normal((64, 256)).astype(np.float32), bits=4, group=64)
    pool = pylut.get_pool(1)
    tables = _core.Tables(q, 2, True)
    tables.build(np.ones((2, 256), np.float32), pool)
    with pytest.raises(ValueError):  # activations grouped for another scale group
        _core.gemm_multi([other], np.ones((2, 256), np.float32), pool, tables)
    with pytest.raises(ValueError, match="shape"):
        tables.build(np.ones((3, 256), np.float32), pool)


# first token count at which each ISA's model takes the int8 kernel, by (bits, two-level);
# absent: never (kernels.h PYLUT_I8_FROM_*, measured by tools/bench_prefill.py)
VNNI_FROM = {(2, False): 16, (3, False): 8, (4, False): 12, (6, False): 4, (8, False): 4,
             (2, True): 32, (3, True): 8, (6, True): 4}
# with GFNI (the VBMI tier) plain 2..8-bit and two-level 3..6-bit from 2 tokens: the few-token kernel
GFNI_FROM = {**VNNI_FROM, (2, False): 2, (3, False): 2, (4, False): 2, (6, False): 2, (8, False): 2,
             (3, True): 2, (6, True): 2}
AVX2_FROM = {(3, False): 8, (4, False): 8, (6, False): 8, (3, True): 16, (6, True): 16}


@pytest.mark.parametrize("isa", ISAS)
def test_which_path_the_model_takes(isa):
    """Decode and short chunks stay on the tables; prompt chunks take the int8 kernel where
    the ISA has a fast one (AVX-512 VNNI on either tier, AVX2, NEON with sdot), from the
    token counts that tools/bench_prefill.py measured per ISA (Q2_K-style two-level 2-bit
    only from 32 tokens and only with VNNI; NEON sdot borrows AVX2's); plain 2-bit groups
    under 32, 1-bit never, nor 8-bit codes on AVX2 and NEON; plain NEON never. T3 only on
    AVX-512VBMI (SIMD unpacking), from B2's 16 tokens, and only in groups of 12n <= 256."""
    _core.isa_set(isa)
    vnni = isa == "avx512vbmi" or (isa == "avx512" and "avx512vnni" in _core.cpu_flags())
    expect = (GFNI_FROM if isa == "avx512vbmi" else VNNI_FROM if vnni
              else AVX2_FROM if isa in ("avx2", "neon_dotprod") else {})
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    for bits in (2, 3, 4, 6, 8):
        for two_level in (False, True):
            if two_level and bits in (4, 8):
                continue
            q = (two_level_pair(bits, 16, 256, 64, 256, seed=0)[0] if two_level
                 else pylut.quantize(w, bits=bits, group=32))
            first = expect.get((bits, two_level))
            assert not _core.i8_preferred(q, 1), (bits, two_level)
            if first is None:
                assert not _core.i8_preferred(q, 64), (bits, two_level)
            else:
                assert not _core.i8_preferred(q, first - 1), (bits, two_level)
                assert _core.i8_preferred(q, first) and _core.i8_preferred(q, 64), (bits, two_level)
    for q in (pylut.quantize(w, bits=1, group=32), pylut.quantize(w, mode="t3", group=6),
              pylut.quantize(w, bits=2, group=16)):
        assert not _core.i8_preferred(q, 64)
    t3 = pylut.quantize(w, mode="t3", group=192)
    assert not _core.i8_preferred(t3, 15) and not _core.i8_preferred(t3, 1)
    assert _core.i8_preferred(t3, 16) == (isa == "avx512vbmi")


@pytest.mark.parametrize("m,k,group,n", [(37, 100, 12, 1), (64, 2560, 192, 5), (130, 1000, 216, 19),
                                         (70, 800, 96, 130), (65, 768, 240, 4), (100, 6912, 216, 9)])
def test_t3_int8_equals_b2_and_is_equal_on_every_isa(m, k, group, n):
    """T3 on the int8 path unpacks to B2's codes (trit + 1) and takes B2's bias (-scale): with
    the same trits, scales and group the two layouts give the same bits on every ISA (VBMI
    unpacks T3 with vpermt2b, the others through the portable twin), within the int8 bound."""
    rng = np.random.default_rng(m + k + n)
    trits = rng.integers(-1, 2, (m, k)).astype(np.int8)
    scale = rng.uniform(0.5, 2.0, (m, -(-k // group))).astype(np.float32)
    t3 = _core.QMatrix.from_trits(trits, scale, group=group)
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[0, : k // 2] = 0.0  # zero groups
    ref = run(t3, x, "scalar")
    exact = x.astype(np.float64) @ t3.dequantize().astype(np.float64).T
    assert np.all(np.abs(ref - exact) <= rounding_bound(t3, x) + 1e-5 * np.abs(exact).max())
    for isa in ISAS:
        assert np.array_equal(run(t3, x, isa), ref), isa
    if group % 8 == 0:
        b2 = _core.QMatrix.from_codes((trits + np.int8(1)).view(np.uint8), scale, None, bits=2, group=group, zero=1.0)
        for isa in ISAS:
            assert np.array_equal(run(b2, x, isa), ref), isa
    split = run(t3, x, "scalar", split=True)  # two-part activations reuse the unpacked chunk
    assert np.all(np.abs(split - exact) <= rounding_bound(t3, x) / 254 + 1e-5 * np.abs(exact).max())
    for isa in ISAS:
        assert np.array_equal(run(t3, x, isa, n_threads=2, split=True), split), isa
