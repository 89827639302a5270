"""Models with F16 matrices (fp16 weights kept, src/f16/): bits="f16" keeps F16 matrices
exactly (BF16/F32 rounded, listed lossy) and precision="high" takes it by default; BitNet
2B4T's tied F16 head loads losslessly and follows transformers; the pack cache, `pylut
convert` and `pylut info` keep and show it; bad input is refused."""
import numpy as np
import pytest

pytest.importorskip("gguf")
import pylut  # noqa: E402
from model_builder import build_gguf  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402
from pylut.kernels import packed_types  # noqa: E402
from pylut.options import LoadOptions  # noqa: E402
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
