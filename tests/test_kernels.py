"""Kernel core: every ISA variant equals the scalar twin, and the scalar twin matches a numpy
dequantize-then-matmul reference within a bound derived from the table quantization.

Tolerances (why these numbers):
- ISA vs scalar: the integer lookups and sums are identical (bit-exact); only the per-group
  float epilogue differs (FMA vs separate multiply/add, 8/16-wide vs 1-wide), a few ulps per
  group, so |y_isa - y_scalar| <= 1e-5 * max|y|.
- vs numpy reference: each int8 table entry is off by at most half a table step
  (0.5 * tscale); a b-bit row term adds (2^b - 1)/2 such errors per k-group, scaled by the
  group's weight scale. `lut_error_bound` sums that worst case, and we also require the RMS
  error to be small (per bit width) so a kernel that is merely "within the worst case" but
  systematically off still fails.
Shapes are kept small so the same file runs under qemu-aarch64 in a few seconds."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pylut
from pylut import _core

ISAS = _core.isa_supported()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]

# (mode, bits) cases: symmetric and zero-point grids, 1..4 bits, ternary both ways
CASES = [("sym", 1), ("sym", 2), ("sym", 3), ("sym", 4), ("zp", 1), ("zp", 2), ("zp", 3),
         ("zp", 4), ("sym", 5), ("zp", 6), ("sym", 8), ("ternary", 2), ("t3", 2)]
# (m, k, group): odd M and K, K = 100*4 and 100*32 (BitNet-3B: head dim 100, dim 3200),
# tails in both directions
SHAPES = [(1, 32, 32), (37, 100, 32), (64, 400, 64), (100, 256, 128), (130, 1000, 256),
          (70, 68, 8), (65, 800, 192), (40, 3200, 128)]
# RMS error limit relative to RMS(y), per bit width (measured ~0.5-1 %; limit leaves 3x room)
RMS_LIMIT = {1: 0.03, 2: 0.03, 3: 0.03, 4: 0.03, 5: 0.03, 6: 0.03, 8: 0.03, "t3": 0.03}


pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def run(q, x, isa, n_threads=1):
    _core.isa_set(isa)
    return pylut.gemm(q, x, n_threads=n_threads)


def check_scalar_and_simd(q, x):
    """The scalar twin within the table-rounding bound of dequantize-then-matmul; every SIMD
    ISA equal to the twin (float epilogue order aside)."""
    ref = run(q, x, "scalar")
    assert np.all(np.abs(ref - x @ q.dequantize().T) <= lut_error_bound(q, x) * 1.0001 + 1e-5)
    for isa in SIMD_ISAS:
        assert np.abs(run(q, x, isa) - ref).max() <= 1e-5 * np.abs(ref).max()


def make(mode, bits, m, k, group, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, k)).astype(np.float32)
    return pylut.quantize(w, bits=bits, group=group, mode=mode), rng


def group_scales(q):
    """Effective scale per (row, group) of a B-type matrix, one- or two-level."""
    m, g, m_pad = q.shape[0], q.group, -(-q.shape[0] // 64) * 64
    if not q.super_block:
        return _core._untile_params(q.scale_buf, m_pad, q.k_pad // g)[:m]
    d = _core._untile_params(q.scale_buf, m_pad, q.k_pad // q.super_block)
    sc = _core._untile_sub(q.sub_scale_buf, m_pad, q.k_pad // g, q.sub_nibbles, False)
    return (np.repeat(d, q.super_block // g, axis=1) * sc)[:m]


def group_biases(q):
    """Effective bias per (row, group) of a two-level matrix with a bias array."""
    m, g, m_pad = q.shape[0], q.group, -(-q.shape[0] // 64) * 64
    d = _core._untile_params(q.bias_buf, m_pad, q.k_pad // q.super_block)
    sub = q.sub_scale_buf if q.sub_nibbles else q.sub_bias_buf
    sb = _core._untile_sub(sub, m_pad, q.k_pad // g, q.sub_nibbles, True)
    return (np.repeat(d, q.super_block // g, axis=1) * sb)[:m]


def int_super(q):
    """src/core/kernels.h pylut_b_int_super: two-level scales summed in integers, with one table
    scale per super-block and sum x rounded to table steps."""
    if q.type == _core.TYPE_T3 or not q.super_block:
        return False
    top = (1 << q.bits) - 1
    return (top * q.group <= 1032 and top * q.super_block <= 262144
            and (q.has_bias or float(2 * q.zero).is_integer()))


def lut_error_bound(q, x):
    """Worst-case |y - W x| caused by rounding table entries to int8 (see module doc)."""
    m, k = q.shape
    xs = np.atleast_2d(x)
    bounds = []
    for xv in xs:
        g = q.group
        if q.type == _core.TYPE_T3:  # per group: tg triples, each lookup off by <= half a step
            tg = 2 * ((g + 5) // 6)
            xp = np.zeros((q.k_pad // g, tg * 3), np.float32)
            xp[:, :g] = np.pad(xv, (0, q.k_pad - k)).reshape(-1, g)
            tscale = np.abs(xp.reshape(xp.shape[0], tg, 3)).sum(2).max(1) / 127
            s = np.abs(_core._untile_params(q.scale_buf, -(-m // 64) * 64, q.k_pad // g)[:m])
            bounds.append(s @ (0.5 * tscale * tg))
            continue
        xp = np.zeros(q.k_pad, np.float32)
        xp[:k] = xv
        sup = int_super(q)
        kg = np.abs(xp.reshape(-1, 4)).sum(1).reshape(-1, (q.super_block if sup else g) // 4)
        tscale = kg.max(1) / 127  # per table-scale block: the group, or the super-block
        if sup:
            tscale = np.repeat(tscale, q.super_block // g)
        s = group_scales(q)
        per_group = 0.5 * tscale * ((1 << q.bits) - 1) / 2 * (g // 4)
        bound = np.abs(s) @ per_group
        if sup:  # sum x rounded to a table step: off by <= half a step times the sum-x weight
            h = ((1 << q.bits) - 1) / 2
            sx_w = group_biases(q) + s * h if q.has_bias else s * (h - q.zero)
            bound = bound + np.abs(sx_w) @ (0.5 * tscale)
        bounds.append(bound)
    return np.array(bounds).reshape(np.shape(x)[:-1] + (m,))


@pytest.mark.parametrize("mode,bits", CASES)
@pytest.mark.parametrize("m,k,group", SHAPES)
def test_scalar_matches_numpy_reference(mode, bits, m, k, group):
    q, rng = make(mode, bits, m, k, group)
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = run(q, x, "scalar")
    ref = x @ q.dequantize().T
    bound = lut_error_bound(q, x)
    assert np.all(np.abs(y - ref) <= bound * 1.0001 + 1e-5), "error above the table-rounding bound"
    rms = np.sqrt(np.mean((y - ref) ** 2)) / max(np.sqrt(np.mean(ref ** 2)), 1e-12)
    assert rms < RMS_LIMIT["t3" if mode == "t3" else bits], f"rms error {rms:.4f}"


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU runs the scalar kernels only")
@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("mode,bits", CASES)
@pytest.mark.parametrize("m,k,group", SHAPES)
@pytest.mark.parametrize("n", [1, 5])
def test_isa_equals_scalar(isa, mode, bits, m, k, group, n):
    q, rng = make(mode, bits, m, k, group, seed=1)
    x = rng.standard_normal((n, k)).astype(np.float32)
    ref = run(q, x, "scalar")
    y = run(q, x, isa)
    scale = max(float(np.abs(ref).max()), 1e-12)
    assert np.abs(y - ref).max() <= 1e-5 * scale


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode,bits", [("sym", 1), ("zp", 2), ("sym", 3), ("zp", 4), ("sym", 4), ("zp", 6)])
def test_a_token_in_a_batch_equals_the_token_alone(isa, mode, bits):
    """Prefill (a GEMM of many tokens, which the AVX-512 kernels take two at a time over one
    pass of the codes) gives each token bit for bit what decode (its GEMV) gives."""
    q, rng = make(mode, bits, 130, 256, 32)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    batch = run(q, x, isa)
    for i in range(len(x)):
        assert np.array_equal(batch[i], run(q, x[i:i + 1], isa)[0])


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU runs the scalar kernels only")
@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("k,group,two_level", [(100, 32, False), (1000, 8, False), (4096, 128, False),
                                               (2050, 256, False), (512, 16, True), (1024, 32, True)])
def test_table_builders_write_the_same_bytes_on_every_isa(isa, k, group, two_level):
    """The B-type table entries are built per ISA (pylut_b_entries_*); every copy must write
    the portable loop's bytes, scales and sums exactly, ragged k and padding included, and
    with the int-super sums of two-level matrices."""
    rng = np.random.default_rng(k + group)
    if two_level:
        q = two_level_pair(2, group, 256, 64, k, seed=3)[1]
    else:
        q = pylut.quantize(rng.standard_normal((64, k)).astype(np.float32), bits=4, group=group)
    x = rng.standard_normal((3, k)).astype(np.float32) * np.float32(3.0)
    x[1, : k // 3] = 0.0  # zero groups: inv = 0
    x[2, 5] = 1e30        # one huge activation squashes its group's other entries to 0
    built = {}
    for name in ("scalar", isa):
        _core.isa_set(name)
        t = _core.Tables(q, 3)
        t.build(x, pylut.get_pool(1))
        built[name] = (t.tbl.copy(), t.tscale.copy(), t.sumx.copy())
    for a, b in zip(built["scalar"], built[isa]):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not SIMD_ISAS, reason="this CPU runs the scalar kernels only")
@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("k,group", [(100, 6), (1000, 192), (2560, 256), (2050, 256), (6912, 768),
                                     (770, 100)])
def test_t3_table_builders_write_the_same_bytes_on_every_isa(isa, k, group):
    """T3 tables are built per ISA too (kernels' t3_build): every copy must write the portable
    loop's bytes and scales exactly, with the padded triple of a group that is not a multiple
    of 6, a ragged k, zero groups and a huge activation."""
    rng = np.random.default_rng(k + group)
    q = pylut.quantize(rng.standard_normal((64, k)).astype(np.float32), group=group, mode="t3")
    x = rng.standard_normal((3, k)).astype(np.float32) * np.float32(3.0)
    x[1, : k // 3] = 0.0  # zero groups: inv = 0
    x[2, 5] = 1e30        # one huge activation squashes its group's other entries to 0
    x[2, -1] = 0.5        # a half-step entry somewhere: ties round to even on every path
    built = {}
    for name in ("scalar", isa):
        _core.isa_set(name)
        t = _core.Tables(q, 3)
        t.build(x, pylut.get_pool(1))
        built[name] = (t.tbl.copy(), t.tscale.copy())
    assert np.count_nonzero(built["scalar"][0]) > 0
    for a, b in zip(built["scalar"], built[isa]):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
def test_threads_do_not_change_results(isa):
    q, rng = make("sym", 2, 300, 512, 128)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    y1 = run(q, x, isa, n_threads=1)
    for nt in (2, 3):
        assert np.array_equal(run(q, x, isa, n_threads=nt), y1)


@pytest.mark.parametrize("mode,bits", CASES)
def test_pack_unpack_roundtrip(mode, bits):
    rng = np.random.default_rng(2)
    m, k = 77, 150
    if mode == "t3":
        trits = rng.integers(-1, 2, (m, k)).astype(np.int8)
        q = pylut.QMatrix.from_trits(trits, np.ones(m, np.float32))
        assert np.array_equal(q.unpack_codes(), (trits + 1).astype(np.uint8))
        return
    codes = rng.integers(0, 3 if mode == "ternary" else 1 << bits, (m, k)).astype(np.uint8)
    ng = -(-k // 32)
    scale = np.ones((m, ng), np.float32)
    q = pylut.QMatrix.from_codes(codes, scale, None if mode == "sym" else -scale, bits=bits, group=32)
    assert np.array_equal(q.unpack_codes(), codes)


def test_ternary_dense_packing_is_small():
    q, _ = make("t3", 2, 4096, 4096, 256)
    assert q.codes_buf.nbytes * 8 / (4096 * 4096) <= 1.7  # the packing: 5 bits per 3 weights
    assert q.bits_per_weight <= 1.75                       # with one fp16 scale per 256
    q2, _ = make("ternary", 2, 4096, 4096, 256)
    assert q.nbytes < 0.85 * q2.nbytes


def test_gemm_multi_equals_separate():
    rng = np.random.default_rng(3)
    mats = [pylut.quantize(rng.standard_normal((m, 256)).astype(np.float32), bits=4, group=64)
            for m in (64, 32, 100)]
    x = rng.standard_normal(256).astype(np.float32)
    ys = pylut.gemm_multi(mats, x)
    for q, y in zip(mats, ys):
        assert np.array_equal(y, pylut.gemm(q, x))


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
def test_implied_bias_zero_point(bits):
    """W = scale * (codes - 2^(b-1)) without a bias array (Q4_0-style grids)."""
    rng = np.random.default_rng(bits)
    m, k, g = 70, 160, 32
    codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (m, k // g)).astype(np.float16).astype(np.float32)
    z = float(1 << (bits - 1))
    q = pylut.QMatrix.from_codes(codes, d, None, bits=bits, group=g, zero=z)
    assert q.zero == z and not q.has_bias
    assert np.array_equal(q.dequantize(), (d.repeat(g, 1) * (codes - np.float32(z))).astype(np.float32))
    x = rng.standard_normal((2, k)).astype(np.float32)
    check_scalar_and_simd(q, x)
    with pytest.raises(ValueError, match="zero"):
        pylut.QMatrix.from_codes(codes, d, None, bits=bits, group=g, zero=float(1 << bits))


@pytest.mark.parametrize("bits,group,with_min,sup", [
    (2, 16, True, 256), (3, 16, False, 256), (4, 32, True, 256), (5, 32, True, 256),
    (6, 16, False, 256),
    (2, 64, True, 192), (3, 32, False, 96),   # odd groups per super-block
    (8, 16, True, 256)])                      # too wide for integer super sums: per group
def test_two_level_scales(bits, group, with_min, sup):
    """llama.cpp K-quants: fp16 d/dmin per 256 weights, int8 sub-scales per group, exact."""
    rng = np.random.default_rng(bits * 10 + group)
    m, k = 70, 2 * sup
    codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    d = rng.uniform(0.001, 0.01, (m, k // sup)).astype(np.float16).astype(np.float32)
    sc = rng.integers(-32, 32, (m, k // group)).astype(np.int8)
    kw = dict(bits=bits, group=group, super_=sup)
    if with_min:
        dmin = rng.uniform(0.001, 0.01, (m, k // sup)).astype(np.float16).astype(np.float32)
        mn = -rng.integers(0, 16, (m, k // group)).astype(np.int8)
        q = pylut.QMatrix.from_codes_super(codes, d, sc, dmin, mn, **kw)
        bias = np.repeat(dmin, sup // group, 1) * mn
    else:
        z = float(1 << (bits - 1))
        q = pylut.QMatrix.from_codes_super(codes, d, sc, zero=z, **kw)
        bias = -z * np.repeat(d, sup // group, 1) * sc
    scale = np.repeat(d, sup // group, 1) * sc
    w = np.repeat(scale, group, 1) * codes + np.repeat(bias, group, 1)
    assert np.array_equal(q.dequantize(), w.astype(np.float32))
    # fewer bytes than fp16 scale + bias per group (counted over the padded 128 x k rows)
    assert q.nbytes * 8 / (128 * q.k_pad) < bits + 32 / group
    x = rng.standard_normal((3, k)).astype(np.float32)
    check_scalar_and_simd(q, x)
    with pytest.raises(ValueError, match="super"):
        pylut.QMatrix.from_codes_super(codes, d, sc, bits=bits, group=group, super_=group * 3 + 8)


def two_level_pair(bits, group, sup, m, k, seed):
    """The same K-quant-style matrix with int8 and with nibble sub-values: sub-scales 0..15,
    sub-biases -15..0 (Q2_K's mins) except in a few super-blocks where they are 0..15."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
    d, dmin = (rng.uniform(0.001, 0.01, (m, k // sup)).astype(np.float16).astype(np.float32)
               for _ in range(2))
    sc = rng.integers(0, 16, (m, k // group)).astype(np.int8)
    mn = -rng.integers(0, 16, (m, k // group)).astype(np.int8)
    positive = np.repeat(rng.random((m, k // sup)) < 0.2, sup // group, axis=1)
    mn[positive] = -mn[positive]
    kw = dict(bits=bits, group=group, super_=sup)
    return (pylut.QMatrix.from_codes_super(codes, d, sc, dmin, mn, **kw),
            pylut.QMatrix.from_codes_super(codes, d, sc, dmin, mn, nibbles=True, **kw), rng)


@pytest.mark.parametrize("bits,group,sup,m,k,n", [
    (2, 16, 256, 64, 256, 1),     # Q2_K, one tile, decode
    (2, 16, 256, 130, 768, 1),    # Q2_K, ragged m (two full tiles and 2 rows)
    (2, 16, 256, 37, 512, 5),     # Q2_K, ragged m, a GEMM of 5 tokens
    (3, 32, 96, 100, 288, 3),     # odd groups per super-block (the last pair has one)
    (6, 32, 256, 70, 512, 2),     # too wide for integer super sums: per-group floats
    (8, 16, 256, 65, 256, 1)])
def test_nibble_sub_values_equal_the_int8_form(bits, group, sup, m, k, n):
    """pylut.h's nibble form: the same weights, and bit-identical outputs on every ISA."""
    a, b, rng = two_level_pair(bits, group, sup, m, k, seed=bits * 100 + m)
    assert b.sub_nibbles and not a.sub_nibbles
    assert b.sub_bias_buf is None and b.sub_scale_buf.dtype == np.uint8
    assert a.nbytes - b.nbytes == a.sub_bias_buf.nbytes  # one byte per (row, group) less
    w = a.dequantize()
    assert np.array_equal(b.dequantize(), w)
    for i in range(m):  # the C row dequantizer (embedding lookups)
        assert np.array_equal(b.row(i), w[i]) and np.array_equal(a.row(i), w[i])
    x = rng.standard_normal((n, k)).astype(np.float32)
    for isa in ISAS:
        assert np.array_equal(run(b, x, isa), run(a, x, isa)), isa
    check_scalar_and_simd(b, x)


def test_nibbles_save_half_a_bit_per_q2_k_weight():
    a, b, _ = two_level_pair(2, 16, 256, 128, 512, seed=5)
    assert a.bits_per_weight == 3.125 and b.bits_per_weight == 2.625


def test_nibbles_refuse_values_that_do_not_fit():
    rng = np.random.default_rng(6)
    m, k, g, sup = 64, 512, 16, 256
    codes = rng.integers(0, 4, (m, k)).astype(np.uint8)
    d = np.full((m, k // sup), 0.01, np.float32)
    sc = rng.integers(0, 16, (m, k // g)).astype(np.int8)
    mn = -rng.integers(0, 16, (m, k // g)).astype(np.int8)
    kw = dict(bits=2, group=g, super_=sup, nibbles=True)

    def bad(sc_, mn_, match):
        with pytest.raises(ValueError, match=match):
            pylut.QMatrix.from_codes_super(codes, d, sc_, d, mn_, **kw)
    for v in (16, -1):
        s2 = sc.copy()
        s2[3, 5] = v
        bad(s2, mn, r"sub_scale must be in 0\.\.15")
    m2 = mn.copy()
    m2[3, 5] = -16
    bad(sc, m2, r"sub_bias must be in -15\.\.15")
    m2 = mn.copy()
    m2[7, 16:18] = (-3, 4)  # row 7, super-block 1
    bad(sc, m2, "row 7, super-block 1 has sub_bias of both signs")
    with pytest.raises(ValueError, match="nibbles needs dmin"):
        pylut.QMatrix.from_codes_super(codes, d, sc, zero=2.0, **kw)
    # from_packed: the nibble form needs two-level scales and a bias, and no sub_bias array
    good = pylut.QMatrix.from_codes_super(codes, d, sc, d, mn, **kw)
    args = (2, m, k, g, True, good.codes_buf, good.scale_buf, good.bias_buf, None)
    with pytest.raises(ValueError, match="sub_nibbles needs two-level scales"):
        pylut.QMatrix.from_packed(*args, 0, good.sub_scale_buf, None, True)
    with pytest.raises(ValueError, match="sub_bias must be None"):
        pylut.QMatrix.from_packed(*args, sup, good.sub_scale_buf, good.sub_scale_buf.view(np.int8), True)
    with pytest.raises(ValueError, match="layout needs"):
        pylut.QMatrix.from_packed(*args, sup, good.sub_scale_buf[:-1], None, True)
    with pytest.raises(TypeError, match="uint8"):
        pylut.QMatrix.from_packed(*args, sup, good.sub_scale_buf.view(np.int8), None, True)
    again = pylut.QMatrix.from_packed(*args, sup, good.sub_scale_buf, None, True)
    x = rng.standard_normal(k).astype(np.float32)
    assert np.array_equal(pylut.gemm(again, x), pylut.gemm(good, x))


def test_lossless_codes_give_exact_dequantize():
    """Integer codes + fp16-exact scales (what a GGUF repack produces) survive packing."""
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 16, (40, 64)).astype(np.uint8)
    d = rng.uniform(0.01, 0.1, (40, 2)).astype(np.float16).astype(np.float32)
    q = pylut.QMatrix.from_codes(codes, d, -8 * d, bits=4, group=32)
    w = d.repeat(32, 1) * codes - 8 * d.repeat(32, 1)
    assert np.array_equal(q.dequantize(), w.astype(np.float32))


def test_int8_baseline_matches_reference():
    rng = np.random.default_rng(5)
    for bits in (2, 4):
        m, k = 50, 512
        codes = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
        s = rng.uniform(0.01, 0.1, (m, k // 32)).astype(np.float32)
        b = -s * ((1 << bits) - 1) / 2
        im = pylut.Dq8Matrix(codes, s, b, bits)
        x = rng.standard_normal(k).astype(np.float32)
        xq, xs, xsum = im.quantize_x(x)
        s16, b16 = s.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        w = s16.repeat(32, 1) * codes + b16.repeat(32, 1)
        ref = w @ (xq.astype(np.float32) * xs.repeat(32))
        outs = {}
        for isa in ISAS:
            _core.isa_set(isa)
            outs[isa] = im.gemv(xq, xs, xsum, pylut.get_pool(1))
            assert np.allclose(outs[isa], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------- bad input

def test_bad_arguments_raise_clear_errors():
    q, _ = make("sym", 2, 64, 128, 32)
    with pytest.raises(TypeError, match="float32"):
        pylut.gemm(q, np.zeros(128, np.float64))
    with pytest.raises(ValueError, match="k=128"):
        pylut.gemm(q, np.zeros(127, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        pylut.gemm(q, np.zeros((2, 256), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="numpy array"):
        pylut.gemm(q, [0.0] * 128)
    with pytest.raises(ValueError, match="bits"):
        pylut.quantize(np.zeros((4, 32), np.float32), bits=9)
    with pytest.raises(ValueError, match="bits"):
        pylut.quantize(np.zeros((4, 32), np.float32), bits=0)
    with pytest.raises(ValueError, match="group"):
        pylut.quantize(np.zeros((4, 32), np.float32), bits=2, group=12)
    with pytest.raises(ValueError, match="mode"):
        pylut.quantize(np.zeros((4, 32), np.float32), mode="int3")
    with pytest.raises(ValueError, match="NaN"):
        pylut.quantize(np.full((4, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        pylut.quantize(np.zeros(32, np.float32))
    with pytest.raises(TypeError, match="floating"):
        pylut.quantize(np.zeros((4, 32), np.int32))
    with pytest.raises(ValueError, match="< 2\\^2"):
        pylut.QMatrix.from_codes(np.full((2, 32), 4, np.uint8), np.ones((2, 1)), bits=2, group=32)
    with pytest.raises(ValueError, match="shape"):
        pylut.QMatrix.from_codes(np.zeros((2, 64), np.uint8), np.ones((2, 1)), bits=2, group=32)
    with pytest.raises(ValueError, match="trits"):
        pylut.QMatrix.from_trits(np.full((2, 6), 2, np.int8), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="shape"):
        pylut.QMatrix.from_trits(np.zeros((2, 600), np.int8), np.ones((2, 5), np.float32), group=256)
    with pytest.raises(ValueError, match="group"):
        pylut.quantize(np.zeros((4, 32), np.float32), mode="t3", group=1000)
    with pytest.raises(ValueError, match="bytes"):
        pylut.QMatrix.from_packed(2, 64, 128, 32, False, np.zeros(10, np.uint8), np.zeros(256, np.uint16))
    with pytest.raises(ValueError, match="same k"):
        pylut.gemm_multi([q, make("sym", 2, 64, 256, 32)[0]], np.zeros(128, np.float32))
    with pytest.raises(ValueError, match="n_threads"):
        pylut.ThreadPool(0)
    with pytest.raises(ValueError, match="unknown ISA"):
        pylut.set_isa("sse9")


def test_unsupported_isa_is_refused():
    others = {"avx2", "avx512", "avx512vbmi", "neon", "neon_dotprod"} - set(ISAS)
    for name in others:
        with pytest.raises(ValueError, match="not supported"):
            pylut.set_isa(name)


def test_cpu_features_and_env_override():
    f = pylut.cpu_features()
    assert f["isa"] in f["supported"] and f["best"] in f["supported"] and "scalar" in f["supported"]
    code = "import pylut; print(pylut.cpu_features()['isa'])"
    env = dict(os.environ, PYLUT_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"
    env["PYLUT_ISA"] = "no-such-isa"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f["best"]
    assert out.stderr == "", "the library must not write to stderr on its own"


@pytest.mark.parametrize("mode,bits", [("sym", 1), ("sym", 2), ("sym", 4), ("sym", 8), ("zp", 1), ("zp", 4),
                                       ("ternary", 2), ("t3", 2)])
def test_all_zero_groups_stay_zero(mode, bits):
    """A group of zero weights (pruned rows, padding in a checkpoint) loads as exact zeros in
    every mode: the symmetric grid has no zero level, so its scale must be 0 there."""
    group = 192 if mode == "t3" else 64
    w = np.random.default_rng(5).standard_normal((70, 3 * group)).astype(np.float32)
    w[3, group:2 * group] = 0.0
    w[66] = 0.0
    q = pylut.quantize(w, bits=bits, group=group, mode=mode)
    d = q.dequantize()
    assert np.array_equal(d[3, group:2 * group], np.zeros(group, np.float32))
    assert np.array_equal(d[66], np.zeros(w.shape[1], np.float32))
    x = np.zeros(w.shape[1], np.float32)
    x[group:2 * group] = 1.0
    for isa in ISAS:
        assert abs(run(q, x[None], isa)[0, 3]) <= 1e-6 * (1 + np.abs(run(q, x[None], isa)).max())
