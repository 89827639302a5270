"""The ternary family as published: bitnet.cpp's I2_S GGUF tensors, the 2B4T graph
(bitnet-b1.58 / bitnet-25: ReLU^2, sub-norms, NEOX RoPE), Hugging Face BitNet checkpoints.

Oracles, none of them pylut's own decoding:
* I2_S: a naive decoder written here from the layout's description, and bytes made by
  bitnet.cpp's own quantizers (tests/fixtures/bitnet/i2s-*, tools/make_bitnet_fixtures.py).
* The graph: tests/ref_forward.py over the same dequantized weights (the tolerances of
  test_model_gguf.py), and ref_forward itself against transformers' BitNet model on the
  committed tiny checkpoints (tests/fixtures/bitnet/<name>/logits*.npy).
"""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
import gguf  # noqa: E402
from model_builder import VOCAB_DIR, build_gguf  # noqa: E402
from ref_forward import forward as ref_forward  # noqa: E402
from test_model_gguf import (GREEDY_LEN, HIGH_LOGIT_RTOL, LOGIT_RTOL, assert_within_tolerance,  # noqa: E402
                             check_forward, dequantized, reference_weights, relative_error)

import pylut  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.app import cli  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402
from pylut.formats import quants  # noqa: E402
from pylut.formats.gguf_model import _convert_matrix, load_gguf  # noqa: E402
from pylut.formats.gguf_reader import GGUFFile  # noqa: E402
from pylut.formats.hf_loader import load_hf  # noqa: E402
from pylut.formats.safetensors_reader import open_safetensors  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "bitnet"
TERNARY_TYPES = ("I2_S", "TQ1_0", "TQ2_0", "F16")
SIZES = dict(dim=256, ffn=512)   # TQ rows are whole 256-weight blocks; I2_S rows whole 128s


# ---------------------------------------------------------------- I2_S, from its description

def naive_i2s(raw: bytes, shape) -> tuple[np.ndarray, float]:
    """The layout as the issue states it, one weight at a time: the tensor flattened row-major
    in blocks of 128 -> 32 bytes; byte j holds weight j (bits 7-6), j+32 (5-4), j+64 (3-2),
    j+96 (1-0); code c is the trit c - 1; then one float32 scale."""
    n = int(np.prod(shape))
    flat = np.empty(n, np.int8)
    for i in range(n):
        block, pos = divmod(i, 128)
        group, j = divmod(pos, 32)
        code = (raw[block * 32 + j] >> (6 - 2 * group)) & 3
        assert code != 3
        flat[i] = code - 1
    scale = float(np.frombuffer(raw[n // 4: n // 4 + 4], "<f4")[0])
    return flat.reshape(shape), scale


def i2s_file_weights(path) -> dict:
    """GGUF name -> float32 weights: gguf's decoding for its types, naive_i2s for I2_S (gguf
    does not know it)."""
    out = {}
    with GGUFFile(path) as f:
        i2s = {name: info for name, info in f.tensors.items() if info.type_name == "I2_S"}
        for name, info in i2s.items():
            trits, scale = naive_i2s(bytes(info.data), info.shape)
            out[name] = trits * np.float32(scale)
    if len(i2s) < len(out) or not i2s:
        return out
    # the other tensors through the gguf package, which stops at type 36: copy them out
    rest = Path(path).with_suffix(".rest.gguf")
    with GGUFFile(path) as f:
        w = gguf.GGUFWriter(str(rest), f.architecture)
        for name, info in f.tensors.items():
            if info.type_name != "I2_S":
                w.add_tensor(name, np.array(info.data), raw_dtype=gguf.GGMLQuantizationType(info.ggml_type))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    out.update(reference_weights(rest))
    return out


def test_i2s_codec_against_the_description():
    rng = np.random.default_rng(3)
    trits = rng.integers(-1, 2, size=(6, 192)).astype(np.int8)   # blocks cross rows: 1152 = 9 * 128
    raw = quants.encode_i2s(trits, 0.375)
    assert raw.size == trits.size // 4 + 32 == quants.i2s_nbytes(trits.size)
    want, scale = naive_i2s(raw.tobytes(), trits.shape)
    np.testing.assert_array_equal(want, trits)
    codes, s = quants.i2s_split(raw, trits.shape)
    assert s == scale == 0.375
    np.testing.assert_array_equal(quants.decode_i2s(codes, trits.shape).view(np.int8) - 1, trits)
    np.testing.assert_array_equal(quants.dequantize(raw, "I2_S", trits.shape), trits * np.float32(0.375))


def test_i2s_bytes_of_bitnetcpps_quantizer():
    """tools/make_bitnet_fixtures.py ran bitnet.cpp's quantize_i2_s (C, x86) and its Python
    quantize_to_i2_s on one ternary matrix; both wrote these bytes. pylut reads exactly the
    trits and the scale, writes the same bytes, and packs the weights exactly (T3 and B2)."""
    meta = json.loads((FIXTURES / "i2s.json").read_text())
    raw = np.fromfile(FIXTURES / "i2s-bitnetcpp.bin", np.uint8)
    trits = np.load(FIXTURES / "i2s-trits.npy")
    shape = tuple(meta["shape"])
    assert trits.shape == shape and raw.size == meta["bytes"] == quants.i2s_nbytes(trits.size)
    codes, scale = quants.i2s_split(raw, shape)
    assert scale == meta["scale"]
    np.testing.assert_array_equal(quants.decode_i2s(codes, shape).view(np.int8) - 1, trits)
    np.testing.assert_array_equal(quants.encode_i2s(trits, scale), raw)
    np.testing.assert_array_equal(naive_i2s(raw.tobytes(), shape)[0], trits)


def test_i2s_tensor_in_a_gguf_packs_exactly(tmp_path):
    """bitnet.cpp's bytes as a GGUF tensor (type 36, extent n/4 + 32): the reader sizes it,
    the loader packs its trits and scale exactly, by row pieces or whole."""
    raw = np.fromfile(FIXTURES / "i2s-bitnetcpp.bin", np.uint8)
    trits = np.load(FIXTURES / "i2s-trits.npy")
    scale = json.loads((FIXTURES / "i2s.json").read_text())["scale"]
    path = tmp_path / "one.gguf"
    w = gguf.GGUFWriter(str(path), "bitnet-b1.58")
    w.add_tensor("m.weight", raw.view(np.int8), raw_shape=trits.shape, raw_dtype=36)
    w.add_tensor("after", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(path) as f:
        info = f.tensors["m.weight"]
        assert info.type_name == "I2_S" and info.shape == trits.shape and info.nbytes == raw.size
        np.testing.assert_array_equal(f.tensors["after"].data.view(np.float32), np.arange(8))
        for layout in ("t3", "b2"):
            lossy = set()
            q = _convert_matrix(f, info, 4, 128, 1.0, None, lossy, "m", layout)
            np.testing.assert_array_equal(q.dequantize(), trits * np.float32(scale), err_msg=layout)
            assert not lossy and (q.type == _core.TYPE_T3) == (layout == "t3")


def test_i2s_scale_beyond_fp16_is_exact(tmp_path):
    """An I2_S scale that fp16 cannot hold (1/3) is kept as the matrix's float32 post-scale:
    the weights and a dequantized row are trits * that float32 exactly, and every product is
    the same packed matrix's without it, times it in float32, whichever kernel ran."""
    rng = np.random.default_rng(3)
    trits = rng.integers(-1, 2, size=(96, 256)).astype(np.int8)
    scale = np.float32(1 / 3)
    assert np.float32(np.float16(scale)) != scale
    path = tmp_path / "third.gguf"
    w = gguf.GGUFWriter(str(path), "bitnet-b1.58")
    w.add_tensor("m.weight", quants.encode_i2s(trits, float(scale)).view(np.int8), raw_shape=trits.shape,
                 raw_dtype=36)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    x = rng.standard_normal((5, 256)).astype(np.float32)
    pool = pylut.get_pool(1)
    with GGUFFile(path) as f:
        for layout in ("t3", "b2"):
            lossy = set()
            q = _convert_matrix(f, f.tensors["m.weight"], 4, 128, 1.0, None, lossy, "m", layout)
            assert not lossy and q.post == scale
            np.testing.assert_array_equal(q.dequantize(), trits * scale)
            np.testing.assert_array_equal(q.row(7), trits[7] * scale)
            unit = _core.QMatrix.from_packed(q.type, 96, 256, q.group, False, q.codes_buf, q.scale_buf, None, q.zero)
            assert unit.post == 1.0
            for int8 in (False, True) if layout == "b2" else (False,):
                y = _core.gemm_multi([q], x, pool, int8=int8)[0]
                np.testing.assert_array_equal(y, _core.gemm_multi([unit], x, pool, int8=int8)[0] * scale)
                ref = x.astype(np.float64) @ (trits * np.float64(scale)).T
                assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max(), (layout, int8)
    for bad in (0.0, float("nan"), float("inf"), 1e39):
        with pytest.raises(ValueError, match="post-scale"):
            unit.set_post(bad)


def test_i2s_unpacks_a_2b4t_matrix_fast():
    """2B4T's FFN matrix (6912 x 2560 = 17.7 M weights) decodes in well under a second."""
    import time
    trits = np.random.default_rng(0).integers(-1, 2, size=(6912, 2560)).astype(np.int8)
    raw = quants.encode_i2s(trits, 1.5)
    t0 = time.perf_counter()
    codes = quants.decode_i2s(quants.i2s_split(raw, trits.shape)[0], trits.shape)
    elapsed = time.perf_counter() - t0
    assert np.array_equal(codes.view(np.int8) - 1, trits)
    assert elapsed < 1.0, f"{elapsed:.2f} s"


# ---------------------------------------------------------------- GGUF files, forward pass

@pytest.mark.parametrize("arch,tensor_type", [("bitnet-b1.58", t) for t in TERNARY_TYPES]
                         + [("bitnet-25", "I2_S")])
def test_2b4t_gguf_matches_the_reference(tmp_path, arch, tensor_type):
    """A 2B4T-shaped file (GQA 4:1, ReLU^2, sub-norms, tied head): the packed weights are the
    file's exactly (I2_S checked against naive_i2s), the logits follow the reference within
    test_model_gguf's tolerances, and at precision='high' all 32 greedy tokens agree."""
    path = tmp_path / f"{arch}-{tensor_type}.gguf"
    written = build_gguf(path, arch, tensor_type, n_heads=8, n_kv_heads=2,
                         type_overrides={"token_embd.weight": "F16"}, **SIZES)
    lm = load_gguf(path)
    assert lm.config["ffn_act"] == "relu2" and lm.config["rope_neox"] and lm.tied_output
    ternary_types = {written[f"blk.0.{m}.weight"] for m in ("attn_q", "ffn_down")}
    assert ternary_types == {tensor_type} and lm.tensor_types["token_embd"] == "F16"
    assert lm.tensors["blk.0.attn_q"].type == _core.TYPE_T3 and not lm.lossy
    file_weights = i2s_file_weights(path) if tensor_type == "I2_S" else reference_weights(path)
    for name, w in dequantized(lm).items():
        if name.startswith("blk."):
            np.testing.assert_array_equal(w, file_weights[name + ".weight"], err_msg=name)
    assert_within_tolerance(check_forward(lm, dequantized(lm)))

    high = load_gguf(path, ternary="b2")
    rel, agree, rel_decode, prefix = check_forward(high, dequantized(high), split_int8=True)
    assert rel <= HIGH_LOGIT_RTOL and rel_decode <= HIGH_LOGIT_RTOL and agree == 1.0
    assert prefix == GREEDY_LEN


LLAMA3_VOCAB = "ggml-vocab-llama-bpe.gguf"


@pytest.mark.parametrize("vocab_from,embd_type,bits", [(LLAMA3_VOCAB, "F16", 4), (None, "Q6_K", 4),
                                                       (None, "F16", 8)])
def test_2b4t_gguf_as_published(tmp_path, cache, vocab_from, embd_type, bits):
    """The published layout: I2_S matrices, the embedding Q6_K (as bitnet.cpp recommends; kept
    in its own grid) or F16 (packed to `bits`), the LM head tied to it, a real llama-3
    vocabulary; through pylut.load at precision='high': 32 greedy tokens as the reference's."""
    if vocab_from and not (VOCAB_DIR / vocab_from).exists():
        pytest.skip(f"{vocab_from} not found in {VOCAB_DIR}")
    path = tmp_path / "2b4t.gguf"
    size = dict(dim=128, ffn=256) if vocab_from else dict(dim=256, ffn=512)   # Q6_K: rows of 256
    build_gguf(path, "bitnet-b1.58", "I2_S", vocab_from=vocab_from, n_layers=2, n_heads=4, n_kv_heads=1,
               type_overrides={"token_embd.weight": embd_type}, **size)
    model = pylut.load(path, precision="high", bits=bits)
    lm = model.loaded
    assert lm.tied_output and lm.config["vocab"] == (128256 if vocab_from else 300)
    assert lm.tensor_types["token_embd"] == embd_type and lm.tensor_types["blk.0.attn_q"] == "I2_S"
    embd = lm.tensors["token_embd"]
    if embd_type == "Q6_K":   # the file's codes and two-level scales: its weights exactly
        assert embd.bits == 6 and embd.super_block and "token_embd" not in lm.lossy
    else:
        assert embd.bits == bits
    if vocab_from:
        assert model.tokenizer.encode("Hello world") == [9906, 1917]
    rel, agree, rel_decode, prefix = check_forward(lm, dequantized(lm), split_int8=True)
    assert rel <= HIGH_LOGIT_RTOL and rel_decode <= HIGH_LOGIT_RTOL and prefix == GREEDY_LEN


def test_relu2_not_silu(tmp_path):
    """The 2B4T graph must gate with ReLU^2 (bitnet.cpp's SiLU build gets perplexity 99.82
    for 17.11): pylut's logits follow the ReLU^2 reference, and the SiLU one is far off.
    The layers write into the residual at full gain, so the FFN moves the logits."""
    path = tmp_path / "m.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", residual_gain=1.0, **SIZES)
    lm = load_gguf(path, ternary="b2")
    weights = dequantized(lm)
    prompt = np.random.default_rng(5).integers(0, lm.config["vocab"], 16)
    session = _core.Session(lm.build(), n_ctx=16, split_int8=True)   # precision='high'
    got = session.forward(prompt, pylut.get_pool(), all_logits=True)
    relu2 = ref_forward(lm.config, weights, prompt)
    silu = ref_forward(lm.config, weights, prompt, ffn_act="silu")
    assert relative_error(got, relu2) <= HIGH_LOGIT_RTOL
    assert relative_error(got, silu) > 50 * HIGH_LOGIT_RTOL
    # many gate activations are negative: ReLU^2 zeroes them, SiLU passes a tail
    xb = weights["blk.0.ffn_norm"] * weights["token_embd"][prompt]
    assert (xb @ weights["blk.0.ffn_gate"].T < 0).mean() > 0.3


def test_older_bitnet_with_i2s_and_scale_tensors(tmp_path):
    """llama.cpp's `bitnet` (1bitLLM 3B; SiLU) with per-tensor `*.scale` tensors beside I2_S
    matrices: each matrix is trits * I2_S scale * that factor, and the logits follow."""
    path = tmp_path / "b.gguf"
    build_gguf(path, "bitnet", "I2_S", scale_tensors=True, **SIZES)
    lm = load_gguf(path)
    assert lm.config["ffn_act"] == "silu"
    file_weights = i2s_file_weights(path)
    with GGUFFile(path) as f:
        factor = float(f.tensors["blk.1.ffn_up.scale"].data.view(np.float32)[0])
    assert factor != 1.0
    w = lm.tensors["blk.1.ffn_up"].dequantize()
    np.testing.assert_allclose(w, file_weights["blk.1.ffn_up.weight"] * factor, rtol=2 ** -11)
    assert_within_tolerance(check_forward(lm, dequantized(lm)))


def test_info_names_arch_types_and_bits(tmp_path, cache, capsys):
    path = tmp_path / "2b4t.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", **SIZES)
    rc = cli.main(["info", str(path)])
    out = capsys.readouterr().out
    assert rc in (0, None)
    assert "architecture:  bitnet-b1.58" in out and "I2_S x14" in out and "bits/weight:" in out
    rc = cli.main(["info", str(path), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "bitnet-b1.58" and info["tensor_type_counts"]["I2_S"] == 14
    assert 1.67 < info["bits_per_weight"] < 5.0  # ternary as T3 (1.67 + scales) or B2 (2 + scales)


# ---------------------------------------------------------------- bad input

def _tensor(path, name):
    with GGUFFile(path) as f:
        info = f.tensors[name]
        return info.offset, info.nbytes


def test_i2s_code_3_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", **SIZES)
    offset, _ = _tensor(path, "blk.1.ffn_up.weight")
    with open(path, "r+b") as f:
        f.seek(offset + 100)
        f.write(bytes([0xC0 | (f.read(1)[0] & 0x3F)]))   # bits 7-6 := 3
    with pytest.raises(ModelFileError, match=r"'blk\.1\.ffn_up\.weight'.*code 3"):
        load_gguf(path)


def test_truncated_i2s_tensor_is_refused(tmp_path):
    # the last tensor loses its scale: the file ends before its n/4 + 32 bytes
    path = tmp_path / "end.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", truncate_i2s=32, truncate_name="blk.1.ffn_down.weight", **SIZES)
    with pytest.raises(ModelFileError, match=r"truncated file: tensor 'blk\.1\.ffn_down\.weight' \(I2_S"):
        load_gguf(path)
    # a tensor in the middle written without its scale: it runs into the next one
    path = tmp_path / "mid.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", truncate_i2s=32, truncate_name="blk.0.attn_q.weight", **SIZES)
    with pytest.raises(ModelFileError, match=r"'blk\.0\.attn_q\.weight' and .* overlap"):
        load_gguf(path)


def test_i2s_not_whole_blocks_is_refused(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "bitnet-b1.58")
    w.add_tensor("odd.weight", np.zeros(3 * 40 // 4 + 32, np.int8), raw_shape=(3, 40), raw_dtype=36)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match=r"'odd\.weight' of type I2_S .* not whole blocks of 128"):
        GGUFFile(path)


@pytest.mark.parametrize("missing", ["blk.0.attn_sub_norm.weight", "blk.1.ffn_sub_norm.weight"])
def test_missing_sub_norm_is_refused(tmp_path, missing):
    path = tmp_path / "m.gguf"
    build_gguf(path, "bitnet-b1.58", "I2_S", omit=[missing], **SIZES)
    with pytest.raises(ModelFileError, match=f"missing tensor '{missing}'"):
        load_gguf(path)


# ---------------------------------------------------------------- Hugging Face checkpoints

HF_NAMES = ("bitnet_2b4t", "bitnet_autobitlinear", "falcon3_style")
_HF_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_norm": "post_attention_layernorm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
               "ffn_sub_norm": "mlp.ffn_sub_norm"}


def hf_weights(folder: Path, n_layers: int) -> dict:
    """core name -> float32 weights of a packed BitNet folder, decoded here from transformers'
    description: byte row r's bits 2i hold row i*R + r, weight = code - 1, then divided by
    weight_scale (linear_class bitlinear) or multiplied (autobitlinear)."""
    divide = json.loads((folder / "config.json").read_text())["quantization_config"]["linear_class"] == "bitlinear"
    out = {}
    with open_safetensors(str(folder)) as st:
        def get(name):
            info = st[name]
            if info.dtype != "U8":
                return np.array(info.to_float32())
            packed = info.array()
            rows = np.concatenate([(packed >> (2 * i)) & 3 for i in range(4)]).astype(np.float32) - 1
            s = st[name[: -len(".weight")] + ".weight_scale"].to_float32()[0]
            return rows / s if divide else rows * s
        out["token_embd"] = out["output"] = get("model.embed_tokens.weight")
        out["output_norm"] = get("model.norm.weight")
        for layer in range(n_layers):
            for core, hf in _HF_TENSORS.items():
                name = f"model.layers.{layer}.{hf}.weight"
                if name in st:
                    out[f"blk.{layer}.{core}"] = get(name)
    return out


@pytest.mark.parametrize("name", HF_NAMES)
def test_reference_against_transformers(name):
    """ref_forward over the checkpoint's weights against transformers' own model on it:
    with transformers' int8 activation quantization switched off the two are the same
    computation (float rounding apart); with it, within its few % of the logit range."""
    folder = FIXTURES / name
    lm = load_hf(folder)
    weights = hf_weights(folder, lm.config["n_layers"])
    tokens = np.load(folder / "tokens.npy")
    ref = ref_forward(lm.config, weights, tokens, layout="hf")
    assert relative_error(ref, np.load(folder / "logits_float_act.npy")) < 1e-5
    assert relative_error(ref, np.load(folder / "logits.npy")) < 0.05
    wrong_act = ref_forward(lm.config, weights, tokens, layout="hf",
                            ffn_act="silu" if lm.config["ffn_act"] == "relu2" else "relu2")
    assert relative_error(wrong_act, np.load(folder / "logits_float_act.npy")) > 0.01


@pytest.mark.parametrize("name", HF_NAMES)
def test_hf_bitnet_folder_matches_the_reference(name, cache):
    """The packed trits are kept exactly and weight_scale applied as transformers applies it
    (scales to fp16, as every pylut scale); logits within tolerance; at precision='high'
    32 greedy tokens as the reference's; pylut.load serves the folder."""
    folder = FIXTURES / name
    lm = load_hf(folder)
    want_arch = "llama" if name == "falcon3_style" else "bitnet-b1.58"
    assert lm.arch == want_arch and lm.config["ffn_act"] == ("silu" if want_arch == "llama" else "relu2")
    assert lm.tied_output and lm.tensor_types["blk.0.attn_q"] == "ternary-U8"
    checkpoint = hf_weights(folder, lm.config["n_layers"])
    for core, w in dequantized(lm).items():
        if core.startswith("blk.") and w.ndim == 2:
            np.testing.assert_allclose(w, checkpoint[core], rtol=2 ** -11, err_msg=core)
            assert lm.tensors[core].type == _core.TYPE_T3
    assert_within_tolerance(check_forward(lm, dequantized(lm), layout="hf"))

    high = load_hf(folder, ternary="b2")
    rel, agree, rel_decode, prefix = check_forward(high, dequantized(high), split_int8=True, layout="hf")
    assert rel <= HIGH_LOGIT_RTOL and rel_decode <= HIGH_LOGIT_RTOL and prefix == GREEDY_LEN

    model = pylut.load(folder, precision="high")
    tokens = np.load(folder / "tokens.npy")
    got = model.state.forward(tokens, pylut.get_pool(), all_logits=True)
    ref = ref_forward(model.loaded.config, dequantized(model.loaded), tokens, layout="hf")
    assert relative_error(got, ref) <= HIGH_LOGIT_RTOL


def _copy_folder(src: Path, dst: Path, config_edit=None, tensor_edit=None) -> Path:
    import shutil
    shutil.copytree(src, dst)
    if config_edit:
        cfg = json.loads((dst / "config.json").read_text())
        config_edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensor_edit:
        tensor_edit(dst / "model.safetensors")
    return dst


def test_hf_bitnet_bad_input(tmp_path):
    src = FIXTURES / "bitnet_2b4t"

    def silu(cfg):
        cfg["hidden_act"] = "silu"
    with pytest.raises(ModelFileError, match="hidden_act = 'silu'"):
        load_hf(_copy_folder(src, tmp_path / "silu", silu))

    def online(cfg):
        cfg["quantization_config"]["quantization_mode"] = "online"
    with pytest.raises(ModelFileError, match="quantization_mode = 'online'"):
        load_hf(_copy_folder(src, tmp_path / "online", online))

    def code3(path):
        with open_safetensors(str(path.parent)) as st:
            info = st["model.layers.1.mlp.up_proj.weight"]
            offset = info.offset
        with open(path, "r+b") as f:
            f.seek(offset + 5)
            f.write(b"\xff")
    with pytest.raises(ModelFileError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' holds the code 3"):
        load_hf(_copy_folder(src, tmp_path / "code3", tensor_edit=code3))


def write_2b4t_i2s_gguf(folder: Path, path: Path) -> None:
    """A BitNet checkpoint written as bitnet.cpp writes 2B4T: I2_S matrices with the scale
    1 / weight_scale, the tied embedding F16, F32 norms."""
    from model_builder import _made_up_tokenizer
    cfg = load_hf(folder).config
    weights = hf_weights(folder, cfg["n_layers"])
    w = gguf.GGUFWriter(str(path), "bitnet-b1.58")
    _made_up_tokenizer(w, cfg["vocab"])
    w.add_block_count(cfg["n_layers"])
    w.add_context_length(cfg["max_ctx"])
    w.add_embedding_length(cfg["dim"])
    w.add_feed_forward_length(cfg["ffn_dim"])
    w.add_head_count(cfg["n_heads"])
    w.add_head_count_kv(cfg["n_kv_heads"])
    w.add_layer_norm_rms_eps(cfg["norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    for name, value in weights.items():
        if name == "output":
            continue
        if name == "token_embd":
            w.add_tensor(name + ".weight", value.astype(np.float16))
        elif value.ndim == 1:
            w.add_tensor(name + ".weight", value.astype(np.float32))
        else:
            scale = np.float32(np.abs(value).max())
            trits = np.rint(value / scale).astype(np.int8)
            np.testing.assert_array_equal(trits * scale, value, err_msg=name)
            w.add_tensor(name + ".weight", quants.encode_i2s(trits, scale).view(np.int8), raw_shape=value.shape,
                         raw_dtype=36)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_2b4t_checkpoint_as_i2s_gguf_matches_transformers(tmp_path):
    """The bitnet_2b4t checkpoint as bitnet.cpp's 2B4T file (write_2b4t_i2s_gguf): pylut packs
    the same layers from the file as from the folder, and both follow transformers' logits
    within LOGIT_RTOL."""
    folder = FIXTURES / "bitnet_2b4t"
    path = tmp_path / "2b4t-i2s.gguf"
    write_2b4t_i2s_gguf(folder, path)
    lm, hf = load_gguf(path, bits=8), load_hf(folder, bits=8)
    assert lm.tensor_types["blk.0.ffn_down"] == "I2_S" and lm.config["ffn_act"] == "relu2"
    from_gguf, from_folder = dequantized(lm), dequantized(hf)
    for name, value in from_folder.items():   # the same trits and fp16 scales, the same norms
        if name.startswith("blk."):
            np.testing.assert_array_equal(from_gguf[name], value, err_msg=name)
    tokens = np.load(folder / "tokens.npy")
    want = np.load(folder / "logits_float_act.npy")
    for loaded in (lm, hf):   # the embedding at 8 bits (each loader's float quantizer)
        got = _core.Session(loaded.build(), n_ctx=32).forward(tokens, pylut.get_pool(), all_logits=True)
        assert relative_error(got, want) <= LOGIT_RTOL
