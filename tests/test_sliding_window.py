"""Sliding windows over every layer (Mistral, Phi-3; Gemma's interleaved ones are
tests/test_gemma.py's): at prompts longer than the window, pylut's logits are the reference
forward pass's with the window applied (transformers' masks: a query at p sees (p - window,
p]), through prefill chunks and single-token decode, and clearly not those of attending to
every position (what llama.cpp's llama and phi3 graphs compute: they ignore the window)."""
import sys
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.formats.gguf_model import load_gguf
from pylut.formats.hf_loader import load_hf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_folders import edited_copy  # noqa: E402
from ref_forward import forward as ref_forward  # noqa: E402
from test_gemma import TOLERANCE, _packed_weights, deviation  # noqa: E402

ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo"


def _mistral_gguf(tmp_path):
    from model_builder import build_gguf
    path = tmp_path / "mistral-window.gguf"
    build_gguf(path, "llama", "Q8_0", context_length=128, metadata={"llama.attention.sliding_window": 40})
    return load_gguf(path, bits=8)


CASES = {
    "mistral-hf": lambda tmp: load_hf(ZOO / "mistral" / "hf", bits=8),                       # window 160
    "mistral-gguf": _mistral_gguf,                                                             # window 40
    "phi3-hf": lambda tmp: load_hf(edited_copy(ZOO / "phi3" / "hf", tmp / "phi3",
                                               lambda c: c.update(sliding_window=24)), bits=8),  # window 24
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_layer_attends_within_its_window(case, tmp_path):
    lm = CASES[case](tmp_path)
    cfg = lm.config
    window = cfg["sliding_window"]
    assert cfg["swa_layers"] == [True] * cfg["n_layers"]
    n = window + 48
    assert n <= cfg["max_ctx"]
    prompt = np.random.default_rng(window).integers(0, cfg["vocab"], n)
    weights, layout = _packed_weights(lm), "hf" if case.endswith("-hf") else "gguf"
    want = ref_forward(cfg, weights, prompt, layout=layout)
    pool = pylut.get_pool()

    session = _core.Session(lm.build(), n_ctx=n, max_batch=32, split_int8=True)   # prefill in chunks
    got = session.forward([int(t) for t in prompt], pool, all_logits=True)
    assert deviation(got, want) <= TOLERANCE

    session = _core.Session(lm.build(), n_ctx=n, split_int8=True)   # then decode past the window
    session.forward([int(t) for t in prompt[:window - 4]], pool)
    steps = np.stack([session.forward([int(t)], pool) for t in prompt[window - 4:]])
    assert deviation(steps, want[window - 4:]) <= TOLERANCE

    # the window decides the later positions, and only those
    full = ref_forward(dict(cfg, swa_layers=[False] * cfg["n_layers"]), weights, prompt, layout=layout)
    assert deviation(full[:window], want[:window]) <= 1e-5
    assert deviation(full[window:], want[window:]) > 10 * TOLERANCE
