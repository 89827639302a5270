"""SmolLM3 (`smollm3`): llama's block with RoPE skipped on every 4th layer, against
transformers and llama.cpp on the zoo's tiny model (tests/fixtures/zoo/smollm3, four layers:
layer 3 has no RoPE). The reference applies llama.cpp's rule (src/models/smollm3.cpp) itself."""

import numpy as np
import pytest

pytest.importorskip("gguf")
import pylut  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402
from pylut.formats.gguf_model import load_gguf  # noqa: E402
from hf_folders import edited_copy  # noqa: E402
from ref_forward import forward as ref_forward  # noqa: E402
from test_phi3 import (PYLUT_8BIT_VS_LLAMACPP, SAME_WEIGHTS_TOLERANCE, TRANSFORMERS_TOLERANCE, ZOO,  # noqa: E402
                       dequantized, deviation, file_weights, oracle, prompt_logits)

NAME = "smollm3"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))


def gguf_path(tensor_type):
    return ZOO / NAME / f"{NAME}-{tensor_type}.gguf"


def reference_config(lm):
    """The loader's shapes without its RoPE decisions: the reference applies llama.cpp's."""
    return {k: v for k, v in lm.config.items() if k not in ("rope_skip_layers", "rope_inv_freq")}


def test_reference_matches_transformers_and_needs_the_nope_layer():
    o = oracle(NAME)
    lm = load_gguf(gguf_path("F16"), bits=8)
    assert lm.config["rope_skip_layers"] == [3]
    w, _ = file_weights(gguf_path("F16"))
    prompt = o["prompt"].tolist()
    cfg = reference_config(lm)
    assert deviation(ref_forward(cfg, w, prompt), o["hf_logits"]) <= TRANSFORMERS_TOLERANCE
    every_layer = deviation(ref_forward(dict(cfg, rope_skip_layers=[]), w, prompt), o["hf_logits"])
    assert every_layer > 4 * TRANSFORMERS_TOLERANCE, f"RoPE on layer 3 too is only {every_layer:.3%} away"


@pytest.mark.parametrize("source", ["hf", "F16", "Q8_0"])
def test_logits_match_transformers(source, cache):
    o = oracle(NAME)
    model = pylut.load(ZOO / NAME / "hf" if source == "hf" else gguf_path(source), bits=8, precision="high",
                       n_ctx=160)
    assert model.loaded.arch == "smollm3" and model.loaded.config["rope_skip_layers"] == [3]
    got = prompt_logits(model, o["prompt"])
    same = deviation(got, ref_forward(model.loaded.config, dequantized(model.loaded), o["prompt"].tolist(),
                                      layout="hf" if source == "hf" else "gguf"))
    assert same <= SAME_WEIGHTS_TOLERANCE
    lcpp = deviation(o["lcpp_logits_Q8_0"].astype(np.float32), o["hf_logits"])
    assert deviation(got, o["hf_logits"]) <= PYLUT_8BIT_VS_LLAMACPP * lcpp


@pytest.mark.parametrize("tensor_type", ["F16", "Q8_0"])
def test_greedy_and_llamacpp(tensor_type, cache):
    o = oracle(NAME)
    model = pylut.load(gguf_path(tensor_type), bits=8, precision="high", n_ctx=160)
    prompt = o["prompt"].tolist()
    got = model.state.forward(prompt, model.pool, all_logits=True)
    generated = [int(got[-1].argmax())]
    while len(generated) < 32:
        generated.append(int(model.state.forward([generated[-1]], model.pool).argmax()))
    packed = dequantized(model.loaded)
    ref = ref_forward(reference_config(model.loaded), packed, prompt + generated[:-1])
    assert ref[len(prompt) - 1:].argmax(1).tolist() == generated
    lcpp = o[f"lcpp_logits_{tensor_type}"].astype(np.float32)
    srt = np.sort(ref[:len(prompt)], axis=1)
    decisive = (srt[:, -1] - srt[:, -2]) > np.abs(lcpp - ref[:len(prompt)]).max(axis=1)
    assert float((got.argmax(1) == lcpp.argmax(1))[decisive].mean()) >= 0.95


def test_context_shift_leaves_nope_keys_alone(cache):
    """Keys of the NoPE layer carry no position: a shift moves them unturned."""
    toks = oracle(NAME)["prompt"].tolist()[:20]
    m = pylut.load(gguf_path("Q8_0"), n_ctx=64, batch_invariant=True)
    m.eval(toks)
    before = m.state.kv_array()[0, 3, :, 10:20].copy()
    m.state.shift(4, 6)
    np.testing.assert_array_equal(m.state.kv_array()[0, 3, :, 4:14], before)
    hd = m.loaded.config["head_dim"]
    fresh = pylut.load(gguf_path("Q8_0"), n_ctx=64, batch_invariant=True)
    fresh.eval(toks[:4] + toks[10:])
    keys = lambda model: _core.kv_decode(model.state.kv_array()[0, 0, :, :14], "f16", hd)  # noqa: E731
    assert np.allclose(keys(m), keys(fresh), rtol=2e-3, atol=2e-3)


def test_info_names_the_nope_layers(cache):
    assert "no RoPE on layers 3" in pylut.load(gguf_path("Q8_0"), n_ctx=16).info()["rope"]["summary"]


def edited(tmp_path, edit):
    return edited_copy(ZOO / NAME / "hf", tmp_path / NAME, edit)


def test_hf_no_rope_layers(tmp_path, cache):
    def pattern(c):
        c["no_rope_layers"] = [0, 1, 0, 1]
    assert pylut.load(edited(tmp_path, pattern), n_ctx=16).loaded.config["rope_skip_layers"] == [0, 2]

    def interval(c):
        del c["no_rope_layers"]
        c["no_rope_layer_interval"] = 2
    assert pylut.load(edited(tmp_path / "b", interval), n_ctx=16).loaded.config["rope_skip_layers"] == [1, 3]

    def bad(c):
        c["no_rope_layers"] = [1, 1]
    with pytest.raises(ModelFileError, match="no_rope_layers"):
        pylut.load(edited(tmp_path / "c", bad))
