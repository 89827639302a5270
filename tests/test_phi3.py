"""phi3 (Phi-3-mini, Phi-3.5-mini, Phi-4-mini) against transformers and llama.cpp.

The fixtures (tests/fixtures/zoo/<name>/, written by tools/make_arch_zoo.py) are tiny models
made by transformers (random init, briefly trained) and converted by llama.cpp's own
convert_hf_to_gguf.py and quantizer: `phi3` is Phi-3.5-mini-shaped (LongRoPE, untied head, a sliding window past the
context), `phi4mini` Phi-4-mini-shaped (partial rotary 0.75, LongRoPE, tied head, no window),
`phi3-k` the K-quant files. Both engines' logits are in each oracle.npz.

The reference (tests/ref_forward.py) reads the files' fused matrices and LongRoPE factor
tensors as llama.cpp's graph does (src/models/phi3.cpp), decoded by the gguf package.
"""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
import gguf  # noqa: E402
import gguf.quants  # noqa: E402

import pylut  # noqa: E402
from pylut import _core, rope  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402
from pylut.formats.gguf_model import load_gguf  # noqa: E402
from hf_folders import edited_copy  # noqa: E402
from ref_forward import forward as ref_forward, longrope_inv_freq  # noqa: E402

log = logging.getLogger("pylut")

ZOO = Path(__file__).parent / "fixtures" / "zoo"
FILES = {"phi3": ("F16", "Q8_0"), "phi4mini": ("F16", "Q8_0"), "phi3-k": ("Q4_K", "Q2_K")}
CASES = [(name, t) for name, types in FILES.items() for t in types]
TRANSFORMERS_TOLERANCE = 0.005   # the reference over the F16 file's weights, of transformers' logit range
# pylut loads float weights at 8 bits at most (round-to-nearest, group 128), so against
# transformers it pays 8-bit weights as llama.cpp's Q8_0 file does: pylut measured 1.2-3.0 % of
# the range over the HF folder, F16 and Q8_0 files, llama.cpp's Q8_0 2.0-3.1 %; the bound is
# twice llama.cpp's own distance (the semantics are held to 0.5 % by the two checks beside it)
PYLUT_8BIT_VS_LLAMACPP = 2.0
SAME_WEIGHTS_TOLERANCE = 0.005   # pylut against the reference over the weights pylut packed
MIN_TOP1_LLAMACPP = 0.95        # over the positions llama.cpp's own rounding cannot flip (below)
N_GREEDY = 32
N_CTX = 160                      # llama.cpp pads it to 256, not past the original 256: short factors


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))


def oracle(name):
    with np.load(ZOO / name / "oracle.npz") as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


def gguf_path(name, tensor_type):
    return ZOO / name / f"{name}-{tensor_type}.gguf"


def file_weights(path):
    """name (no .weight) -> float32 as the file holds it (fused attn_qkv / ffn_up kept),
    decoded by the gguf package, plus the metadata the reference needs."""
    reader = gguf.GGUFReader(str(path))
    w = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w[t.name.removesuffix(".weight")] = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    w.setdefault("output", w["token_embd"])
    field = reader.fields.get("phi3.rope.scaling.attn_factor")
    attn = float(field.parts[field.data[0]][0]) if field is not None else 1.0
    return w, attn


def reference_config(lm, factors, attn):
    """The loader's shapes with RoPE computed here from the file's factor tensor."""
    cfg = dict(lm.config)
    cfg["rope_inv_freq"] = longrope_inv_freq(cfg, factors)
    cfg["rope_attn_factor"] = attn
    return cfg


def dequantized(lm):
    return {name: t.dequantize() if isinstance(t, _core.QMatrix) else t for name, t in lm.tensors.items()}


def deviation(got, want):
    """max |got - want| over the prompt, as a fraction of want's logit range."""
    return float(np.abs(got - want).max() / np.ptp(want))


def prompt_logits(model, tokens):
    out = model.state.forward([int(t) for t in tokens], model.pool, all_logits=True)
    model.state.truncate(0)
    return out


# ---------------------------------------------------------------- transformers and llama.cpp

@pytest.mark.parametrize("name", ["phi3", "phi4mini"])
def test_reference_matches_transformers(name):
    """The reference, reading the F16 file's fused matrices and LongRoPE tensors as llama.cpp's
    graph does, is transformers' model: the semantics pylut is held to below."""
    o = oracle(name)
    path = gguf_path(name, "F16")
    lm = load_gguf(path, bits=8)
    w, attn = file_weights(path)
    err = deviation(ref_forward(reference_config(lm, w["rope_factors_short"], attn), w, o["prompt"].tolist()),
                    o["hf_logits"])
    assert err <= TRANSFORMERS_TOLERANCE, f"{name}: the reference is {err:.3%} of the range from transformers"


@pytest.mark.parametrize("name,source", [(n, s) for n in ("phi3", "phi4mini") for s in ("hf", "F16", "Q8_0")])
def test_logits_match_transformers(name, source, cache):
    o = oracle(name)
    path = ZOO / name / "hf" if source == "hf" else gguf_path(name, source)
    model = pylut.load(path, bits=8, precision="high", n_ctx=N_CTX)
    assert model.loaded.arch == "phi3"
    got = prompt_logits(model, o["prompt"])
    err = deviation(got, o["hf_logits"])
    same = deviation(got, ref_forward(model.loaded.config, dequantized(model.loaded), o["prompt"].tolist()))
    log.info("%s/%s: %.3f%% of transformers' logit range, %.3f%% from the reference over the same weights",
             name, source, 100 * err, 100 * same)
    assert same <= SAME_WEIGHTS_TOLERANCE, f"{name}/{source}: {same:.3%} of the range from the reference"
    lcpp = deviation(o["lcpp_logits_Q8_0"].astype(np.float32), o["hf_logits"])
    assert err <= PYLUT_8BIT_VS_LLAMACPP * lcpp, \
        f"{name}/{source}: {err:.3%} of the range from transformers (llama.cpp's Q8_0: {lcpp:.3%})"


@pytest.mark.parametrize("name,tensor_type", CASES)
def test_file_against_reference_and_llamacpp(name, tensor_type, cache):
    """Same weights: pylut against the reference reading the fused file; greedy decoding
    against the reference; top-1 against llama.cpp's logits of the same file."""
    o = oracle(name)
    path = gguf_path(name, tensor_type)
    model = pylut.load(path, bits=8, precision="high", n_ctx=N_CTX)
    lm = model.loaded
    prompt = [int(t) for t in o["prompt"]]
    got = model.state.forward(prompt, model.pool, all_logits=True)

    w, attn = file_weights(path)
    ref = ref_forward(reference_config(lm, w["rope_factors_short"], attn), w, prompt)
    packed = dequantized(lm)  # K-quant scales may round to fp16 in pylut's packing
    same = ref_forward(reference_config(lm, w["rope_factors_short"], attn), packed, prompt)
    err_file, err_same = deviation(got, ref), deviation(got, same)
    lcpp = o[f"lcpp_logits_{tensor_type}"].astype(np.float32)
    top1 = float((got.argmax(1) == lcpp.argmax(1)).mean())
    # llama.cpp rounds activations to 8 bits (Q8_0 / Q8_K) and lands 1-5 % of the range away
    # from the exact float result over its own weights; where the reference's top-2 margin is
    # inside that, its choice is a coin toss on rounding. pylut must agree everywhere else.
    srt = np.sort(ref, axis=1)
    decisive = (srt[:, -1] - srt[:, -2]) > np.abs(lcpp - ref).max(axis=1)
    top1_decisive = float((got.argmax(1) == lcpp.argmax(1))[decisive].mean())

    # 32 greedy tokens on the KV cache; the reference reads the sequence in one pass
    generated = []
    nxt = int(got[-1].argmax())
    for _ in range(N_GREEDY):
        generated.append(nxt)
        nxt = int(model.state.forward([nxt], model.pool).argmax()) if len(generated) < N_GREEDY else nxt
    model.state.truncate(0)
    seq = prompt + generated
    ref_steps = ref_forward(reference_config(lm, w["rope_factors_short"], attn), packed, seq[:-1])
    ref_greedy = ref_steps[len(prompt) - 1:].argmax(1).tolist()
    lcpp_same = int(np.sum(np.asarray(generated) == o[f"lcpp_greedy_{tensor_type}"]))
    log.info("%s-%s: file ref %.3f%%, same weights %.3f%%, top-1 vs llama.cpp %.1f%% (%.1f%% at the %d of %d "
             "decisive positions), greedy = llama.cpp's at %d/%d", name, tensor_type, 100 * err_file, 100 * err_same,
             100 * top1, 100 * top1_decisive, decisive.sum(), len(prompt), lcpp_same, N_GREEDY)
    assert err_same <= SAME_WEIGHTS_TOLERANCE, f"{err_same:.3%} of the range from the reference"
    if tensor_type == "Q8_0":  # pylut keeps Q8_0's codes and scales: the file's own weights
        assert err_file <= SAME_WEIGHTS_TOLERANCE
    assert top1_decisive >= MIN_TOP1_LLAMACPP, f"top-1 agrees with llama.cpp on {top1_decisive:.1%} of the " \
        f"decisive positions ({top1:.1%} of all)"
    assert generated == ref_greedy, "greedy decoding left the reference's choices"


# ---------------------------------------------------------------- LongRoPE and partial rotary

@pytest.mark.parametrize("name", ["phi3", "phi4mini"])
def test_ignoring_longrope_is_caught(name):
    """The fixtures are sensitive to each RoPE setting: the reference without the short
    factors, without the attention factor, or (Phi-4-mini) rotating every dim is far outside
    the tolerance that the right settings meet."""
    o = oracle(name)
    path = gguf_path(name, "F16")
    lm = load_gguf(path, bits=8)
    w, attn = file_weights(path)
    prompt = o["prompt"].tolist()
    right = reference_config(lm, w["rope_factors_short"], attn)
    assert deviation(ref_forward(right, w, prompt), o["hf_logits"]) <= TRANSFORMERS_TOLERANCE
    wrong = {"no factors": dict(right, rope_inv_freq=longrope_inv_freq(right, np.ones_like(w["rope_factors_short"]))),
             "no attention factor": dict(right, rope_attn_factor=1.0),
             "long factors": dict(right, rope_inv_freq=longrope_inv_freq(right, w["rope_factors_long"]))}
    if name == "phi4mini":
        assert right["rope_dims"] == 12 and right["head_dim"] == 16
        full = {k: v for k, v in right.items() if k not in ("rope_dims", "rope_inv_freq")}
        wrong["every dim rotated"] = full
    for what, cfg in wrong.items():
        err = deviation(ref_forward(cfg, w, prompt), o["hf_logits"])
        assert err > 4 * TRANSFORMERS_TOLERANCE, f"{name}: {what} is only {err:.3%} away"


def test_loader_reads_the_factors(cache):
    """pylut's frequencies are the reference's from the file's tensors and the HF config's
    lists alike, and the attention factor is transformers' sqrt(1 + ln(s) / ln(orig))."""
    for name in ("phi3", "phi4mini"):
        hf = json.loads((ZOO / name / "hf" / "config.json").read_text())
        params = hf.get("rope_parameters") or hf["rope_scaling"]
        scale = hf["max_position_embeddings"] / hf["original_max_position_embeddings"]
        want_attn = np.sqrt(1 + np.log(scale) / np.log(hf["original_max_position_embeddings"]))
        for path in (ZOO / name / "hf", gguf_path(name, "Q8_0")):
            model = pylut.load(path, n_ctx=N_CTX)
            cfg = model.loaded.config
            assert cfg["rope_scaling"]["type"] == "longrope"
            np.testing.assert_allclose(cfg["rope_inv_freq"], longrope_inv_freq(cfg, params["short_factor"]),
                                       rtol=1e-6)
            assert cfg["rope_attn_factor"] == pytest.approx(want_attn, rel=1e-6)
            assert model.weights.config["rope_inv_freq"] == cfg["rope_inv_freq"]  # n_ctx 160: short


@pytest.mark.parametrize("n_ctx,long", [(256, False), (257, True), (1024, True)])
def test_factor_set_follows_the_context_as_llamacpp(n_ctx, long, cache):
    """llama.cpp's rule (get_rope_factors, n_ctx padded to 256 against n_ctx_orig): the long
    factors are in force for every position once the context exceeds the original one;
    pylut's logits follow the reference with that set, not the other."""
    o = oracle("phi3")
    path = gguf_path("phi3", "Q8_0")
    model = pylut.load(path, precision="high", n_ctx=n_ctx)
    assert rope.uses_long_factors(model.loaded.config["rope_scaling"], n_ctx) == long
    assert model.info()["rope"]["longrope_factors"] == ("long" if long else "short")
    w, attn = file_weights(path)
    prompt = o["prompt"].tolist()
    got = prompt_logits(model, prompt)
    packed = dequantized(model.loaded)
    chosen, other = (w["rope_factors_long"], w["rope_factors_short"]) if long else \
        (w["rope_factors_short"], w["rope_factors_long"])
    assert deviation(got, ref_forward(reference_config(model.loaded, chosen, attn), packed, prompt)) \
        <= SAME_WEIGHTS_TOLERANCE
    assert deviation(got, ref_forward(reference_config(model.loaded, other, attn), packed, prompt)) \
        > 4 * SAME_WEIGHTS_TOLERANCE


@pytest.mark.parametrize("n_ctx", [64, 300])
def test_context_shift_with_partial_rotary(n_ctx, cache):
    """A context shift turns only the rotated dims, by the frequencies in force (short or long
    factors): layer-0 keys depend only on token and position, so the moved ones equal keys
    written fresh at their new positions (one more fp16 rounding)."""
    o = oracle("phi4mini")
    toks = o["prompt"].tolist()[:20]
    load = dict(precision="high", n_ctx=n_ctx, batch_invariant=True)
    m = pylut.load(gguf_path("phi4mini", "Q8_0"), **load)
    m.eval(toks)
    m.state.shift(4, 6)
    hd = m.loaded.config["head_dim"]
    keys = lambda model: _core.kv_decode(model.state.kv_array()[0, 0, :, :14], "f16", hd)  # noqa: E731
    fresh = pylut.load(gguf_path("phi4mini", "Q8_0"), **load)
    fresh.eval(toks[:4] + toks[10:])
    assert np.allclose(keys(m), keys(fresh), rtol=2e-3, atol=2e-3)
    # the unrotated dims were not touched: bit-identical to before the shift
    before = pylut.load(gguf_path("phi4mini", "Q8_0"), **load)
    before.eval(toks)
    moved = before.state.kv_array()[0, 0, :, 10:20, :]
    raw = lambda kv: _core.kv_decode(kv, "f16", hd)[..., 12:]  # noqa: E731
    np.testing.assert_array_equal(raw(m.state.kv_array()[0, 0, :, 4:14, :]), raw(moved))


# ---------------------------------------------------------------- config, info, refusals

def test_info_names_longrope_partial_rotary_and_window(cache):
    for name, want in (("phi3", ["longrope", "short factors", "long factors", "sliding window 2048"]),
                       ("phi4mini", ["longrope", "partial rotary 12 of 16 dims"])):
        out = subprocess.run([sys.executable, "-m", "pylut", "info", "--ctx", "256", str(gguf_path(name, "Q8_0"))],
                             capture_output=True, text=True, check=True).stdout
        assert "architecture:  phi3" in out
        for text in want:
            assert text in out, f"{name}: {text!r} missing from pylut info:\n{out}"
        assert "short factors in force at n_ctx 256" in out
    out = subprocess.run([sys.executable, "-m", "pylut", "info", str(gguf_path("phi4mini", "Q8_0"))],
                         capture_output=True, text=True, check=True).stdout
    assert "sliding window" not in out  # the converter's 0: none


def edited(tmp_path, name, edit):
    return edited_copy(ZOO / name / "hf", tmp_path / name, edit)


def test_window_shorter_than_the_context_is_applied(tmp_path, cache):
    """A window below the context windows every layer, as transformers does, and the whole
    context runs (tests/test_sliding_window.py checks the logits past the window)."""
    def edit(c):
        c["sliding_window"] = 48
    model = pylut.load(edited(tmp_path, "phi3", edit), n_ctx=64)
    assert model.loaded.config["max_ctx"] == 1024 and model.n_ctx == 64
    assert model.info()["sliding_window"] == 48 and model.info()["sliding_window_layers"] == [0, 1]


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["rope_parameters"].update(short_factor=[1.0, 2.0]), "short_factor has 2 entries"),
    (lambda c: c["rope_parameters"].pop("long_factor"), "needs 'long_factor'"),
    (lambda c: c["rope_parameters"].update(partial_rotary_factor=0.3), "LongRoPE has 8 factors, expected 2"),
    (lambda c: c["rope_parameters"].update(partial_rotary_factor=0.05), "partial_rotary_factor"),
    (lambda c: c["rope_parameters"].update(rope_type="yarn"), "beta|factor|RoPE parameter"),
    (lambda c: c.update(attention_bias=True), "no attention biases"),
])
def test_bad_configs_are_refused(tmp_path, cache, edit, match):
    with pytest.raises(ModelFileError, match=match):
        pylut.load(edited(tmp_path, "phi3", edit))


def test_hf_folder_without_rope_scaling_is_another_model(tmp_path, cache):
    """The HF path applies the factors too: the same folder with default RoPE is far off."""
    o = oracle("phi3")

    def edit(c):
        c["rope_parameters"] = {"rope_type": "default", "rope_theta": c["rope_parameters"]["rope_theta"]}
    model = pylut.load(edited(tmp_path, "phi3", edit), bits=8, precision="high", n_ctx=N_CTX)
    assert deviation(prompt_logits(model, o["prompt"]), o["hf_logits"]) > 4 * TRANSFORMERS_TOLERANCE


def test_gguf_window_metadata():
    """phi3.attention.sliding_window: 0 is the converter's "none"; a malformed value is
    refused."""
    from pylut.formats.gguf_model import _window
    meta = {"phi3.attention.sliding_window": 0}
    assert _window(meta, "f", "phi3") == 0
    assert _window({}, "f", "phi3") == 0
    assert _window({"phi3.attention.sliding_window": 2047}, "f", "phi3") == 2047
    assert _window({"phi3.attention.sliding_window": 262144}, "f", "phi3") == 262144
    with pytest.raises(ModelFileError, match="sliding_window"):
        _window({"phi3.attention.sliding_window": -1}, "f", "phi3")
    assert _window({"llama.attention.sliding_window": 16}, "f", "llama") == 0  # no window in the table


def test_session_file_remembers_the_factor_set(tmp_path, cache):
    """Cached keys are rotated with the factor set of the context they were written in: a
    session saved with the long factors is refused by a model running the short ones."""
    path = gguf_path("phi3", "Q8_0")
    prompt = oracle("phi3")["prompt"].tolist()[:16]
    long = pylut.load(path, n_ctx=512)
    long.eval(prompt)
    long.save_state(tmp_path / "s.pylut")
    again = pylut.load(path, n_ctx=300)  # long factors too: the same frequencies
    again.load_state(tmp_path / "s.pylut")
    assert again._cached == prompt
    with pytest.raises(ValueError, match="other RoPE frequencies"):
        pylut.load(path, n_ctx=128).load_state(tmp_path / "s.pylut")


@pytest.mark.parametrize("tensor_type", ["F16", "Q8_0"])
def test_long_factors_agree_with_llamacpp(tensor_type, cache):
    """llama.cpp given n_ctx 300 (padded to 512, past the original 256) runs the long factors;
    pylut at the same n_ctx follows it as closely as at the short ones, and at n_ctx 256 does not."""
    o = oracle("phi3")
    want = o[f"lcpp_logits_{tensor_type}_ctx300"].astype(np.float32)
    short = o[f"lcpp_logits_{tensor_type}"].astype(np.float32)
    path = gguf_path("phi3", tensor_type)
    got = prompt_logits(pylut.load(path, bits=8, precision="high", n_ctx=300), o["prompt"])
    got_short = prompt_logits(pylut.load(path, bits=8, precision="high", n_ctx=256), o["prompt"])
    err, err_short = deviation(got, want), deviation(got_short, short)
    w, attn = file_weights(path)  # decisive positions as in test_file_against_reference_and_llamacpp
    ref = ref_forward(reference_config(load_gguf(path, bits=8), w["rope_factors_long"], attn), w, o["prompt"].tolist())
    srt = np.sort(ref, axis=1)
    decisive = (srt[:, -1] - srt[:, -2]) > np.abs(want - ref).max(axis=1)
    agree = got.argmax(1) == want.argmax(1)
    log.info("phi3-%s: long factors %.3f%% of llama.cpp's range (short: %.3f%%), top-1 %.1f%% (%.1f%% of %d "
             "decisive)", tensor_type, 100 * err, 100 * err_short, 100 * agree.mean(), 100 * agree[decisive].mean(),
             decisive.sum())
    assert err <= 1.5 * err_short + 0.005
    assert float(agree[decisive].mean()) >= MIN_TOP1_LLAMACPP
    assert deviation(got_short, want) > 10 * err


@pytest.mark.parametrize("kind", ["longrope", "su"])
def test_hub_config_layout(tmp_path, cache, kind):
    """The layout of the published configs (transformers < 5): rope_scaling {type, long_factor,
    short_factor} with rope_theta and partial_rotary_factor at the top level ("su" is
    LongRoPE's older name) computes what transformers 5's rope_parameters does."""
    def hub(c):
        p = c.pop("rope_parameters")
        c["rope_theta"] = p["rope_theta"]
        c["partial_rotary_factor"] = p["partial_rotary_factor"]
        c["rope_scaling"] = {"type": kind, "long_factor": p["long_factor"], "short_factor": p["short_factor"]}
    old = pylut.load(edited(tmp_path, "phi4mini", hub), n_ctx=N_CTX)
    new = pylut.load(ZOO / "phi4mini" / "hf", n_ctx=N_CTX)
    for key in ("rope_dims", "rope_inv_freq", "rope_attn_factor"):
        assert old.loaded.config[key] == new.loaded.config[key], key
