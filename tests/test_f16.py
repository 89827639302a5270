"""The F16 GEMM (src/f16/): fp16 weights kept as stored, fp32 activations and sums. The scalar
twin against numpy in float64 within the rounding bound of an fp32 sum, every SIMD unit this
CPU has against the same bound and against the twin; tokens, threads and matrix sharing do
not change results; bad input is refused. (Models with F16 matrices: test_f16_models.py.)
"""
import numpy as np
import pytest

import pylut
from pylut import _core

ISAS = _core.isa_supported()
SIMD_ISAS = [i for i in ISAS if i != "scalar"]
U = 2.0 ** -24   # fp32 unit roundoff

pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def run(q, x, isa, n_threads=1):
    _core.isa_set(isa)
    return pylut.gemm(q, x, n_threads=n_threads)


def case(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((m, k)) * 0.5).astype(np.float16)
    x = rng.standard_normal((n, k)).astype(np.float32)
    return w, x


def exact_and_bound(w, x):
    """W x in float64 (every fp16 * fp32 product is exact there) and the bound on an fp32
    evaluation of it: a sum of k rounded products in any order is within (k + 1) u sum |w x|
    (Higham's gamma_k, first order; the SIMD units' lane sums and final horizontal add are
    such an order)."""
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    k = w.shape[1]
    return x64 @ w64.T, (k + 2) * U * (np.abs(x64) @ np.abs(w64).T) + 1e-30


# ---------------------------------------------------------------- the kernel

SHAPES = [(1, 1, 1), (63, 31, 1), (64, 33, 2), (130, 256, 3), (200, 1000, 4), (65, 96, 5), (17, 40, 9)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_scalar_twin_within_the_fp32_bound_of_numpy(m, k, n):
    w, x = case(m, k, n)
    exact, bound = exact_and_bound(w, x)
    y = run(_core.QMatrix.from_f16(w), x, "scalar")
    assert np.all(np.abs(y - exact) <= bound)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_every_isa_within_the_bound_and_near_the_twin(isa, m, k, n):
    w, x = case(m, k, n, seed=1)
    q = _core.QMatrix.from_f16(w)
    exact, bound = exact_and_bound(w, x)
    y, twin = run(q, x, isa), run(q, x, "scalar")
    assert np.all(np.abs(y - exact) <= bound)
    assert np.all(np.abs(y - twin) <= 2 * bound)


@pytest.mark.parametrize("isa", ISAS)
def test_a_token_in_a_batch_equals_the_token_alone_and_threads_change_nothing(isa):
    """Each (row, token) sum runs in the same order whatever tokens share its pass: bit for bit."""
    w, x = case(150, 200, 7, seed=2)
    q = _core.QMatrix.from_f16(w)
    batch = run(q, x, isa)
    for i in range(len(x)):
        assert np.array_equal(batch[i], run(q, x[i:i + 1], isa)[0])
    for nt in (2, 3):
        assert np.array_equal(run(q, x, isa, n_threads=nt), batch)


def test_gemm_multi_shares_the_activations():
    w1, x = case(70, 96, 3, seed=3)
    w2, _ = case(130, 96, 1, seed=4)
    a, b = _core.QMatrix.from_f16(w1), _core.QMatrix.from_f16(w2)
    ya, yb = pylut.gemm_multi([a, b], x)
    assert np.array_equal(ya, pylut.gemm(a, x)) and np.array_equal(yb, pylut.gemm(b, x))


def test_weights_are_kept_exactly():
    w, _ = case(70, 45, 1, seed=5)
    q = _core.QMatrix.from_f16(w)
    assert q.type == _core.TYPE_F16 and q.bits == 0 and q.zero is None and q.k_pad == 64
    assert np.array_equal(q.dequantize(), w.astype(np.float32))
    assert np.array_equal(q.row(69), w[69].astype(np.float32))   # the embedding lookup
    assert q.nbytes == 128 * 64 * 2                                 # rows to 64, k to 32: zeros
    w32 = np.float32([[1.0 + 2.0 ** -12, 65504.0]])                 # wider floats round to nearest
    assert np.array_equal(_core.QMatrix.from_f16(w32).dequantize(), np.float32([[1.0, 65504.0]]))


def test_bad_input_is_refused():
    w, x = case(64, 32, 1)
    q = _core.QMatrix.from_f16(w)
    with pytest.raises(ValueError, match="columns but the matrix has k=32"):
        pylut.gemm(q, np.zeros(33, np.float32))
    with pytest.raises(ValueError, match="same k, group, family"):    # F16 beside a bit-plane matrix
        pylut.gemm_multi([q, pylut.quantize(w.astype(np.float32), bits=4, group=32)], x)
    with pytest.raises(ValueError, match="not F16"):
        _core.Tables(q, 1, int8=True)
    with pytest.raises(ValueError, match="codes has 100 bytes, layout needs 4096"):
        _core.QMatrix.from_packed(_core.TYPE_F16, 64, 32, 0, False, np.zeros(100, np.uint8))
    with pytest.raises(ValueError, match="only its fp16 weights"):
        _core.QMatrix.from_packed(_core.TYPE_F16, 64, 32, 0, False, q.codes_buf, scale=np.zeros(64, np.uint16))
    with pytest.raises(ValueError, match="invalid sizes"):             # the C layout refuses a group
        _core.QMatrix.from_packed(_core.TYPE_F16, 64, 32, 64, False, q.codes_buf)
    with pytest.raises(ValueError, match="past fp16's range"):
        _core.QMatrix.from_f16(np.float32([[1e6]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        _core.QMatrix.from_f16(np.float32([[np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        _core.QMatrix.from_f16(np.zeros(4, np.float16))
    with pytest.raises(TypeError, match="floating point"):
        _core.QMatrix.from_f16(np.zeros((2, 2), np.int32))
