"""GGUF files -> load_gguf -> the C forward pass, against the numpy reference forward.

For every architecture and tensor type a tiny random model is written (tests/model_builder),
loaded, and a 32-token prompt is run through ``Session.forward(all_logits=True)``.  The
reference (tests/ref_forward.py) runs over the SAME weights: ``QMatrix.dequantize()`` of what
the loader packed.  So the comparison isolates the C forward pass, whose only approximation
is the activation side: each matmul quantizes its lookup tables to int8 (about 1 % relative
error per matmul), and two layers plus the output projection compound that.

Tolerances (measured on these models, see the table at the end of this docstring):
* logits: max |C - ref| / max |ref| <= LOGIT_RTOL = 8 %  (measured 2.5-4.6 %);
* greedy argmax of the prompt's 32 positions agrees on >= 90 % of them;
* greedy decoding 32 tokens from the prompt: the first >= 8 tokens must match; the rest is
  logged, not asserted, since a near-tie between two logits may flip on table rounding.
  The decode runs on the KV cache one token at a time, the reference re-reads the whole
  sequence (teacher forcing on the C output finds the first divergence exactly).

Weights: for the lossless types (Q4_0, Q4_1, Q5_0, Q8_0, TQ1_0, TQ2_0, and BitNet's ternary
F16) the packed matrices must dequantize bit-exactly to ``gguf.quants.dequantize`` of the
file's bytes; K-quants only to fp16 rounding of their group scales (they are listed in
``LoadedModel.lossy``); F32/F16/BF16 are requantized to 4 bits by the loader.

Measured (x86-64 AVX-512, seed 0; rel = logit error, agree = prompt argmax agreement,
greedy = matching leading tokens of 32):
"""
import logging
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import gguf.quants  # noqa: E402
from model_builder import VOCAB_DIR, build_gguf, super_block  # noqa: E402
from ref_forward import forward as ref_forward  # noqa: E402

import pylut  # noqa: E402
from pylut import _core  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402
from pylut.gguf_reader import GGUFFile  # noqa: E402
from pylut.loader import load_gguf  # noqa: E402

log = logging.getLogger("pylut")

LOGIT_RTOL = 0.08
MIN_ARGMAX_AGREEMENT = 0.9
MIN_GREEDY_PREFIX = 8
PROMPT_LEN = GREEDY_LEN = 32

ALL_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0")
LOSSLESS = {"Q4_0", "Q4_1", "Q5_0", "Q8_0", "TQ1_0", "TQ2_0"}
K_QUANTS = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
CASES = ([("llama", t) for t in ALL_TYPES] + [("qwen2", t) for t in ALL_TYPES]
         + [("bitnet", t) for t in ("F16", "TQ1_0", "TQ2_0")])

needs_vocab = pytest.mark.skipif(not VOCAB_DIR.is_dir(),
                                 reason=f"real vocabularies not found at {VOCAB_DIR}")


def sizes(tensor_type):
    """Row lengths must be multiples of the block: 256 for K-quants and TQ."""
    return dict(dim=256, ffn=512) if super_block(tensor_type) == 256 else dict(dim=64, ffn=128)


def reference_weights(path):
    """GGUF name -> float32 weights, decoded by the gguf package (independent of pylut)."""
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    return out


def dequantized(lm):
    return {name: t.dequantize() if isinstance(t, _core.QMatrix) else t
            for name, t in lm.tensors.items()}


def core_to_gguf(name):
    return name if name.endswith(".bias") else name + ".weight"


def check_forward(lm, weights, seed=1):
    """Prompt logits and greedy decoding vs the reference; returns the measured figures."""
    cfg = lm.config
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, cfg["vocab"], PROMPT_LEN)
    session = _core.Session(lm.build(), n_ctx=PROMPT_LEN + GREEDY_LEN)
    pool = pylut.get_pool()
    logits = session.forward(prompt, pool, all_logits=True)
    ref = ref_forward(cfg, weights, prompt)
    rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
    agree = float((logits.argmax(1) == ref.argmax(1)).mean())

    generated = [int(logits[-1].argmax())]
    for _ in range(GREEDY_LEN - 1):
        generated.append(int(session.forward([generated[-1]], pool).argmax()))
    sequence = np.concatenate([prompt, generated])
    ref_choices = ref_forward(cfg, weights, sequence[:-1])[PROMPT_LEN - 1:].argmax(1)
    mismatch = np.flatnonzero(ref_choices != np.asarray(generated))
    prefix = int(mismatch[0]) if mismatch.size else GREEDY_LEN
    if prefix < GREEDY_LEN:   # the reference's own continuation, for the log
        ref_seq = list(sequence[:PROMPT_LEN + prefix])
        while len(ref_seq) < PROMPT_LEN + GREEDY_LEN:
            ref_seq.append(int(ref_forward(cfg, weights, ref_seq)[-1].argmax()))
        log.info("greedy diverges at token %d: C %s vs reference %s", prefix,
                 generated[prefix:], ref_seq[PROMPT_LEN + prefix:])
    return rel, agree, prefix


@pytest.fixture(scope="module")
def results():
    table = {}
    yield table
    for key, (rel, agree, prefix, load_s) in sorted(table.items()):
        log.info("%-16s logits rel %.4f  argmax %.3f  greedy %2d/%d  load %.3f s",
                 "%s/%s" % key, rel, agree, prefix, GREEDY_LEN, load_s)


@pytest.mark.parametrize("arch,tensor_type", CASES)
def test_forward_matches_reference(tmp_path, results, arch, tensor_type):
    path = tmp_path / f"{arch}-{tensor_type}.gguf"
    written = build_gguf(path, arch, tensor_type, **sizes(tensor_type))
    lm = load_gguf(path)
    assert lm.arch == arch and lm.config["rope_neox"] == (arch == "qwen2")
    assert lm.config["vocab"] == 300 and not lm.tied_output
    weights = dequantized(lm)

    # every tensor of the file is used, under the core name, with its type recorded
    assert {core_to_gguf(n) for n in lm.tensors} == set(written)
    for name in lm.tensors:
        assert lm.tensor_types[name] == written[core_to_gguf(name)]
    assert lm.n_params == sum(np.asarray(w).size for w in weights.values())

    # the packed weights against the gguf package's own dequantization of the file
    file_weights = reference_weights(path)
    ternary_floats = arch == "bitnet" and tensor_type == "F16"   # what BitNet's converter writes
    for name, w in weights.items():
        expected = file_weights[core_to_gguf(name)]
        assert w.shape == expected.shape, name
        if tensor_type in LOSSLESS or w.ndim == 1 or (ternary_floats and name.startswith("blk.")):
            np.testing.assert_array_equal(w, expected, err_msg=name)
        elif tensor_type in K_QUANTS:   # group scales rounded to fp16 only
            assert np.abs(w - expected).max() <= 2e-3 * np.abs(expected).max(), name
    if tensor_type in K_QUANTS:
        assert lm.lossy, "random K-quant scales cannot all be fp16-exact"
    else:
        assert not lm.lossy

    # ternary rows sharing one scale pack densely (BitNet: one scale per tensor; any TQ row
    # of a single 256-block); rows of several blocks with their own scales stay 2-bit codes
    if tensor_type.startswith("TQ") or ternary_floats:
        assert lm.tensors["blk.0.attn_q"].type == _core.TYPE_T3     # k = 256: one block a row
        assert (lm.tensors["blk.0.ffn_down"].type == _core.TYPE_T3) == (arch == "bitnet")

    rel, agree, prefix = check_forward(lm, weights)
    results[(arch, tensor_type)] = (rel, agree, prefix, lm.load_seconds)
    assert rel <= LOGIT_RTOL, f"logits differ by {rel:.3%} of their range"
    assert agree >= MIN_ARGMAX_AGREEMENT
    assert prefix >= MIN_GREEDY_PREFIX


@needs_vocab
@pytest.mark.parametrize("arch,tensor_type,vocab_file,tied", [
    ("llama", "Q4_0", "ggml-vocab-llama-spm.gguf", False),
    ("qwen2", "Q8_0", "ggml-vocab-qwen2.gguf", True),
])
def test_real_vocabulary(tmp_path, results, arch, tensor_type, vocab_file, tied):
    path = tmp_path / "m.gguf"
    build_gguf(path, arch, tensor_type, vocab_from=vocab_file, tied=tied)
    lm = load_gguf(path)
    with GGUFFile(VOCAB_DIR / vocab_file) as vocab:
        n_vocab = len(vocab.metadata["tokenizer.ggml.tokens"])
        assert lm.metadata["tokenizer.ggml.tokens"] == vocab.metadata["tokenizer.ggml.tokens"]
        assert lm.metadata["tokenizer.ggml.model"] == vocab.metadata["tokenizer.ggml.model"]
    assert lm.config["vocab"] == n_vocab
    assert lm.tied_output == tied
    if tied:
        assert lm.tensors["output"] is lm.tensors["token_embd"]
    rel, agree, prefix = check_forward(lm, dequantized(lm))
    results[(arch, f"{tensor_type}+vocab")] = (rel, agree, prefix, lm.load_seconds)
    assert rel <= LOGIT_RTOL and agree >= MIN_ARGMAX_AGREEMENT and prefix >= MIN_GREEDY_PREFIX


# ---------------------------------------------------------------- bad input

def test_truncated_file(tmp_path):
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "Q8_0")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        load_gguf(cut)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "m.gguf"
    build_gguf(path, "mamba", "Q8_0")
    with pytest.raises(ModelFileError, match=r"'mamba'.*llama, qwen2, bitnet"):
        load_gguf(path)


@pytest.mark.parametrize("arch,missing", [("llama", "blk.1.ffn_down.weight"),
                                          ("llama", "output_norm.weight"),
                                          ("qwen2", "blk.0.attn_k.bias"),
                                          ("bitnet", "blk.1.ffn_sub_norm.weight")])
def test_missing_tensor(tmp_path, arch, missing):
    path = tmp_path / "m.gguf"
    build_gguf(path, arch, "F16", omit=[missing])
    with pytest.raises(ModelFileError, match=f"missing tensor '{missing}'"):
        load_gguf(path)


@pytest.mark.parametrize("name,shape,expected", [
    ("blk.0.attn_k.weight", (64, 64), (32, 64)),      # n_kv_heads * head_dim rows
    ("blk.1.ffn_down.weight", (64, 96), (64, 128)),   # ffn columns
    ("blk.0.attn_norm.weight", (32,), (64,)),
])
def test_wrong_shape(tmp_path, name, shape, expected):
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "F32", shape_overrides={name: shape})
    with pytest.raises(ModelFileError) as err:
        load_gguf(path)
    message = str(err.value)
    assert name in message and str(shape) in message and str(expected) in message


@pytest.mark.parametrize("bad_type", ["Q8_1", "IQ4_NL"])
def test_unsupported_matrix_type(tmp_path, bad_type):
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "Q4_0", type_overrides={"blk.0.ffn_up.weight": bad_type})
    with pytest.raises(ModelFileError, match=f"'blk.0.ffn_up.weight' has type {bad_type}"):
        load_gguf(path)


def test_bad_arguments(tmp_path):
    path = tmp_path / "m.gguf"
    build_gguf(path, "llama", "F32")
    with pytest.raises(ValueError, match="bits"):
        load_gguf(path, bits=9)
    with pytest.raises(ValueError, match="group"):
        load_gguf(path, group=12)
    lm = load_gguf(path, bits=3, group=32)   # float matrices follow the requested grid
    assert lm.tensors["blk.0.attn_q"].bits == 3 and lm.tensors["blk.0.attn_q"].group == 32
