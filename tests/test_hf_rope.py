"""RoPE bases and scalings as checkpoints state them: Hugging Face folders written by
transformers 5 (tests/fixtures/hf, made by tools/make_hf_fixtures.py) match transformers'
own logits; GGUF rope_freqs.weight and rope.scaling.* compute the same frequencies; config
keys pylut does not compute are refused by name. No torch needed: the oracle is committed."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import rope
from pylut.errors import ModelFileError
from pylut.formats.gguf_model import load_gguf

from hf_folders import edited_copy
from model_builder import build_gguf
from ref_forward import forward

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
FOLDERS = ["llama", "mistral", "qwen2_theta1e6", "llama3_scaled", "qwen2_yarn", "llama_old_layout"]
TOLERANCE = 0.02  # of transformers' logit range, at bits=8, precision="high"
# pylut against the numpy reference over the same dequantized weights (precision="high"
# leaves only activation rounding, ~0.1 % of the range; test_model_gguf)
SAME_WEIGHTS_TOLERANCE = 0.005


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))


def reference(name):
    folder = FIXTURES / name
    meta = json.loads((folder / "reference.json").read_text())
    return (folder, meta, np.load(folder / "tokens.npy"), np.load(folder / "logits.npy"),
            np.load(folder / "inv_freq.npy"))


def deviation(model, tokens, logits):
    """max |pylut - transformers| over the prompt, as a fraction of transformers' logit range."""
    out = model.state.forward([int(t) for t in tokens], model.pool, all_logits=True)
    model.state.truncate(0)
    return float(np.abs(out[:, :logits.shape[1]] - logits).max() / np.ptp(logits))


def edited(tmp_path, name, edit):
    """A copy of fixture `name` whose config.json went through edit(dict) (in place)."""
    return edited_copy(FIXTURES / name, tmp_path / name, edit)


# ---------------------------------------------------------------- against transformers

@pytest.mark.parametrize("name", FOLDERS)
def test_logits_match_transformers(name, cache):
    folder, meta, tokens, logits, inv_freq = reference(name)
    model = pylut.load(folder, bits=8, precision="high", n_ctx=64)
    assert model.tokenize(meta["prompt"], add_bos=False) == tokens.tolist()
    cfg = model.loaded.config
    # the frequencies pylut computed from the config are transformers' own
    np.testing.assert_allclose(cfg["rope_inv_freq"], inv_freq, rtol=2e-6)
    assert cfg["rope_attn_factor"] == pytest.approx(meta["attention_scaling"], rel=1e-6)
    err = deviation(model, tokens, logits)
    assert err <= TOLERANCE, f"{name}: logits {err:.2%} of the range away from transformers'"


@pytest.mark.parametrize("name,theta,kind", [("qwen2_theta1e6", 1e6, "default"),
                                             ("llama3_scaled", 5e5, "llama3"),
                                             ("qwen2_yarn", 1e4, "yarn"),
                                             ("llama_old_layout", 2e4, "linear")])
def test_ignoring_the_rope_config_is_caught(tmp_path, cache, name, theta, kind):
    """The fixtures are sensitive to RoPE: the same folder without its rope settings (base
    10000, no scaling) is far outside the tolerance, so the test above fails if pylut ignores
    rope_parameters / rope_scaling."""
    _, _, tokens, logits, _ = reference(name)
    model = pylut.load(FIXTURES / name, bits=8, precision="high", n_ctx=64)
    assert model.loaded.config["rope_theta"] == theta
    assert model.loaded.config["rope_scaling"]["type"] == kind
    assert kind in model.info()["rope"]["summary"]

    def strip(cfg):
        for key in ("rope_parameters", "rope_scaling", "rope_theta"):
            cfg.pop(key, None)
    plain = pylut.load(edited(tmp_path, name, strip), bits=8, precision="high", n_ctx=64)
    assert plain.loaded.config["rope_theta"] == rope.DEFAULT_THETA
    err = deviation(plain, tokens, logits)
    assert err > 3 * TOLERANCE, f"{name}: base 10000 unscaled is only {err:.2%} away"


def test_old_layout_reads_top_level_keys(cache):
    cfg = json.loads((FIXTURES / "llama_old_layout" / "config.json").read_text())
    assert "rope_parameters" not in cfg and cfg["rope_scaling"]["type"] == "linear"
    model = pylut.load(FIXTURES / "llama_old_layout", bits=8, n_ctx=32)
    assert model.loaded.config["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert model.info()["rope"]["summary"] == "base 20000 linear (factor 2)"


def test_sliding_window_is_applied(cache):
    """Mistral's window (128) is under its 256 positions: every layer is windowed and the whole
    context runs (tests/test_sliding_window.py checks the logits past the window)."""
    model = pylut.load(FIXTURES / "mistral", bits=8, n_ctx=129)
    cfg = model.loaded.config
    assert cfg["max_ctx"] == 256 and cfg["sliding_window"] == 128 and cfg["swa_layers"] == [True] * cfg["n_layers"]


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("edit,message", [
    (lambda c: c["rope_parameters"].update(rope_type="dynamic", factor=2.0), "rope_type 'dynamic'"),
    (lambda c: c["rope_parameters"].update(rope_type="longrope"), "rope_type 'longrope'"),
    (lambda c: c["rope_parameters"].update(rope_type="su-rope"), "rope_type 'su-rope'"),
    (lambda c: c["rope_parameters"].update(mrope_section=[2, 3, 3]), "'mrope_section'"),
    (lambda c: c["rope_parameters"].update(rope_type="linear"), "needs 'factor'"),
    (lambda c: c.update(rope_theta=500000.0), "rope_theta"),  # disagrees with rope_parameters
    (lambda c: c.update(rope_scaling={"type": "linear", "factor": 4.0}), "rope_scaling"),
    (lambda c: c.update(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (lambda c: c.update(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
    (lambda c: c.update(final_logit_softcapping=30.0), "final_logit_softcapping"),
    (lambda c: c.update(hidden_act="gelu_pytorch_tanh"), "hidden_act"),
    (lambda c: c.update(mlp_bias=True), "mlp_bias"),
    (lambda c: c.update(sliding_window=64), "sliding_window"),
    (lambda c: c.update(tie_word_embeddings="yes"), "tie_word_embeddings"),
    (lambda c: c.update(rms_norm_eps=0.0), "rms_norm_eps"),
])
def test_refused_with_the_key_named(tmp_path, cache, edit, message):
    with pytest.raises(ModelFileError, match=message):
        pylut.load(edited(tmp_path, "llama", edit), bits=8)


def test_defaults_only_where_the_config_is_silent(tmp_path, cache, caplog):
    def silent(cfg):
        for key in ("rope_parameters", "rms_norm_eps", "head_dim", "tie_word_embeddings"):
            del cfg[key]
        cfg["some_new_knob"] = 3
    with caplog.at_level(logging.WARNING, logger="pylut"):
        model = pylut.load(edited(tmp_path, "llama", silent), bits=8)
    cfg = model.loaded.config
    assert (cfg["rope_theta"], cfg["norm_eps"], cfg["head_dim"]) == (10000.0, 1e-6, 16)
    assert cfg["rope_scaling"] == {"type": "default"}
    assert "some_new_knob" in caplog.text  # an unknown key is named, not silently dropped


def test_scaling_formulas_by_hand():
    """The llama3 and YaRN bands, computed independently of pylut.rope's vectorised form."""
    hd, theta = 16, 500000.0
    base = theta ** (-np.arange(0, hd, 2) / hd)
    s = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64.0}
    inv, attn = rope.inv_freq(hd, theta, s)
    for i, f in enumerate(base):
        wl = 2 * np.pi / f
        if wl < 64 / 4:
            want = f
        elif wl > 64 / 1:
            want = f / 8
        else:
            smooth = (64 / wl - 1) / (4 - 1)
            want = (1 - smooth) * f / 8 + smooth * f
        assert inv[i] == pytest.approx(want, rel=1e-6)
    assert attn == 1.0
    inv, attn = rope.inv_freq(hd, 1e4, {"type": "linear", "factor": 2.0})
    np.testing.assert_allclose(inv, 1e4 ** (-np.arange(0, hd, 2) / hd) / 2, rtol=1e-6)
    with pytest.raises(ModelFileError, match="'ntk'"):
        rope.inv_freq(hd, 1e4, {"type": "ntk"})


# ---------------------------------------------------------------- GGUF

def transformers_factors(name):
    """rope_freqs.weight as llama.cpp's converter writes it for fixture `name`: each pair's
    unscaled frequency over transformers' scaled one."""
    _, meta, _, _, inv_freq = reference(name)
    theta = meta["rope_parameters"]["rope_theta"]
    base = theta ** (-np.arange(0, 2 * len(inv_freq), 2, dtype=np.float64) / (2 * len(inv_freq)))
    return theta, base / inv_freq.astype(np.float64), inv_freq


def gguf_logits(lm, prompt_len=60):
    """(dequantized weights, a random prompt) for the reference forward."""
    weights = {k: (t.dequantize() if hasattr(t, "dequantize") else np.asarray(t)) for k, t in lm.tensors.items()}
    tokens = list(np.random.default_rng(1).integers(2, lm.config["vocab"], prompt_len))
    return weights, [int(t) for t in tokens]


def test_gguf_rope_freqs_are_applied(tmp_path, cache):
    """A Llama-3.2-shaped file (rope_freqs.weight with llama3 factors): pylut rotates with the
    factors (transformers' frequencies for the same scaling), and its logits follow the
    reference forward with them, far from the reference without them."""
    theta, factors, hf_inv = transformers_factors("llama3_scaled")
    assert factors.max() > 7.9 and factors.min() == pytest.approx(1.0)
    path = tmp_path / "llama32.gguf"
    written = build_gguf(path, "llama", "F32", rope_theta=theta, rope_freqs=factors, context_length=128)
    assert "rope_freqs.weight" in written
    model = pylut.load(path, bits=8, precision="high", n_ctx=64)
    cfg = model.loaded.config
    np.testing.assert_allclose(cfg["rope_inv_freq"], hf_inv, rtol=2e-6)
    assert "freq factors" in model.info()["rope"]["summary"]
    weights, tokens = gguf_logits(model.loaded)
    ref = forward(cfg, weights, tokens)
    out = model.state.forward(tokens, model.pool, all_logits=True)
    err = np.abs(out - ref).max() / np.ptp(ref)
    assert err <= SAME_WEIGHTS_TOLERANCE, f"{err:.2%} of the range from the reference with the factors"
    unscaled = {k: v for k, v in cfg.items() if k not in ("rope_inv_freq", "rope_attn_factor")}
    miss = np.abs(out - forward(unscaled, weights, tokens)).max() / np.ptp(ref)
    assert miss > 4 * SAME_WEIGHTS_TOLERANCE, f"ignoring rope_freqs moves the logits only {miss:.2%}"


def test_gguf_scaling_metadata(tmp_path, cache):
    """rope.scaling.type yarn / linear compute what transformers computes for the same
    settings; an unknown type is refused by name."""
    _, meta, _, _, yarn_inv = reference("qwen2_yarn")
    path = tmp_path / "yarn.gguf"
    build_gguf(path, "qwen2", "F32", context_length=256,
               metadata={"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
                         "qwen2.rope.scaling.original_context_length": 64})
    model = pylut.load(path, bits=8, precision="high", n_ctx=64)
    cfg = model.loaded.config
    np.testing.assert_allclose(cfg["rope_inv_freq"], yarn_inv, rtol=2e-6)
    assert cfg["rope_attn_factor"] == pytest.approx(meta["attention_scaling"], rel=1e-6)
    weights, tokens = gguf_logits(model.loaded)
    out = model.state.forward(tokens, model.pool, all_logits=True)
    ref = forward(cfg, weights, tokens)
    assert np.abs(out - ref).max() / np.ptp(ref) <= SAME_WEIGHTS_TOLERANCE
    # YaRN's attention factor is applied (to q and k): without it the logits move
    flat = dict(cfg, rope_attn_factor=1.0)
    assert np.abs(out - forward(flat, weights, tokens)).max() / np.ptp(ref) > 4 * SAME_WEIGHTS_TOLERANCE

    _, _, _, _, linear_inv = reference("llama_old_layout")
    path = tmp_path / "linear.gguf"
    build_gguf(path, "llama", "F32", rope_theta=20000.0,
               metadata={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    np.testing.assert_allclose(load_gguf(path).config["rope_inv_freq"], linear_inv, rtol=2e-6)

    path = tmp_path / "odd.gguf"
    build_gguf(path, "llama", "F32", metadata={"llama.rope.scaling.type": "longrope",
                                               "llama.rope.scaling.factor": 4.0})
    with pytest.raises(ModelFileError, match="'longrope'"):
        load_gguf(path)
    path = tmp_path / "bad_freqs.gguf"
    build_gguf(path, "llama", "F32", rope_freqs=np.ones(3))
    with pytest.raises(ModelFileError, match="rope_freqs.weight"):
        load_gguf(path)


def test_gguf_yarn_as_the_checkpoint_states_it(tmp_path, caplog):
    """rope.scaling.yarn_attn_factor / yarn_beta_* (what the converter writes from a config's
    attention_factor / beta_fast / beta_slow) are computed, as transformers computes them."""
    path = tmp_path / "yarn.gguf"
    a = "qwen2.rope.scaling."
    build_gguf(path, "qwen2", "F32", context_length=256,
               metadata={a + "type": "yarn", a + "factor": 4.0, a + "original_context_length": 64,
                         a + "yarn_attn_factor": 1.5, a + "yarn_beta_fast": 16.0, a + "yarn_beta_slow": 2.0})
    with caplog.at_level(logging.INFO, logger="pylut"):
        cfg = load_gguf(path).config
    assert "llama.cpp's qwen2 graph uses beta 32/1" in caplog.text
    assert cfg["rope_attn_factor"] == pytest.approx(1.5)
    want, _ = rope.inv_freq(cfg["head_dim"], cfg["rope_theta"], {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64.0, "beta_fast": 16.0,
        "beta_slow": 2.0, "attention_factor": 1.5})
    np.testing.assert_allclose(cfg["rope_inv_freq"], want, rtol=1e-6)
