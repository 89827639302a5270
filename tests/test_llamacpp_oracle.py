"""pylut's logits against llama.cpp's own, on tiny files both engines read losslessly.

The fixtures (tests/fixtures/llamacpp/*.npz, written by tools/make_llamacpp_oracle.py) hold
llama.cpp's logits for a 40-token prompt; each GGUF file is rebuilt here from the recorded
tests/model_builder.py arguments and checked byte for byte (sha256) before comparing. This
is the check that pylut and its numpy reference (tests/ref_forward.py) do not share a wrong
assumption about an architecture: both are compared with llama.cpp, and the comparison is
shown to fail when the bitnet RoPE pairing or FFN activation is swapped.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf  # noqa: E402
import gguf.quants  # noqa: E402
import pylut  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.formats.gguf_model import load_gguf  # noqa: E402
from model_builder import build_gguf  # noqa: E402
from ref_forward import forward as ref_forward  # noqa: E402

FIXTURES = sorted((Path(__file__).resolve().parent / "fixtures" / "llamacpp").glob("*.npz"))
TOLERANCE = 0.01   # of the logit range at each position
BITNET = [f for f in FIXTURES if f.stem.startswith("bitnet-")]
# pylut quantizes float matrices that are not ternary (here the F32 file's embedding, which
# is also its LM head) to `bits`; 8 bits keep that rounding well inside the tolerance
LOAD = {"bitnet-F32-scales": dict(bits=8)}


def _fixture(path):
    with np.load(path) as z:
        return z["logits"].astype(np.float32), z["prompt"], json.loads(str(z["meta"]))


def _rebuild(tmp_path, meta):
    path = tmp_path / (meta["case"] + ".gguf")
    build_gguf(path, **meta["build_gguf"])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == meta["sha256"], (
        f"{meta['case']}: tests/model_builder.py no longer writes the file llama.cpp's logits were "
        f"made from; rerun tools/make_llamacpp_oracle.py")
    return path


def deviation(got, want):
    """Per position: the largest logit difference over llama.cpp's logit range there."""
    return np.abs(got - want).max(axis=1) / (want.max(axis=1) - want.min(axis=1))


def _file_weights(path):
    """Core name -> float32 weights as the file holds them (the gguf package's decoding,
    independent of pylut), each matrix times its one-element *.scale where it has one."""
    raw = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        raw[t.name] = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    weights = {}
    for name, w in raw.items():
        if name.endswith(".weight"):
            scale = raw.get(name[: -len(".weight")] + ".scale")
            weights[name[: -len(".weight")]] = (w * (1 if scale is None else scale.reshape(-1)[0])).astype(np.float32)
        elif not name.endswith(".scale"):
            weights[name] = w.astype(np.float32)
    weights.setdefault("output", weights["token_embd"])
    return weights


def _session_logits(config, tensors, prompt):
    session = _core.Session(_core.Model(config, tensors), n_ctx=64, split_int8=True)
    return session.forward(prompt, pylut.get_pool(), all_logits=True)


def test_every_case_has_a_fixture():
    names = {f.stem for f in FIXTURES}
    assert {"bitnet-F32-scales", "bitnet-Q8_0", "bitnet-TQ1_0", "bitnet-TQ2_0", "llama-Q8_0",
            "qwen2-Q8_0"} <= names
    assert sum(f.stat().st_size for f in FIXTURES) < 400_000


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_pylut_matches_llamacpp(tmp_path, fixture):
    want, prompt, meta = _fixture(fixture)
    path = _rebuild(tmp_path, meta)
    model = pylut.load(path, precision="high", cache=False, n_ctx=64, **LOAD.get(fixture.stem, {}))
    got = model.state.forward(prompt, model.pool, all_logits=True)
    dev = deviation(got, want)
    assert dev.max() <= TOLERANCE, f"max deviation {dev.max():.4%} at position {int(dev.argmax())}"
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.stem)
def test_reference_matches_llamacpp(tmp_path, fixture):
    """The numpy reference the other tests trust follows llama.cpp, not pylut's table."""
    want, prompt, meta = _fixture(fixture)
    path = _rebuild(tmp_path, meta)
    dev = deviation(ref_forward(load_gguf(path).config, _file_weights(path), prompt), want)
    assert dev.max() <= TOLERANCE, f"max deviation {dev.max():.4%} at position {int(dev.argmax())}"


@pytest.mark.parametrize("fixture", BITNET, ids=lambda f: f.stem)
@pytest.mark.parametrize("swap", ["rope", "ffn_act"])
def test_bitnet_swapped_back_fails(tmp_path, fixture, swap):
    """With adjacent-pair RoPE or ReLU^2 (pylut's old bitnet), the same comparison fails:
    for pylut's forward pass and for the reference alike."""
    want, prompt, meta = _fixture(fixture)
    path = _rebuild(tmp_path, meta)
    lm = load_gguf(path, ternary="b2", **LOAD.get(fixture.stem, {}))
    assert lm.config["rope_neox"] and lm.config["ffn_act"] == "silu"
    wrong = dict(lm.config, **({"rope_neox": False} if swap == "rope" else {"ffn_act": "relu2"}))
    assert deviation(_session_logits(lm.config, lm.tensors, prompt), want).max() <= TOLERANCE
    assert deviation(_session_logits(wrong, lm.tensors, prompt), want).max() > 3 * TOLERANCE
    override = {"rope": "norm"} if swap == "rope" else {"ffn_act": "relu2"}
    ref = ref_forward(lm.config, _file_weights(path), prompt, **override)
    assert deviation(ref, want).max() > 3 * TOLERANCE
