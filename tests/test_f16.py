"""F16 matrices (src/f16/): fp16 weights kept as stored, fp32 activations and sums.

* The kernel: the scalar twin against numpy in float64 within the rounding bound of an fp32
  sum, every SIMD unit this CPU has against the same bound and against the twin; tokens,
  threads and matrix sharing do not change results.
* Loading: bits="f16" keeps F16 matrices exactly (BF16/F32 rounded, listed lossy), and
  precision="high" takes it by default; the 2B4T checkpoint with its tied F16 head against
  transformers; the pack cache; `pylut info`; bad input refused.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.errors import ModelFileError
from pylut.kernels import packed_types
from pylut.options import LoadOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
    with pytest.raises(ValueError, match="not T3 or F16"):
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


# ---------------------------------------------------------------- loading

from model_builder import build_gguf  # noqa: E402

gguf = pytest.importorskip("gguf")
from test_model_gguf import (HIGH_LOGIT_RTOL, check_forward, dequantized, reference_weights,  # noqa: E402
                             relative_error)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))


def test_options():
    assert LoadOptions().float_bits() == 4 and LoadOptions(precision="high").float_bits() == "f16"
    assert LoadOptions(bits=8, precision="high").float_bits() == 8   # given: kept
    assert LoadOptions(bits="f16").float_bits() == "f16"
    for bad in ("f32", 7, True, 4.0):
        with pytest.raises(ValueError, match="bits must be one of"):
            LoadOptions(bits=bad)


def test_f16_file_loads_exactly_and_follows_the_reference(tmp_path):
    """Every F16 matrix as the file stores it (the gguf package's decoding), nothing lossy;
    the forward pass then differs from the float reference only by fp32 sums (and, where a
    matrix reads int8 activations, none here: every matrix is F16)."""
    from pylut.formats.gguf_model import load_gguf
    path = tmp_path / "m.gguf"
    build_gguf(path, "qwen2", "F16")
    lm = load_gguf(path, bits="f16")
    assert set(packed_types(lm.tensors)) == {"F16"} and not lm.lossy
    file_weights = reference_weights(path)
    for name, w in dequantized(lm).items():
        if w.ndim == 2:
            np.testing.assert_array_equal(w, file_weights[name + ".weight"], err_msg=name)
    assert lm.bits_per_weight == pytest.approx(16.0, rel=0.1)
    rel, agree, rel_decode, prefix = check_forward(lm, dequantized(lm))
    assert rel <= 1e-4 and rel_decode <= 1e-4 and agree == 1.0 and prefix == 32


@pytest.mark.parametrize("tensor_type", ["F32", "BF16"])
def test_wider_floats_round_to_fp16_and_say_so(tmp_path, tensor_type):
    from pylut.formats.gguf_model import load_gguf
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", tensor_type)
    lm = load_gguf(path, bits="f16")
    file_weights = reference_weights(path)
    for name, q in lm.tensors.items():
        if isinstance(q, _core.QMatrix):
            src = file_weights[name + ".weight"].astype(np.float32)
            np.testing.assert_array_equal(q.dequantize(), src.astype(np.float16).astype(np.float32))
            changed = not np.array_equal(src.astype(np.float16).astype(np.float32), src)
            assert (name in lm.lossy) == changed, name
    if tensor_type == "F32":   # random float32 values do not fit fp16's 11 bits
        assert "blk.0.attn_q" in lm.lossy


def test_values_past_fp16_are_refused_naming_the_tensor(tmp_path):
    from pylut.formats.gguf_model import load_gguf
    from pylut.formats.gguf_reader import GGUFFile
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "F32")
    with GGUFFile(path) as f:
        offset = f.tensors["blk.1.ffn_up.weight"].offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 4 * 7)
        fh.write(np.float32(1e6).tobytes())
    with pytest.raises(ModelFileError, match=r"'blk\.1\.ffn_up\.weight'.*past fp16's range"):
        load_gguf(path, bits="f16")


def test_2b4t_tied_f16_head_loads_losslessly_and_follows_transformers(tmp_path):
    """BitNet 2B4T's tied F16 head (issue 18's lossless option): the 2B4T-shaped checkpoint
    written as bitnet.cpp's I2_S file with its F16 embedding, loaded with bits="f16": the
    embedding and head are the file's fp16 values exactly, and pylut at precision='high'
    follows transformers (activation quantization off) far closer than with the head at
    4 or 8 bits."""
    from pylut.formats.gguf_model import load_gguf
    from pylut.formats.gguf_reader import GGUFFile
    from test_bitnet import FIXTURES, write_2b4t_i2s_gguf
    folder = FIXTURES / "bitnet_2b4t"
    path = tmp_path / "2b4t.gguf"
    write_2b4t_i2s_gguf(folder, path)
    tokens = np.load(folder / "tokens.npy")
    want = np.load(folder / "logits_float_act.npy")
    errors = {}
    for bits in ("f16", 8, 4):
        lm = load_gguf(path, bits=bits, ternary="b2")
        got = _core.Session(lm.build(), n_ctx=32, split_int8=True).forward(tokens, pylut.get_pool(), all_logits=True)
        errors[bits] = relative_error(got, want)
        if bits == "f16":
            embd = lm.tensors["token_embd"]
            # (the I2_S matrices' scales 1 / weight_scale round to fp16: listed, but not the head)
            assert embd.type == _core.TYPE_F16 and lm.tensors["output"] is embd and "token_embd" not in lm.lossy
            with GGUFFile(path) as f:
                info = f.tensors["token_embd.weight"]
                stored = np.asarray(info.data).view(np.float16).reshape(info.shape).astype(np.float32)
            np.testing.assert_array_equal(embd.dequantize(), stored)
            rel, agree, rel_decode, prefix = check_forward(lm, dequantized(lm), split_int8=True)
            assert rel <= HIGH_LOGIT_RTOL and rel_decode <= HIGH_LOGIT_RTOL and prefix == 32
    assert errors["f16"] <= HIGH_LOGIT_RTOL, errors
    assert errors["f16"] < errors[8] / 4 < errors[4] / 4, errors


def test_pack_cache_and_info_keep_f16(tmp_path, cache, capsys):
    """The packed-model cache stores F16 matrices (a second load maps them back: the same
    bytes), `pylut convert --bits f16` writes them, and `pylut info` names the packing."""
    from pylut.app import cli
    from pylut.formats import packcache
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "F16", tied=True)
    first = pylut.load(path, bits="f16")
    second = pylut.load(path, bits="f16")
    assert packcache.cache_path(str(path), bits="f16", requant=None) != packcache.cache_path(str(path), bits=4,
                                                                                            requant=None)
    a, b = first.loaded.tensors["token_embd"], second.loaded.tensors["token_embd"]
    assert b.type == _core.TYPE_F16 and np.array_equal(a.codes_buf, b.codes_buf)
    prompt = [1, 2, 3, 4]
    assert np.array_equal(first.eval(prompt), second.eval(prompt))
    assert cli.main(["convert", str(path), str(tmp_path / "m.pylut"), "--bits", "f16"]) == 0
    packed = pylut.load(tmp_path / "m.pylut")
    assert set(packed_types(packed.loaded.tensors)) == {"F16"}
    assert np.array_equal(packed.eval(prompt), first.eval(prompt))
    capsys.readouterr()
    assert cli.main(["info", str(path), "--bits", "f16"]) == 0
    out = capsys.readouterr().out
    assert "tensor types:  F16 x16" in out and "packed as:     F16 x15\n" in out   # 2 x 7, the tied embedding
    assert cli.main(["info", str(path)]) == 0
    assert "packed as:     B4 x15\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["info", str(path), "--bits", "f32"])


def test_model_refuses_an_f16_matrix_of_the_wrong_shape(tmp_path):
    from pylut.formats.gguf_model import load_gguf
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "F16")
    lm = load_gguf(path, bits="f16")
    tensors = dict(lm.tensors, **{"blk.0.attn_q": _core.QMatrix.from_f16(np.zeros((64, 32), np.float16))})
    with pytest.raises(ValueError, match="attention q/k/v shape"):
        _core.Model(lm.config, tensors)
