"""The many-token table lookups of 2-bit matrices (src/prefill/prefill_lut_avx2.c, taken from
kernels.h's PYLUT_B_MANY_FROM_* tokens): the same tables, integer sums and float epilogue as
the ISA's token-at-a-time walk, so on every ISA a GEMM over n tokens equals n one-token GEMMs
(decode steps) bit for bit, at any thread count, and stays within the table kernels' usual
1e-5 of the scalar twin (test_kernels.py: the SIMD walks order their float work their own
way). Where an ISA has no many-token kernel this checks its one walk against itself."""
import numpy as np
import pytest

import pylut
from pylut import _core

from test_kernels import ISAS

pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


def one_by_one(q, x):
    return np.stack([pylut.gemm(q, x[i:i + 1])[0] for i in range(len(x))])


def check_all_isas(q, x):
    _core.isa_set("scalar")
    twin = pylut.gemm(q, x)
    for isa in ISAS:
        _core.isa_set(isa)
        y = pylut.gemm(q, x)
        assert np.array_equal(one_by_one(q, x), y), isa
        assert np.array_equal(pylut.gemm(q, x, n_threads=2), y), isa
        assert np.abs(y - twin).max() <= 1e-5 * max(float(np.abs(twin).max()), 1e-12), isa
    return twin


@pytest.mark.parametrize("mode", ["ternary", "sym", "zp"])
@pytest.mark.parametrize("m,k,group,n", [(37, 100, 32, 2), (64, 256, 8, 3), (130, 1000, 8, 5),
                                         (70, 800, 96, 7), (65, 512, 256, 4), (100, 768, 16, 66),
                                         (192, 2560, 256, 9)])
def test_many_tokens_equal_one_at_a_time_and_the_twin(mode, m, k, group, n):
    rng = np.random.default_rng(m + k + n)
    q = pylut.quantize(rng.standard_normal((m, k)).astype(np.float32), bits=2, group=group, mode=mode)
    check_all_isas(q, rng.standard_normal((n, k)).astype(np.float32))


@pytest.mark.parametrize("group", [32, 256])
def test_largest_codes_and_table_entries_do_not_overflow(group):
    """Every code 3 and activations of one magnitude, so every table entry is +-127 and a
    group of 256 weights adds 64 k-groups of 381 in int16 (24384, the bound the kernel's
    header proves); alternating signs give entries of every size in between."""
    m, k, n = 64, 512, 6
    q = _core.QMatrix.from_codes(np.full((m, k), 3, np.uint8), np.ones((m, k // group), np.float32),
                                 bits=2, group=group, zero=0)
    x = np.ones((n, k), np.float32)
    x[1] = -1.0
    x[2, ::2] = -1.0
    x[3, ::3] = -1.0
    x[4] *= 1e-3
    x[5] = np.linspace(-1, 1, k)
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    twin = check_all_isas(q, x)
    for isa in ISAS:  # entries of +-127 (and their sums) are exact: so is the product
        _core.isa_set(isa)
        np.testing.assert_allclose(pylut.gemm(q, x)[:3], exact[:3], rtol=1e-6, err_msg=isa)
    np.testing.assert_allclose(twin[:3], exact[:3], rtol=1e-6)


def test_a_ternary_model_matrix_through_the_pool():
    """The I2_S form: one scale for the whole matrix, codes 0..2 with zero 1, several tiles
    split over two threads, a prompt-sized token count with a ragged tail of tokens."""
    rng = np.random.default_rng(5)
    m, k, n = 320, 2560, 131
    trits = rng.integers(-1, 2, (m, k)).astype(np.int8)
    q = pylut.QMatrix.from_codes((trits + 1).astype(np.uint8), np.full((m, k // 256), 0.02, np.float32),
                                 bits=2, group=256, zero=1.0)
    x = rng.standard_normal((n, k)).astype(np.float32)
    twin = check_all_isas(q, x)
    exact = x.astype(np.float64) @ (np.float32(np.float16(0.02)) * trits.astype(np.float64)).T
    assert np.abs(twin - exact).max() <= 0.02 * np.abs(exact).max()
