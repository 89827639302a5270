"""The architecture zoo: tiny models made by transformers (random init, then a short training
run on the tool's corpus, for a trained model's logit margins), converted and quantized by
llama.cpp's own tools (tests/fixtures/zoo, written by tools/make_arch_zoo.py), each checked
three ways with no torch, transformers or llama.cpp at test time:

* against transformers' float logits: the numpy reference (tests/ref_forward.py) over the F16
  file's own weights, with pylut's config (RoPE frequencies included), within 0.5 % of the
  logit range; pylut itself on the F16 file and the HF folder at precision="high" (which keeps
  float matrices as fp16: F16 matrices, fp32 activations) within the same 0.5 %; packed at 8
  bits instead they are 2-9 % away at the worst position, as far as llama.cpp's own Q8_0 files
  are (3-7 %) on these small trained models (PACKED_TOLERANCE);
* every file against the reference over the same dequantized weights, at precision="high":
  logits within 0.5 % and 32 greedy tokens identical;
* every file against llama.cpp's logits on the same file: top-1 agreement over the prompt.

A new zoo entry is picked up from its oracle.npz; nothing here names an architecture."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.formats.gguf_model import load_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ref_forward import forward as ref_forward  # noqa: E402

ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo"
BUDGET = 10 * 2**20           # every committed zoo file together (9.1 MiB: ~100-155-token prompts)
HF_TOLERANCE = 0.005          # of transformers' logit range at each position
PACKED_TOLERANCE = 0.1        # the same for pylut over float weights packed at 8 bits (bits=8)
SAME_WEIGHTS_TOLERANCE = 0.005
TOP1_AGREEMENT = 0.95          # every position; near-ties included (see test_gguf_agrees_with_llamacpp)
N_GREEDY = 32


def _oracle(name):
    with np.load(ZOO / name / "oracle.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        return arrays, json.loads(str(z["meta"]))


ENTRIES = sorted(p.parent.name for p in ZOO.glob("*/oracle.npz"))
FILES = [(name, qt) for name in ENTRIES for qt in _oracle(name)[1]["entry"]["quants"]]
HF_FILES = [(name, qt) for name, qt in FILES if qt == "F16" and "hf_logits" in _oracle(name)[0]]
QUANTIZED = [(name, qt) for name, qt in FILES if qt not in ("F16", "BF16", "F32")]
HF_FOLDERS = [name for name in ENTRIES if (ZOO / name / "hf" / "config.json").exists()]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))


def _gguf(name, qt):
    return ZOO / name / f"{name}-{qt}.gguf"


def _load(path, n_ctx, **settings):
    """precision="high": float matrices stay fp16 (LoadOptions.float_bits), block types as stored."""
    return pylut.load(path, precision="high", cache=False, n_ctx=n_ctx, **settings)


def _all_logits(model, prompt):
    out = model.state.forward([int(t) for t in prompt], model.pool, all_logits=True)
    model.state.truncate(0)
    return out


def deviation(got, want):
    """Per position: the largest logit difference over the wanted logits' range there."""
    return np.abs(got[:, :want.shape[1]] - want).max(axis=1) / np.ptp(want, axis=1)


def dequantized(lm):
    return {name: t.dequantize() if isinstance(t, _core.QMatrix) else t for name, t in lm.tensors.items()}


def greedy(step, first_logits, n):
    """n greedy ids: step(id) -> the logits after appending id."""
    ids, logits = [], first_logits
    for _ in range(n):
        ids.append(int(np.argmax(logits)))
        logits = step(ids[-1])
    return ids


# ---------------------------------------------------------------- the fixtures


def test_zoo_is_committed_and_small():
    assert ENTRIES, "tests/fixtures/zoo is empty: run tools/make_arch_zoo.py"
    manifest = json.loads((ZOO / "manifest.json").read_text())
    assert sorted(manifest) == ENTRIES
    total = sum(p.stat().st_size for p in ZOO.rglob("*") if p.is_file())
    assert total <= BUDGET, f"the zoo holds {total / 2**20:.2f} MiB"
    for name, qt in FILES:
        assert _gguf(name, qt).exists()


# ---------------------------------------------------------------- against transformers


def file_weights(path):
    """Core name -> float32 weights as the file holds them, decoded by the gguf package
    (independent of pylut's reader)."""
    gguf = pytest.importorskip("gguf")
    quants = pytest.importorskip("gguf.quants")
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        out[t.name[: -len(".weight")] if t.name.endswith(".weight") else t.name] = w
    out.setdefault("output", out["token_embd"])
    for name in list(out):   # Gemma's sandwich norms under the reference's names
        for gguf_name, ref_name in (("post_attention_norm", "attn_post_norm"), ("post_ffw_norm", "ffn_post_norm")):
            if name.endswith("." + gguf_name):
                out[name[: -len(gguf_name)] + ref_name] = out.pop(name)
    return out


@pytest.mark.parametrize("name,qt", HF_FILES, ids=[f"{n}-{q}" for n, q in HF_FILES])
def test_reference_on_the_file_matches_transformers(name, qt):
    """What the converter wrote, computed as pylut's config says (architecture table, RoPE
    frequencies), is what transformers computes."""
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays["hf_logits"].astype(np.float32)
    cfg = load_gguf(_gguf(name, qt), bits=8).config
    dev = deviation(ref_forward(cfg, file_weights(_gguf(name, qt)), prompt), want)
    assert dev.max() <= HF_TOLERANCE, f"{name}-{qt}: {dev.max():.3%} of the range at position {int(dev.argmax())}"


@pytest.mark.parametrize("name,qt", HF_FILES, ids=[f"{n}-{q}" for n, q in HF_FILES])
def test_gguf_matches_transformers(name, qt):
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays["hf_logits"].astype(np.float32)
    model = _load(_gguf(name, qt), n_ctx=len(prompt) + N_GREEDY)
    assert set(pylut.kernels.packed_types(model.loaded.tensors)) == {"F16"} and not model.loaded.lossy
    dev = deviation(_all_logits(model, prompt), want)
    assert dev.max() <= HF_TOLERANCE, f"{name}-{qt}: {dev.max():.3%} of the range at position {int(dev.argmax())}"


@pytest.mark.parametrize("name,qt", HF_FILES[:2], ids=[f"{n}-{q}" for n, q in HF_FILES[:2]])
def test_gguf_packed_at_8_bits_stays_near_transformers(name, qt):
    """bits=8 (the float matrices quantized, as precision="fast" would at 4) costs what
    llama.cpp's Q8_0 costs: within PACKED_TOLERANCE, and visibly more than the F16 matrices."""
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays["hf_logits"].astype(np.float32)
    packed = deviation(_all_logits(_load(_gguf(name, qt), len(prompt), bits=8), prompt), want)
    kept = deviation(_all_logits(_load(_gguf(name, qt), len(prompt)), prompt), want)
    assert packed.max() <= PACKED_TOLERANCE and kept.max() < packed.max() / 4


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_hf_folder_matches_transformers(name, cache):
    arrays, meta = _oracle(name)
    prompt, want = arrays["prompt"], arrays["hf_logits"].astype(np.float32)
    model = _load(ZOO / name / "hf", n_ctx=len(prompt) + N_GREEDY)
    dev = deviation(_all_logits(model, prompt), want)
    assert dev.max() <= HF_TOLERANCE, f"{name}: {dev.max():.3%} of the range at position {int(dev.argmax())}"


# ---------------------------------------------------------------- against the reference


@pytest.mark.parametrize("name,qt", FILES, ids=[f"{n}-{q}" for n, q in FILES])
def test_gguf_follows_the_reference(name, qt):
    """Logits over the prompt and 32 greedy tokens after it, against the numpy reference over
    the weights pylut packed (dequantized): only activation rounding differs."""
    arrays, _ = _oracle(name)
    prompt = [int(t) for t in arrays["prompt"]]
    lm = load_gguf(_gguf(name, qt), bits="f16")  # what _load packs
    weights = dequantized(lm)
    model = _load(_gguf(name, qt), n_ctx=len(prompt) + N_GREEDY)
    got = _all_logits(model, prompt)
    want = ref_forward(lm.config, weights, prompt)
    dev = deviation(got, want)
    assert dev.max() <= SAME_WEIGHTS_TOLERANCE, f"{dev.max():.3%} of the range at position {int(dev.argmax())}"

    seq = list(prompt)

    def ref_step(t):
        seq.append(t)
        return ref_forward(lm.config, weights, seq)[-1]
    want_ids = greedy(ref_step, want[-1], N_GREEDY)
    model.reset()
    got_ids = greedy(model.step, model.eval(prompt), N_GREEDY)
    assert got_ids == want_ids


# ---------------------------------------------------------------- against llama.cpp


@pytest.mark.parametrize("name,qt", QUANTIZED, ids=[f"{n}-{q}" for n, q in QUANTIZED])
def test_gguf_agrees_with_llamacpp(name, qt):
    """Top-1 over the prompt against llama.cpp on the same quantized file. llama.cpp rounds
    activations to 8 bits (Q8_0 / Q8_K) for quantized matrices, about 1 % of the logit range
    on these models, and so flips near-ties: at every position where the two differ,
    pylut's token must be one llama.cpp nearly chose (its logit within twice llama.cpp's
    deviation from the float reference over the file's weights); over all, TOP1_AGREEMENT."""
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays[f"lcpp_logits_{qt}"].astype(np.float32)
    model = _load(_gguf(name, qt), n_ctx=len(prompt) + N_GREEDY)
    pick = _all_logits(model, prompt).argmax(1)
    ref = ref_forward(load_gguf(_gguf(name, qt), bits=8).config, file_weights(_gguf(name, qt)), prompt)
    noise = np.abs(want - ref).max(axis=1)
    gap = want.max(axis=1) - want[np.arange(len(pick)), pick]
    assert np.all(gap <= 2 * noise), \
        f"{name}-{qt}: pylut's token is clearly not llama.cpp's at {np.where(gap > 2 * noise)[0]}"
    agree = float(np.mean(gap == 0))
    assert agree >= TOP1_AGREEMENT, f"{name}-{qt}: top-1 agrees with llama.cpp at {agree:.1%}"


@pytest.mark.parametrize("name,qt", FILES, ids=[f"{n}-{q}" for n, q in FILES])
def test_info_names_the_architecture(name, qt):
    """`pylut info` names the file's architecture (general.architecture, read by the gguf
    package) and the RoPE scaling its HF config asked for."""
    gguf = pytest.importorskip("gguf")
    _, meta = _oracle(name)
    field = gguf.GGUFReader(str(_gguf(name, qt))).fields["general.architecture"]
    info = pylut.load(_gguf(name, qt), cache=False, n_ctx=16).info()
    assert info["arch"] == bytes(field.parts[field.data[0]]).decode()
    params = meta["entry"]["config"].get("rope_parameters") or {}
    kind = params.get("full_attention", params).get("rope_type", "default")   # (Gemma 3: per layer type)
    assert {"llama3": "freq factors"}.get(kind, kind) in info["rope"]["summary"]
    assert info["features"]
    features = ", ".join(info["features"])
    window = gguf.GGUFReader(str(_gguf(name, qt))).fields.get(f"{info['arch']}.attention.sliding_window")
    if window is not None and int(window.parts[window.data[0]][0]):   # (the converter drops Mistral's)
        assert f"sliding window {int(window.parts[window.data[0]][0])} on " in features
    cap = meta["entry"]["config"].get("attn_logit_softcapping")
    if cap:
        assert f"soft-caps: attention {cap:g}" in features


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    """`pylut info` on a file of an architecture pylut does not run names it and lists the
    supported ones."""
    import subprocess
    import sys
    from model_builder import build_gguf
    from pylut.formats.gguf_model import SUPPORTED_ARCHS
    path = tmp_path / "other.gguf"
    build_gguf(path, "starcoder2", "Q8_0")
    out = subprocess.run([sys.executable, "-m", "pylut", "info", str(path)], capture_output=True, text=True,
                         env=dict(__import__("os").environ, PYLUT_CACHE_DIR=str(tmp_path)))
    assert out.returncode != 0
    assert "unsupported architecture 'starcoder2'" in out.stderr
    assert "supported: " + ", ".join(SUPPORTED_ARCHS) in out.stderr


# ---------------------------------------------------------------- RoPE scaling


@pytest.mark.parametrize("name,qt", FILES, ids=[f"{n}-{q}" for n, q in FILES])
def test_rope_frequencies_follow_llamacpp(name, qt):
    """pylut.rope's frequencies are the reference's, computed apart from them as llama.cpp
    computes them (rope_freqs.weight, rope.scaling.*)."""
    from ref_forward import rope_frequencies
    cfg = load_gguf(_gguf(name, qt), bits=8).config
    inv, attn = rope_frequencies(cfg)
    np.testing.assert_allclose(cfg["rope_inv_freq"], inv, rtol=1e-6)
    assert cfg["rope_attn_factor"] == pytest.approx(attn, rel=1e-6)


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_folder_and_file_rotate_alike(name):
    """The HF config's RoPE (rope_parameters: llama3, yarn, ...) computed by pylut.rope is what
    the converter wrote into the GGUF (rope_freqs.weight, rope.scaling.*) as pylut reads it."""
    from pylut.formats.hf_loader import load_hf
    hf = load_hf(ZOO / name / "hf", bits=8).config
    qt = _oracle(name)[1]["entry"]["quants"][0]
    gg = load_gguf(_gguf(name, qt), bits=8).config
    np.testing.assert_allclose(hf["rope_inv_freq"], gg["rope_inv_freq"], rtol=1e-6)
    assert hf["rope_attn_factor"] == pytest.approx(gg["rope_attn_factor"], rel=1e-6)
    assert (hf["rope_theta"], hf["n_heads"], hf["head_dim"]) == (gg["rope_theta"], gg["n_heads"], gg["head_dim"])


@pytest.mark.parametrize("name,summary", [("llama3.2", "freq factors"), ("qwen3-yarn", "yarn")])
def test_rope_scaling_matters(name, summary):
    """Llama-3.2-shaped (llama3 scaling: the converter wrote rope_freqs.weight) and Qwen3 with
    YaRN (rope.scaling.* metadata): with the scaling, the file computes transformers' logits;
    ignoring it (the unscaled frequencies) moves the logits far outside the tolerance, for the
    reference and for pylut."""
    path = _gguf(name, "F16")
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays["hf_logits"].astype(np.float32)
    lm = load_gguf(path, bits="f16")
    cfg = lm.config
    if name == "llama3.2":
        assert "rope_freqs.weight" in {t.name for t in pytest.importorskip("gguf").GGUFReader(str(path)).tensors}
        assert len(cfg["rope_scaling"]["freq_factors"]) == cfg["head_dim"] // 2
    model = _load(path, n_ctx=len(prompt) + N_GREEDY)
    assert summary in model.info()["rope"]["summary"]
    weights = file_weights(path)
    assert deviation(ref_forward(cfg, weights, prompt), want).max() <= HF_TOLERANCE
    ignored = dict(cfg, rope_scaling={"type": "default"}, rope_attn_factor=1.0)
    ignored.pop("rope_inv_freq")
    assert deviation(ref_forward(ignored, weights, prompt), want).max() > 10 * HF_TOLERANCE
    plain = _core.Session(_core.Model(ignored, lm.tensors), len(prompt), split_int8=True)
    dev = deviation(plain.forward([int(t) for t in prompt], model.pool, all_logits=True), want).max()
    assert dev > 10 * HF_TOLERANCE, f"without the scaling pylut is only {dev:.2%} away"


@pytest.mark.parametrize("name,qt", HF_FILES, ids=[f"{n}-{q}" for n, q in HF_FILES])
def test_reference_on_the_file_matches_llamacpp(name, qt):
    """On the float file llama.cpp's logits are the reference's too (F16 activations only):
    llama.cpp reads the converter's metadata (RoPE scaling included) as pylut's config does."""
    arrays, _ = _oracle(name)
    prompt, want = arrays["prompt"], arrays[f"lcpp_logits_{qt}"].astype(np.float32)
    cfg = load_gguf(_gguf(name, qt), bits=8).config
    dev = deviation(ref_forward(cfg, file_weights(_gguf(name, qt)), prompt), want)
    assert dev.max() <= HF_TOLERANCE, f"{name}-{qt}: {dev.max():.3%} of the range at position {int(dev.argmax())}"


# ---------------------------------------------------------------- sliding window (Mistral)


def test_gguf_sliding_window_is_carried(tmp_path, cache):
    """A llama file with {arch}.attention.sliding_window (Mistral-style) windows every layer
    and keeps its whole context (tests/test_sliding_window.py checks the logits past the
    window); `pylut info` says so. 0 means no window."""
    from model_builder import build_gguf
    path = tmp_path / "windowed.gguf"
    build_gguf(path, "llama", "Q8_0", context_length=128, metadata={"llama.attention.sliding_window": 48})
    model = pylut.load(path, cache=False, n_ctx=100)
    cfg = model.loaded.config
    assert cfg["sliding_window"] == 48 and cfg["swa_layers"] == [True, True] and cfg["max_ctx"] == 128
    assert "sliding window 48 on 2 of 2 layers" in model.info()["features"]
    build_gguf(path, "llama", "Q8_0", context_length=128, metadata={"llama.attention.sliding_window": 0})
    cfg = load_gguf(path).config
    assert "sliding_window" not in cfg and cfg["max_ctx"] == 128   # absent: no window
