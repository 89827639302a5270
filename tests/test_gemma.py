"""Gemma 2 and Gemma 3 against transformers and llama.cpp, and the sliding window everywhere.

The zoo fixtures (tests/fixtures/zoo/gemma*, written by tools/make_arch_zoo.py: transformers'
tiny Gemma2ForCausalLM / Gemma3ForCausalLM, briefly trained, converted and quantized by llama.cpp's
own tools) hold transformers' logits over a prompt (155 tokens) and llama.cpp's
logits and greedy ids on each quantized file. Their window (8) is far shorter than the prompt, Gemma 2's soft-caps
are small enough to bite, and Gemma 3's global layer has linear RoPE scaling while its local
layers rotate with their own base. The chain of evidence:

* the numpy reference (tests/ref_forward.py) over the F16 file's weights reproduces
  transformers' logits: the reference computes what Gemma computes;
* pylut at precision="high" reproduces the reference over the weights pylut packed (exact for
  Q8_0 / K-quants, pylut's own 8-bit requantization for F16 and the HF folder's floats), and
  its 32 greedy tokens are the reference's;
* pylut's top-1 agrees with llama.cpp's over the prompt on each quantized file;
* taking any Gemma feature away moves the logits off transformers': the tests can fail.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.formats.gguf_model import load_gguf
from pylut.formats.hf_loader import load_hf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ref_forward import forward as ref_forward  # noqa: E402
from test_arch_zoo import file_weights, greedy  # noqa: E402

ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo"
TOLERANCE = 0.005     # of the logit range at each position: pylut against the reference
FLOAT_CASES = ["gemma2", "gemma3"]
K_CASES = {"gemma2-k": ["Q4_K", "Q2_K"], "gemma3-k": ["Q4_K", "Q2_K"]}
N_GREEDY = 32


def _oracle(name):
    with np.load(ZOO / name / "oracle.npz") as z:
        return {k: (z[k] if k == "meta" else z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k])
                for k in z.files}


def deviation(got, want):
    """Largest per-position logit difference over the wanted logits' range there."""
    return float((np.abs(got - want).max(axis=1) / (want.max(axis=1) - want.min(axis=1))).max())


def _packed_weights(lm):
    """Core name -> float32 weights exactly as pylut packed them."""
    return {name: (t.dequantize() if isinstance(t, _core.QMatrix) else np.asarray(t, np.float32))
            for name, t in lm.tensors.items()}


def _source(name, kind):
    return ZOO / name / ("hf" if kind == "hf" else f"{name}-{kind}.gguf")


def _load(name, kind):
    path = _source(name, kind)
    return load_hf(path, bits=8) if kind == "hf" else load_gguf(path, bits=8)


def _session(lm, n_ctx=256, **kw):
    return _core.Session(lm.build(), n_ctx=n_ctx, split_int8=True, **kw)


# ---------------------------------------------------------------- against transformers


@pytest.mark.parametrize("name", FLOAT_CASES)
def test_reference_reproduces_transformers(name):
    """The reference over the F16 file's weights is transformers' function (its own fp32 run
    over the fp16 checkpoint): norms with the converter's +1, GeGLU, sandwich norms, scales,
    soft-caps, windows and both RoPEs all as Gemma computes them."""
    o = _oracle(name)
    lm = load_gguf(_source(name, "F16"))
    got = ref_forward(lm.config, file_weights(_source(name, "F16")), o["prompt"])
    assert deviation(got, o["hf_logits"]) <= TOLERANCE


@pytest.mark.parametrize("name", FLOAT_CASES)
@pytest.mark.parametrize("kind", ["F16", "Q8_0", "hf"])
def test_pylut_matches_reference(name, kind):
    """pylut (precision='high') over the weights it packed, the whole prompt in one call and
    again split over small chunks, and the same model from the HF folder and the GGUF."""
    o = _oracle(name)
    lm = _load(name, kind)
    want = ref_forward(lm.config, _packed_weights(lm), o["prompt"])
    got = _session(lm).forward(o["prompt"], pylut.get_pool(), all_logits=True)
    assert deviation(got, want) <= TOLERANCE
    chunked = _session(lm, max_batch=5).forward(o["prompt"], pylut.get_pool(), all_logits=True)
    assert deviation(chunked, want) <= TOLERANCE
    # transformers itself, through pylut's 8-bit rounding of the float weights where it has one
    # (trained weights: llama.cpp's own Q8_0 file is 5-7 % away at its worst position)
    assert deviation(got, o["hf_logits"]) <= 0.1


@pytest.mark.parametrize("name", FLOAT_CASES)
def test_hf_folder_and_gguf_agree_on_the_config(name):
    """What the HF loader derives from config.json is what the GGUF loader reads from the
    converted file's metadata."""
    a, b = load_hf(_source(name, "hf")).config, load_gguf(_source(name, "F16")).config
    for key in ("embd_scale", "attn_scale", "attn_softcap", "final_softcap", "sliding_window", "swa_layers",
                "ffn_act", "rope_neox", "rope_theta"):
        assert a.get(key) == pytest.approx(b.get(key)), key
    for key in ("rope_inv_freq", "rope_inv_freq_swa"):
        if b.get(key) is None:
            assert a.get(key) is None
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


@pytest.mark.parametrize("name", FLOAT_CASES)
def test_greedy_tokens_equal_the_reference(name):
    o = _oracle(name)
    lm = _load(name, "Q8_0")
    W = _packed_weights(lm)
    session = _session(lm)
    pool = pylut.get_pool()
    got = greedy(lambda t: session.forward([t], pool), session.forward(o["prompt"], pool), N_GREEDY)
    tokens = list(o["prompt"])
    want = greedy(lambda t: (tokens.append(t), ref_forward(lm.config, W, tokens)[-1])[1],
                   ref_forward(lm.config, W, tokens)[-1], N_GREEDY)
    assert got == want


# ---------------------------------------------------------------- against llama.cpp


@pytest.mark.parametrize("name,kind", [(n, "Q8_0") for n in FLOAT_CASES] +
                         [(n, k) for n, ks in K_CASES.items() for k in ks])
def test_top1_agrees_with_llamacpp(name, kind):
    """On the quantized files both engines read the same weights (llama.cpp rounds its
    activations to 8 bits, pylut at precision='high' to ~16): the top-1 tokens over the prompt
    agree, and pylut matches its reference over those weights. (F16 is not compared: pylut
    requantizes float matrices to 8 bits, so there the engines hold different weights.)"""
    o = _oracle(name)
    lm = _load(name, kind)
    got = _session(lm).forward(o["prompt"], pylut.get_pool(), all_logits=True)
    lcpp = o[f"lcpp_logits_{kind}"]
    assert np.mean(got.argmax(1) == lcpp.argmax(1)) >= 0.95
    want = ref_forward(lm.config, _packed_weights(lm), o["prompt"])
    assert deviation(got, want) <= TOLERANCE


# ---------------------------------------------------------------- every feature matters


def _without(cfg, feature):
    c = dict(cfg)
    if feature == "window":
        c["swa_layers"] = [False] * c["n_layers"]
    elif feature == "local_rope":
        c.pop("rope_inv_freq_swa")
    elif feature == "rope_scaling":
        c["rope_inv_freq"] = list(c["rope_theta"] ** (-np.arange(0, c["head_dim"], 2) / c["head_dim"]))
    else:
        c[feature] = 0.0
    return c


@pytest.mark.parametrize("name,feature", [("gemma2", f) for f in ("window", "attn_softcap", "final_softcap",
                                                                  "embd_scale")] +
                         [("gemma3", f) for f in ("window", "local_rope", "rope_scaling", "embd_scale")])
def test_each_feature_moves_the_logits(name, feature):
    """pylut without one Gemma feature no longer matches transformers: each is needed
    (Gemma 3's RoPE scaling, on one global layer of six, moves the logits least: ~4 %)."""
    o = _oracle(name)
    lm = load_gguf(_source(name, "F16"), bits=8)
    lm.config = _without(lm.config, feature)
    got = _session(lm).forward(o["prompt"], pylut.get_pool(), all_logits=True)
    assert deviation(got, o["hf_logits"]) > 4 * TOLERANCE


def test_query_pre_attn_scalar_and_the_27b_scale(tmp_path):
    """HF: scores scale by query_pre_attn_scalar^-0.5 (the fixtures use head_dim, where
    transformers and llama.cpp agree); GGUF: llama.cpp's 1/sqrt(dim / n_heads) for the 27B
    layer counts, 1/sqrt(head_dim) otherwise."""
    import shutil
    folder = tmp_path / "hf"
    shutil.copytree(_source("gemma2", "hf"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["query_pre_attn_scalar"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    lm = load_hf(folder, bits=8)
    assert lm.config["attn_scale"] == pytest.approx(0.125)
    o = _oracle("gemma2")
    got = _session(lm).forward(o["prompt"], pylut.get_pool(), all_logits=True)
    assert deviation(got, ref_forward(lm.config, _packed_weights(lm), o["prompt"])) <= TOLERANCE
    assert deviation(got, o["hf_logits"]) > 4 * TOLERANCE
    from pylut.formats.gguf_model import _gemma_config
    for arch, layers, want in (("gemma2", 46, 1 / np.sqrt(4608 / 32)), ("gemma2", 42, 1 / np.sqrt(256)),
                               ("gemma3", 62, 1 / np.sqrt(5376 / 32)), ("gemma3", 34, 1 / np.sqrt(256))):
        c = dict(arch=arch, n_layers=layers, dim=4608 if arch == "gemma2" else 5376, n_heads=32, head_dim=256)
        _gemma_config({}, "x.gguf", c)
        assert c["attn_scale"] == pytest.approx(want)


def test_older_gemma3_config_layout_reads_the_same(tmp_path):
    """transformers 4's Gemma 3 layout (rope_theta, rope_local_base_freq, rope_scaling,
    sliding_window_pattern, no layer_types) gives the config the per-layer-type layout gives."""
    import shutil
    folder = tmp_path / "hf"
    shutil.copytree(_source("gemma3", "hf"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    rp = cfg.pop("rope_parameters")
    cfg.pop("layer_types")
    cfg.update(rope_theta=rp["full_attention"]["rope_theta"],
               rope_local_base_freq=rp["sliding_attention"]["rope_theta"],
               rope_scaling={"rope_type": "linear", "factor": rp["full_attention"]["factor"]},
               sliding_window_pattern=6)
    (folder / "config.json").write_text(json.dumps(cfg))
    old, new = load_hf(folder).config, load_hf(_source("gemma3", "hf")).config
    for key in ("rope_theta", "sliding_window", "swa_layers", "attn_scale", "embd_scale", "final_softcap"):
        assert old[key] == new[key], key
    np.testing.assert_allclose(old["rope_inv_freq"], new["rope_inv_freq"], rtol=1e-7)
    np.testing.assert_allclose(old["rope_inv_freq_swa"], new["rope_inv_freq_swa"], rtol=1e-7)


def test_sliding_window_pattern_from_the_metadata():
    """llama.cpp's rules: gemma2 alternates and defaults to a 4096 window; gemma3 windows only
    with the key, every 6th layer global unless sliding_window_pattern says otherwise (a count
    or a per-layer array)."""
    from pylut.formats.gguf_model import _gemma_config
    from pylut.errors import ModelFileError

    def read(arch, meta, n=7):
        c = dict(arch=arch, n_layers=n, dim=64, n_heads=4, head_dim=16, rope_theta=1e6,
                 rope_scaling={"type": "default"})
        _gemma_config({f"{arch}.{k}": v for k, v in meta.items()}, "x.gguf", c)
        return c
    g2 = read("gemma2", {})
    assert g2["sliding_window"] == 4096 and g2["swa_layers"] == [True, False] * 3 + [True]
    assert "rope_inv_freq_swa" not in g2 and g2["attn_softcap"] == 50.0 and g2["final_softcap"] == 30.0
    assert "swa_layers" not in read("gemma3", {}) and read("gemma3", {})["final_softcap"] == 0.0
    g3 = read("gemma3", {"attention.sliding_window": 512})
    assert g3["swa_layers"] == [True] * 5 + [False, True]
    np.testing.assert_allclose(g3["rope_inv_freq_swa"], 10000.0 ** (-np.arange(0, 16, 2) / 16), rtol=1e-6)
    g3 = read("gemma3", {"attention.sliding_window": 512, "attention.sliding_window_pattern": 3,
                         "rope.freq_base_swa": 500.0})
    assert g3["swa_layers"] == [True, True, False] * 2 + [True]
    np.testing.assert_allclose(g3["rope_inv_freq_swa"], 500.0 ** (-np.arange(0, 16, 2) / 16), rtol=1e-6)
    pattern = [True, False, False, True, True, False, True]
    assert read("gemma3", {"attention.sliding_window": 9, "attention.sliding_window_pattern": pattern})["swa_layers"] \
        == pattern
    with pytest.raises(ModelFileError, match="sliding_window_pattern has 2 entries"):
        read("gemma3", {"attention.sliding_window": 9, "attention.sliding_window_pattern": [True, False]})
    with pytest.raises(ModelFileError, match="sliding_window"):
        read("gemma2", {"attention.sliding_window": -3})


# ---------------------------------------------------------------- the window in every path


def test_window_through_decode_chunks_and_kv_types():
    """A prompt of 50 past a window of 8: prefilled in uneven chunks, then decoded token by
    token, the windowed layers see only their window (f16 and int8 caches)."""
    o = _oracle("gemma3")
    lm = _load("gemma3", "Q8_0")
    tokens = list(o["prompt"]) + [5, 17, 60, 3, 99, 41]
    want = ref_forward(lm.config, _packed_weights(lm), tokens)
    pool = pylut.get_pool()
    for kv_type, tol in (("f16", TOLERANCE), ("q8", 0.03)):
        s = _session(lm, max_batch=7, kv_type=kv_type)
        parts = [s.forward(tokens[:3], pool, all_logits=True), s.forward(tokens[3:20], pool, all_logits=True),
                 s.forward(tokens[20:50], pool, all_logits=True)]
        parts += [s.forward([t], pool)[None] for t in tokens[50:]]
        assert deviation(np.concatenate(parts), want) <= tol, kv_type


def test_window_with_streaming_heads():
    """Streaming heads (sinks + their own window) on windowed layers see the intersection."""
    o = _oracle("gemma2")
    lm = _load("gemma2", "Q8_0")
    cfg = lm.config
    streaming = np.zeros((cfg["n_layers"], cfg["n_kv_heads"]), bool)
    streaming[:, 0] = True  # one kv head of every layer, windowed and global ones
    want = ref_forward(cfg, _packed_weights(lm), o["prompt"], streaming=streaming, sink=2, window=12)
    s = _session(lm, max_batch=8, streaming=streaming, sink=2, window=12)
    got = s.forward(o["prompt"], pylut.get_pool(), all_logits=True)
    assert deviation(got, want) <= TOLERANCE


def test_context_shift_rerotates_each_layer_with_its_own_frequencies():
    """After a shift, every kept key reads as if written at its new position: Gemma 3's local
    layers turn with their own base, the global layer with its scaled frequencies."""
    lm = _load("gemma3", "Q8_0")
    cfg = lm.config
    s = _session(lm)
    s.forward(list(_oracle("gemma3")["prompt"][:30]), pylut.get_pool())
    before = _core.kv_decode(s.kv_array()[0].copy(), "f16", cfg["head_dim"])  # [layers, kv, ctx, hd]
    s.shift(4, 10)
    after = _core.kv_decode(s.kv_array()[0].copy(), "f16", cfg["head_dim"])
    half = cfg["head_dim"] // 2
    for layer, windowed in enumerate(cfg["swa_layers"]):
        inv = np.asarray(cfg["rope_inv_freq_swa" if windowed else "rope_inv_freq"], np.float64)
        k = before[layer, :, 14:30].astype(np.float64)
        c, sn = np.cos(-10 * inv), np.sin(-10 * inv)
        turned = np.concatenate([k[..., :half] * c - k[..., half:] * sn, k[..., :half] * sn + k[..., half:] * c], -1)
        np.testing.assert_allclose(after[layer, :, 4:20], turned, atol=2e-3 * np.abs(k).max())


# ---------------------------------------------------------------- the kernel's window and cap


def _attention_reference(q, kf, vf, n_heads, pos0, swa, softcap):
    n_kv, _, hd = kf.shape
    g = n_heads // n_kv
    out = np.zeros(q.shape, np.float64)
    for t in range(q.shape[0]):
        end = pos0 + t + 1
        start = max(0, end - swa) if swa else 0
        for h in range(n_heads):
            s = kf[h // g, start:end].astype(np.float64) @ q[t, h * hd:(h + 1) * hd].astype(np.float64) / np.sqrt(hd)
            if softcap:
                s = softcap * np.tanh(s / softcap)
            p = np.exp(s - s.max())
            out[t, h * hd:(h + 1) * hd] = (p / p.sum()) @ vf[h // g, start:end].astype(np.float64)
    return out


@pytest.mark.usefixtures("restore_isa")
@pytest.mark.parametrize("isa", _core.isa_supported())
@pytest.mark.parametrize("kv_type", ["f16", "q8", "q4"])
@pytest.mark.parametrize("n,length,swa,softcap", [(40, 40, 7, 0.0), (40, 40, 16, 3.0), (1, 1500, 300, 0.0),
                                                  (1, 1500, 1, 0.0), (3, 900, 500, 2.0), (64, 200, 33, 0.0),
                                                  # windows over 2 x 256 positions: decode splits
                                                  # them over cache slices (2 threads, 2 kv heads)
                                                  (1, 3000, 1200, 0.0), (2, 4000, 2100, 1.0)])
def test_kernel_window_and_softcap_every_isa(isa, kv_type, n, length, swa, softcap):
    """The window and the cap live in attn_body.h, so every ISA has them: prefill tiles,
    decode over cache slices (merged), windows shorter than a block and longer than a slice."""
    rng = np.random.default_rng(length + swa + n)
    n_heads, n_kv, hd = 8, 2, 64
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    k = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    v = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    kf, vf = _core.kv_decode(k, kv_type, hd), _core.kv_decode(v, kv_type, hd)
    _core.isa_set(isa)
    out = _core.attention(q, k, v, n_heads, n_kv, kv_type, pool=_core.ThreadPool(2), swa=swa, softcap=softcap)
    ref = _attention_reference(q, kf, vf, n_heads, length - n, swa, softcap)
    tol = 2e-5 * np.abs(vf).max() * max(1.0, np.log2(length))
    assert np.abs(out - ref).max() <= tol
    plain = _attention_reference(q, kf, vf, n_heads, length - n, 0, 0.0)
    assert swa >= length or np.abs(plain - ref).max() > 10 * tol  # the window changed the answer


# ---------------------------------------------------------------- pylut info


@pytest.mark.parametrize("name,expect", [
    ("gemma2", ["architecture:  gemma2", "sliding window 8 on 1 of 2 layers", "soft-caps: attention 1.5, final 2"]),
    ("gemma3", ["architecture:  gemma3", "sliding window 8 on 5 of 6 layers (own RoPE frequencies)",
                "linear (factor 8)"]),
])
def test_info_names_the_features(name, expect, tmp_path):
    out = subprocess.run([sys.executable, "-m", "pylut", "info", str(_source(name, "Q8_0"))], capture_output=True,
                         text=True, env=dict(__import__("os").environ, PYLUT_CACHE_DIR=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    for line in expect:
        assert line in out.stdout, out.stdout
    info = json.loads(subprocess.run([sys.executable, "-m", "pylut", "info", "--json", str(_source(name, "Q8_0"))],
                                     capture_output=True, text=True,
                                     env=dict(__import__("os").environ, PYLUT_CACHE_DIR=str(tmp_path))).stdout)
    assert info["sliding_window"] == 8
    assert info["sliding_window_layers"] == {"gemma2": [0], "gemma3": [0, 1, 2, 3, 4]}[name]
