"""The forward pass's element-wise kernels (src/vecops/): RMSNorm, the gated FFN activations
(SiLU, GELU's tanh form, ReLU^2), the residual add and RoPE. Every ISA this CPU has against
numpy in float64 within per-op rounding bounds, and every SIMD unit against the scalar twin:
bit for bit (the units run the twin's IEEE operations in its order, -ffp-contract=off), except
RMSNorm, whose double sum of squares may round the normalizer one float ulp apart. Also: tails
(n not a multiple of any vector width), n = 1, huge / tiny / subnormal values, NaN where the
scalar code propagates it, -0, the documented sigmoid error, and results that do not depend on
where a thread's element range starts (batch_invariant relies on it); bad input is refused.
"""
import numpy as np
import pytest

from pylut import _core

ISAS = _core.isa_supported()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]
U = 2.0 ** -24      # fp32 unit roundoff
TINY = 2.0 ** -126  # below this a float result may lose its relative accuracy (subnormals)
ACTS = ["silu", "gelu_tanh", "relu2"]
# lengths around every vector width (4, 8, 16 lanes) and a model row
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 100, 2048]

pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def on(isa, fn, *args):
    _core.isa_set(isa)
    return fn(*args)


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def assert_same_bits(a, b):
    """Equal bit patterns, NaNs excepted (any NaN matches any NaN: a payload may come from
    either operand of a commutative operation)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    assert np.array_equal(bits(a[ok]), bits(b[ok])), np.flatnonzero(bits(a[ok]) != bits(b[ok]))[:10]


def values(n, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(np.float32), rng.standard_normal(n).astype(np.float32)


# the edge values each op meets in a model, and the ones it should survive
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 79.9, -79.9, 80.0, -80.0, 81.0, -81.0, 100.0,
                    -100.0, 1e4, -1e4, 1e30, -1e30, 0.5, -0.5, 8.0, -8.0, 20.0, -20.0], np.float32)


# ---------------------------------------------------------------- references in float64

def sigmoid64(y):
    """1/(1+e^-y) through e^-|y| (no overflow, and no cancellation for large negative y)"""
    e = np.exp(-np.abs(y))
    return np.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_err(y):
    """The documented error of forward's sigmoid (vec_body.h): absolute < 1e-7 and relative
    < 4e-6 over [-80, 80]; beyond, the cap at |y| = 80 leaves the absolute bound."""
    s = sigmoid64(y)
    return np.where(np.abs(y) <= 80, np.minimum(1e-7, 4e-6 * s), 1e-7)


def gate_ref(act, g, u):
    """act(g) * u in float64 and the bound on the kernel's error."""
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    if act == "relu2":
        r = np.maximum(g64, 0.0)
        ref = r * r * u64
        return ref, 2.1 * U * np.abs(ref) + 2 ** -149
    if act == "silu":
        z = g64
        arg_err = 0.0
    else:  # the kernel's float constants, exactly: what is tested is its arithmetic
        c1, c2 = float(np.float32(1.5957691216)), float(np.float32(0.044715))
        z = c1 * g64 * (1.0 + c2 * g64 * g64)
        # 2z is rounded 5 times in float; sigmoid moves by s(1-s)|z| per unit of relative change
        s = sigmoid64(z)
        arg_err = s * (1.0 - s) * np.abs(z) * 6 * U
    s = sigmoid64(z)
    ref = g64 * s * u64
    return ref, np.abs(g64 * u64) * (sigmoid_err(z) + arg_err + 2.1 * U * s) + 2 ** -149


def rms_ref(x, w, eps):
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64 * x64) + eps) * w.astype(np.float64)
    return ref, 3.5 * U * np.abs(ref) + 2 ** -149


def rope_ref(v, n_rot, pos, inv_freq, scale, neox):
    """Rotated copy in float64, from the kernel's own float angle, and its bound: cosf/sinf
    (<= 1 ulp) times scale, two products and a sum, each rounded."""
    ang = (np.float32(pos) * inv_freq).astype(np.float64)  # float32 product, as the kernel
    c, s = np.cos(ang) * scale, np.sin(ang) * scale
    out = v.astype(np.float64)
    bound = np.zeros_like(out)
    half = n_rot // 2
    i0 = np.arange(half) if neox else 2 * np.arange(half)
    i1 = i0 + half if neox else i0 + 1
    x0, x1 = out[i0].copy(), out[i1].copy()
    out[i0], out[i1] = x0 * c - x1 * s, x0 * s + x1 * c
    mag = (np.abs(x0) + np.abs(x1)) * (np.abs(c) + np.abs(s))
    bound[i0] = bound[i1] = 6 * U * mag + 2 ** -149
    return out, bound


def inv_freqs(n_rot, theta=10000.0):
    return (theta ** (-2.0 * np.arange(n_rot // 2) / n_rot)).astype(np.float32)


def check_close(got, ref, bound, what):
    """|got - ref| <= bound; where the exact result is beyond float's range, got is that inf"""
    got64 = got.astype(np.float64)
    over = np.abs(ref) >= 2.0 ** 128
    assert (got64[over] == np.sign(ref[over]) * np.inf).all(), f"{what}: overflow"
    err = np.abs(got64 - ref)
    bad = ~(err <= bound) & ~over
    assert not bad.any(), f"{what}: {bad.sum()} beyond the bound, worst at {np.flatnonzero(bad)[:5]}: " \
                          f"got {got64[bad][:5]} ref {ref[bad][:5]} bound {bound[bad][:5]}"


# ---------------------------------------------------------------- against float64

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ACTS)
def test_gate_against_float64(isa, act):
    for n in SIZES:
        g, u = values(n, n)
        check_close(on(isa, _core.vec_gate, act, g, u), *gate_ref(act, g, u), f"{act} n={n}")
    g = np.concatenate([SPECIAL, SPECIAL * 0.37])
    u = np.linspace(-2, 2, g.size).astype(np.float32)
    check_close(on(isa, _core.vec_gate, act, g, u), *gate_ref(act, g, u), f"{act} edge values")


@pytest.mark.parametrize("isa", ISAS)
def test_sigmoid_keeps_its_documented_error(isa):
    """SiLU with u = 1 is y * sigmoid(y) rounded once more: over a dense grid of [-90, 90] the
    sigmoid stays within its documented bounds in every unit."""
    y = np.linspace(-90, 90, 400_001).astype(np.float32)
    got = on(isa, _core.vec_gate, "silu", y, np.ones_like(y)).astype(np.float64)
    y64 = y.astype(np.float64)
    s = sigmoid64(y64)
    err = np.abs(got - y64 * s)
    assert (err <= np.abs(y64) * (sigmoid_err(y64) + U * s) + 2 ** -149).all()


@pytest.mark.parametrize("isa", ISAS)
def test_rmsnorm_against_float64(isa):
    for n in SIZES:
        x, w = values(n, 100 + n)
        for eps in (1e-6, 1e-5):
            check_close(on(isa, _core.vec_rmsnorm, x, w, eps), *rms_ref(x, w, eps), f"rmsnorm n={n}")
    rng = np.random.default_rng(5)
    for scale in (1e-20, 1e-3, 1e3, 1e18):  # squares in double: no float overflow or underflow
        x = (rng.standard_normal(333) * scale).astype(np.float32)
        w = rng.standard_normal(333).astype(np.float32)
        check_close(on(isa, _core.vec_rmsnorm, x, w, 1e-6), *rms_ref(x, w, 1e-6), f"rmsnorm scale {scale}")


@pytest.mark.parametrize("isa", ISAS)
def test_add_against_float64(isa):
    for n in SIZES:
        x, y = values(n, 200 + n)
        ref = x.astype(np.float64) + y
        check_close(on(isa, _core.vec_add, x, y), ref, U * np.abs(ref), f"add n={n}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("neox", [False, True])
def test_rope_against_float64(isa, neox):
    rng = np.random.default_rng(7)
    for hd, n_rot in [(2, 2), (6, 6), (30, 30), (34, 34), (64, 64), (64, 32), (128, 128), (128, 96), (96, 24),
                      (256, 256), (80, 50)]:
        v = rng.standard_normal(hd).astype(np.float32)
        f = inv_freqs(n_rot)
        for pos in (0, 1, 17, 1000, 131071):
            for scale in (1.0, 1.2):
                got = on(isa, _core.vec_rope, v, n_rot, pos, f, scale, neox)
                check_close(got, *rope_ref(v, n_rot, pos, f, scale, neox), f"rope hd={hd} n_rot={n_rot} pos={pos}")
                assert_same_bits(got[n_rot:], v[n_rot:])  # partial rotary: the rest passes through


# ---------------------------------------------------------------- SIMD against the scalar twin

@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("act", ACTS)
def test_gate_equals_scalar_twin(isa, act):
    for n in SIZES + [SPECIAL.size]:
        g, u = values(n, 300 + n, scale=10.0)
        if n == SPECIAL.size:
            g = SPECIAL.copy()
        assert_same_bits(on(isa, _core.vec_gate, act, g, u), on("scalar", _core.vec_gate, act, g, u))


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_add_and_rope_equal_scalar_twin(isa):
    rng = np.random.default_rng(11)
    for n in SIZES:
        x, y = values(n, 400 + n)
        assert_same_bits(on(isa, _core.vec_add, x, y), on("scalar", _core.vec_add, x, y))
    for n_rot in (2, 4, 6, 8, 10, 14, 16, 18, 30, 32, 34, 62, 64, 66, 128):
        v = rng.standard_normal(n_rot + 3).astype(np.float32)
        f = inv_freqs(n_rot, 500000.0)
        for neox in (False, True):
            for pos in (0, 5, 4095):
                assert_same_bits(on(isa, _core.vec_rope, v, n_rot, pos, f, 0.9, neox),
                                 on("scalar", _core.vec_rope, v, n_rot, pos, f, 0.9, neox))


@pytest.mark.parametrize("isa", SIMD_ISAS)
def test_rmsnorm_within_an_ulp_of_scalar_twin(isa):
    """The sum of squares is reordered (lanes of doubles): the normalizer may round one float
    ulp apart, so an output is within 2 ulps of the twin's (in practice they are equal)."""
    for n in SIZES:
        x, w = values(n, 500 + n)
        a = on(isa, _core.vec_rmsnorm, x, w, 1e-5)
        b = on("scalar", _core.vec_rmsnorm, x, w, 1e-5).astype(np.float64)
        assert (np.abs(a - b) <= 2.5 * U * np.abs(b) + 2 ** -149).all()


# ---------------------------------------------------------------- edge behaviour

@pytest.mark.parametrize("isa", ISAS)
def test_nan_propagates_as_the_scalar_code_does(isa):
    nan = np.float32(np.nan)
    g = np.array([1.0, nan, -2.0, 3.0, 0.5], np.float32)
    u = np.array([nan, 1.0, 1.0, 1.0, 2.0], np.float32)
    for act in ("silu", "gelu_tanh"):
        out = on(isa, _core.vec_gate, act, g, u)
        assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
    # ReLU^2's sign mask: a NaN whose sign bit is set counts as negative (gives 0), as before
    neg_nan = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    r = on(isa, _core.vec_gate, "relu2", np.array([nan, neg_nan, -1.0], np.float32), np.ones(3, np.float32))
    assert np.isnan(r[0]) and bits(r[1:]).tolist() == [0, 0]
    x = np.ones(37, np.float32)
    x[20] = nan
    assert np.isnan(on(isa, _core.vec_rmsnorm, x, np.ones(37, np.float32), 1e-6)).all()
    w = np.ones(37, np.float32)
    w[3] = nan
    y = on(isa, _core.vec_rmsnorm, np.ones(37, np.float32), w, 1e-6)
    assert np.isnan(y[3]) and np.isfinite(np.delete(y, 3)).all()
    v = np.arange(1, 21, dtype=np.float32)
    v[4] = nan
    out = on(isa, _core.vec_rope, v, 20, 3, inv_freqs(20), 1.0, False)
    assert np.isnan(out[4:6]).all() and np.isfinite(np.delete(out, [4, 5])).all()
    out = on(isa, _core.vec_rope, v, 20, 3, inv_freqs(20), 1.0, True)
    assert np.isnan(out[[4, 14]]).all() and np.isfinite(np.delete(out, [4, 14])).all()


@pytest.mark.parametrize("isa", ISAS)
def test_signed_zeros(isa):
    z = np.array([-0.0] * 19, np.float32)
    assert (bits(on(isa, _core.vec_add, z, z)) == 0x80000000).all()          # -0 + -0 = -0
    assert (bits(on(isa, _core.vec_gate, "relu2", z, np.ones(19, np.float32))) == 0).all()  # max(-0, 0) = +0
    assert (bits(on(isa, _core.vec_gate, "silu", z, np.ones(19, np.float32))) == 0x80000000).all()
    # position 0 (cos 1, sin 0): x0 c - x1 s = -0 - (-0) = +0, x0 s + x1 c = -0 + -0 = -0
    rotated = on(isa, _core.vec_rope, z, 18, 0, inv_freqs(18), 1.0, False)
    assert bits(rotated).tolist() == [0, 0x80000000] * 9 + [0x80000000]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ACTS + ["add"])
def test_a_range_split_changes_no_element(isa, act):
    """forward.c splits a step's elements over threads at arbitrary points: any element's
    result must not depend on where its range starts or ends (batch_invariant=True)."""
    g, u = values(301, 9, scale=4.0)
    op = (lambda a, b: _core.vec_add(a, b)) if act == "add" else (lambda a, b: _core.vec_gate(act, a, b))
    whole = on(isa, op, g, u)
    for cut in (1, 3, 8, 13, 16, 150, 299):
        parts = np.concatenate([on(isa, op, g[:cut].copy(), u[:cut].copy()),
                                on(isa, op, g[cut:].copy(), u[cut:].copy())])
        assert_same_bits(parts, whole)


def test_bad_input_is_refused():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="same length"):
        _core.vec_add(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="same length"):
        _core.vec_gate("silu", np.ones(0, np.float32), np.ones(0, np.float32))
    with pytest.raises(TypeError, match="float32"):
        _core.vec_rmsnorm(x.astype(np.float64), x, 1e-5)
    with pytest.raises(ValueError, match="act must be"):
        _core.vec_gate("tanh", x, x)
    with pytest.raises(ValueError, match="rejected by the C"):
        _core.vec_rmsnorm(x, x, -1.0)
    with pytest.raises(ValueError, match="rejected by the C"):
        _core.vec_rmsnorm(x, x, float("nan"))
    with pytest.raises(ValueError, match="n_rot must be even"):
        _core.vec_rope(x, 3, 0, np.ones(1, np.float32))
    with pytest.raises(ValueError, match="n_rot must be even"):
        _core.vec_rope(x, 10, 0, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="inv_freq must have"):
        _core.vec_rope(x, 8, 0, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="rejected by the C"):
        _core.vec_rope(x, 8, -1, np.ones(4, np.float32))
    big = np.ones(1024, np.float32)
    with pytest.raises(ValueError, match="rejected by the C"):  # more than PYLUT_ATTN_MAX_HD dims
        _core.vec_rope(big, 1024, 0, np.ones(512, np.float32))


# ---------------------------------------------------------------- fp16 rows (the KV cache)

def f16_reference(x):
    """numpy's float32 -> float16 (round to nearest even, subnormals, overflow to inf) with
    every NaN as the quiet NaN 0x7e00 and its sign, pylut_fp32_to_fp16's choice"""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(np.float16).view(np.uint16).copy()
    nan = np.isnan(x)
    h[nan] = (x.view(np.uint32)[nan] >> 16 & 0x8000).astype(np.uint16) | 0x7E00
    return h


def f16_edges():
    """halfway cases at every fp16 exponent, the subnormal and overflow boundaries, and NaNs
    with payloads (signalling and quiet, both signs)"""
    u = np.array([0x00000000, 0x80000000, 0x33000000, 0x33000001, 0x337FFFFF, 0x33800000, 0x33C00000,
                  0x387FC000, 0x387FE000, 0x38800000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FFFFF,
                  0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                  0xFF812345, 0x7FFFFFFF, 0x7FA00000, 0x00000001, 0x807FFFFF], np.uint32)
    halfway = [(e << 23) | m for e in range(103, 143) for m in (0x1000, 0x3000, 0x0FFF, 0x1001)]
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([u, np.array(halfway, np.uint32), random_bits]).view(np.float32)


@pytest.mark.parametrize("isa", ISAS)
def test_to_f16_matches_numpy_and_the_scalar_twin(isa):
    x = np.concatenate([f16_edges(), values(3000, 11, 1e4)[0], values(3000, 12, 1e-5)[0]])
    got = on(isa, _core.vec_to_f16, x)
    want = f16_reference(x)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(hex(x.view(np.uint32)[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("n", SIZES)
def test_to_f16_tails(isa, n):
    x = values(n, n)[0] * np.float32(1e3)
    x[::7] = np.nan
    assert np.array_equal(on(isa, _core.vec_to_f16, x), on("scalar", _core.vec_to_f16, x))


def test_to_f16_refuses_empty():
    with pytest.raises(ValueError):
        _core.vec_to_f16(np.zeros(0, np.float32))
