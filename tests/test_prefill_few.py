"""The few-token int8 kernel (src/prefill/prefill_few_gfni.c: batched decode steps of 2..47
tokens on the AVX-512 VBMI tier): bit-identical to the portable twin for every plain 2..4-plane
layout, at token counts on both sides of its 4-token blocks, its 16-token passes and the hand-over
to the many-token driver (PYLUT_I8_FEW_TO 18, _2BIT 48), with one- and two-part activations,
ragged rows and k, and threads splitting the tiles. The twin's own accuracy against
dequantize-then-matmul is tests/test_prefill.py's check()."""
import numpy as np
import pytest

import pylut
from pylut import _core

from test_prefill import check

pytestmark = [pytest.mark.usefixtures("restore_isa"),  # conftest.py
              pytest.mark.skipif("avx512vbmi" not in _core.isa_supported(),
                                 reason="the few-token kernel is the AVX-512 VBMI tier's")]


def pair(q, x, split=False, n_threads=1):
    _core.isa_set("scalar")
    ref = pylut.gemm(q, x, n_threads=n_threads, int8=True, split=split)
    _core.isa_set("avx512vbmi")
    return ref, pylut.gemm(q, x, n_threads=n_threads, int8=True, split=split)


@pytest.mark.parametrize("mode,bits,group", [("sym", 4, 32), ("zp", 4, 64), ("sym", 3, 32), ("zp", 3, 16),
                                             ("zp", 2, 32), ("ternary", 2, 256), ("sym", 2, 128)])
def test_few_tokens_equal_the_twin(mode, bits, group):
    rng = np.random.default_rng(bits * 100 + group)
    # 200 rows: a ragged last tile; k 1000: a ragged last group and several 256-wide chunks
    q = pylut.quantize(rng.standard_normal((200, 1000)).astype(np.float32), bits=bits, group=group, mode=mode)
    for n in (1, 2, 3, 4, 5, 7, 8, 11, 15, 16, 17, 18, 19, 33, 47, 48):
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
    for bits in (2, 3, 4):
        codes = np.full((130, 512), (1 << bits) - 1, np.uint8)
        codes[::3] = 0
        s = rng.uniform(0.5, 2.0, (130, 512 // 32)).astype(np.float32)
        q = pylut.QMatrix.from_codes(codes, s, None, bits=bits, group=32, zero=None)
        x = np.where(rng.random((5, 512)) < 0.5, -1e3, 1e3).astype(np.float32)
        x[2] = 0.0
        ref, got = pair(q, x, n_threads=2)
        assert np.array_equal(got, ref), bits
        assert np.all(ref[2] == 0.0)


def test_model_steps_take_int8_from_two_tokens():
    """The VBMI tier sends plain 2..4-bit chunks of 2+ tokens to the int8 kernel (and one token to
    the tables); two-level scales keep their thresholds."""
    _core.isa_set("avx512vbmi")
    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    for bits in (2, 3, 4):
        q = pylut.quantize(w, bits=bits, group=32)
        assert not _core.i8_preferred(q, 1) and _core.i8_preferred(q, 2), bits
