"""GPTQ checkpoints (Hugging Face folders with quantization_config.quant_method "gptq").

Tiny llama / qwen2 folders are written here with random codes, scales and zero points,
packed by a deliberately naive bit-by-bit packer (not the loader's unpacker run backwards),
in both checkpoint formats ("gptq" stores zero - 1, "gptq_v2" the zero itself). The float
reference is W[n, k] = s[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]) straight from those arrays:
* sym (one zero point 2^(bits-1)): the loaded QMatrix dequantizes to W bit for bit.
* asym: the per-group zero points become fp16 biases -s*z, off by at most half an fp16 ulp:
  |error| <= 2^-11 |s*z| (+ 2^-25 for subnormals, + one float32 rounding of the sum).
* act-order (a permuted g_idx): requantized round-to-nearest, a warning is logged.
The forward pass is compared with tests/ref_forward.py over the loaded (dequantized)
weights with the float-HF test's tolerance (3 % of the logit range: int8 activation tables).
As in tests/model_builder.py, lm_head is the embedding with shuffled rows and the residual
projections are scaled down, so greedy decisions have margins and 16 greedy tokens can be
required to match the reference exactly.
"""
import itertools
import json
import logging
import struct
from typing import NamedTuple

import numpy as np
import pytest
from test_hf_loader import build_hf

import pylut
from pylut import _core
from pylut.formats import gptq
from pylut.errors import ModelFileError

from ref_forward import forward

LOGIT_RTOL = 0.03            # tests/test_hf_loader.py's tolerance
GREEDY_LEN = 16
DIM, FFN, HEADS, KV_HEADS, LAYERS, VOCAB = 64, 128, 4, 2, 2, 300
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
CORE = dict(zip(PROJECTIONS, ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")))
ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}


# ---------------------------------------------------------------- writing a GPTQ folder

def pack_bits(values, bits, axis):
    """The GPTQ bit stream, one bit at a time: bit b of value i lands at stream position
    bits*i + b, i.e. bit (pos % 32) of int32 word pos // 32 along `axis`."""
    v = np.moveaxis(np.asarray(values, np.uint64), axis, 0)
    words = np.zeros((v.shape[0] * bits // 32,) + v.shape[1:], np.uint64)
    for i in range(v.shape[0]):
        for b in range(bits):
            pos = bits * i + b
            words[pos // 32] |= ((v[i] >> np.uint64(b)) & np.uint64(1)) << np.uint64(pos % 32)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Reference(NamedTuple):
    w: np.ndarray            # float32 W[n_out, n_in], exact
    s_times_z: np.ndarray    # |s * z| per weight: the fp16 bias rounding scales with it


def gptq_layer(rng, n_out, n_in, bits, group_size, sym, act_order, std):
    """Random codes/scales/zeros and g_idx; returns (tensors by suffix, Reference)."""
    gs = n_in if group_size == -1 else group_size
    n_groups = -(-n_in // gs)
    g_idx = np.arange(n_in) // gs
    if act_order:  # groups formed in a permuted input order, as GPTQ's desc_act does
        g_idx = g_idx[np.argsort(rng.permutation(n_in))]
    z = np.full((n_groups, n_out), 1 << (bits - 1))
    if not sym:  # zero points near the middle, as GPTQ finds for centred weights, and both ends
        z = z + rng.integers(-1, 2, z.shape)
        z[0, :2] = 0, (1 << bits) - 1   # zero 0 is stored as 2^bits - 1 in v1 ("gptq") files
    # codes spread around their group's zero point like real weights (uniform codes would give
    # every row a large mean, which swamps the residual stream of a 2-bit model)
    spread = (1 << bits) / 5
    q = np.clip(np.rint(z[g_idx] + rng.normal(0, spread, (n_in, n_out))), 0, (1 << bits) - 1)
    q = q.astype(np.int64)
    s = (std / spread * rng.uniform(0.5, 1.5, (n_groups, n_out))).astype(np.float16)
    s_k, z_k = s.astype(np.float32)[g_idx].T, z[g_idx].T.astype(np.float32)  # per weight [n_out, n_in]
    ref = Reference(w=s_k * (q.T - z_k), s_times_z=np.abs(s_k * z_k))
    return dict(qweight=pack_bits(q, bits, 0), scales=s, z=z, g_idx=g_idx.astype(np.int32)), ref


def build_gptq(folder, arch="LlamaForCausalLM", bits=4, group_size=32, sym=True, fmt="gptq",
               act_order=False, write_g_idx=True, qconfig=None, mutate=None):
    """A GPTQ folder (config.json, model.safetensors, tokenizer.json); returns the
    References by core name (blk.i.attn_q ...)."""
    build_hf(folder, arch=arch, dim=DIM, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, ffn=FFN, vocab=VOCAB)
    rng = np.random.default_rng(bits * 100 + sym * 10 + act_order)
    hd = DIM // HEADS
    kvd = KV_HEADS * hd
    embed = rng.standard_normal((VOCAB, DIM)).astype(np.float16)
    t = {"model.embed_tokens.weight": embed, "lm_head.weight": embed[rng.permutation(VOCAB)],
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)}
    shapes = {"self_attn.q_proj": (DIM, DIM), "self_attn.k_proj": (kvd, DIM), "self_attn.v_proj": (kvd, DIM),
              "self_attn.o_proj": (DIM, DIM), "mlp.gate_proj": (FFN, DIM), "mlp.up_proj": (FFN, DIM),
              "mlp.down_proj": (DIM, FFN)}
    ref = {}
    for i in range(LAYERS):
        h = f"model.layers.{i}."
        t[h + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
        t[h + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
        for proj in PROJECTIONS:
            n_out, n_in = shapes[proj]
            std = n_in ** -0.5 / (np.sqrt(2 * LAYERS) if proj in ("self_attn.o_proj", "mlp.down_proj") else 1)
            parts, ref[f"blk.{i}.{CORE[proj]}"] = gptq_layer(rng, n_out, n_in, bits, group_size, sym, act_order, std)
            stored_zeros = (parts.pop("z") - (1 if fmt == "gptq" else 0)) % (1 << bits)
            parts["qzeros"] = pack_bits(stored_zeros, bits, 1)
            if not (write_g_idx or act_order):
                parts.pop("g_idx")
            for suffix, a in parts.items():
                t[f"{h}{proj}.{suffix}"] = a
        if arch.startswith("Qwen2"):
            for x, n in (("q", DIM), ("k", kvd), ("v", kvd)):
                t[h + f"self_attn.{x}_proj.bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
    qc = dict(quant_method="gptq", bits=bits, group_size=group_size, sym=sym, desc_act=act_order,
              checkpoint_format=fmt)
    qc.update(qconfig or {})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = qc
    (folder / "config.json").write_text(json.dumps(cfg))
    if mutate:
        mutate(t)
    write_safetensors(folder / "model.safetensors", t)
    return ref


def dequantized(loaded):
    return {k: (t.dequantize() if isinstance(t, _core.QMatrix) else np.asarray(t)) for k, t in loaded.tensors.items()}


def relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def greedy_prefix(loaded, weights, prompt):
    """Greedy tokens on the KV cache vs the reference reading that sequence (teacher forcing):
    how many of GREEDY_LEN agree before the first difference."""
    session, pool = _core.Session(loaded.build(), n_ctx=len(prompt) + GREEDY_LEN), pylut.get_pool()
    logits = session.forward(prompt, pool, all_logits=True)
    tokens = [int(logits[-1].argmax())]
    for _ in range(GREEDY_LEN - 1):
        tokens.append(int(session.forward([tokens[-1]], pool).argmax()))
    seq = np.concatenate([prompt, tokens])
    ref_choice = forward(loaded.config, weights, seq[:-1], layout="hf")[len(prompt) - 1:].argmax(1)
    differ = np.flatnonzero(ref_choice != np.asarray(tokens))
    return int(differ[0]) if differ.size else GREEDY_LEN


# ---------------------------------------------------------------- unpacking

def test_unpack_3bit_straddles_words():
    """Values 10 and 21 of a 3-bit block cross word boundaries (AutoGPTQ's pack loop writes
    value 10's low 2 bits at bits 30-31 of word 0 and its high bit at bit 0 of word 1;
    value 21's low bit at bit 31 of word 1 and its high 2 bits at bits 0-1 of word 2)."""
    values = np.zeros((32, 1), np.uint8)
    values[10], values[21], values[31] = 0b101, 0b110, 0b111
    words = np.array([[0b01 << 30], [1], [0b11 | 0b111 << 29]], np.uint32).view(np.int32)
    assert np.array_equal(gptq.unpack_rows(words, 3, 32), values)
    assert np.array_equal(pack_bits(values, 3, 0), words)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_matches_the_reference_packer(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, (96, 5)).astype(np.uint8)
    assert np.array_equal(gptq.unpack_rows(pack_bits(values, bits, 0), bits, 96), values)
    assert np.array_equal(gptq.unpack_rows(pack_bits(values.T, bits, 1).T, bits, 96), values)


# ---------------------------------------------------------------- lossless repacking

def fp16_bias_bound(ref):
    """Half an fp16 ulp of the bias s*z (2^-25 below the normal range), plus the float32
    rounding of scale*code + bias in dequantize()."""
    return 2.0 ** -11 * ref.s_times_z + 2.0 ** -25 + 2.0 ** -24 * np.abs(ref.w)


# every bits x sym x format; the architecture and whether g_idx is written alternate
LOSSLESS = [("Qwen2ForCausalLM" if n % 2 else "LlamaForCausalLM", bits, sym, fmt, n % 3 != 0)
            for n, (bits, sym, fmt) in enumerate(itertools.product((2, 3, 4), (True, False), ("gptq", "gptq_v2")))]


@pytest.mark.parametrize("arch,bits,sym,fmt,write_g_idx", LOSSLESS)
def test_gptq_repacked_losslessly(tmp_path, cache, arch, bits, sym, fmt, write_g_idx):
    ref = build_gptq(tmp_path / "m", arch=arch, bits=bits, sym=sym, fmt=fmt, write_g_idx=write_g_idx)
    m = pylut.load(tmp_path / "m", n_ctx=64)
    lm = m.loaded
    for name, r in ref.items():
        qm = lm.tensors[name]
        assert (qm.bits, qm.group, lm.tensor_types[name]) == (bits, 32, f"GPTQ{bits}")
        got = qm.dequantize()
        if sym:  # implied-zero grid: bit-exact, no bias array
            assert qm.zero == 1 << (bits - 1) and not qm.has_bias
            assert np.array_equal(got, r.w), name
            assert name not in lm.lossy
        else:
            assert qm.has_bias
            assert np.all(np.abs(got - r.w) <= fp16_bias_bound(r)), name
    weights = dequantized(lm)
    prompt = m.tokenize("GPTQ, repacked: 0123", add_bos=False)
    out = m.state.forward(prompt, m.pool, all_logits=True)
    want = forward(lm.config, weights, prompt, layout="hf")
    assert relative_error(out, want) <= LOGIT_RTOL
    assert (out.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert greedy_prefix(lm, weights, prompt) == GREEDY_LEN


@pytest.mark.parametrize("bits,group_size,want_group", [
    (4, -1, {64: 64, 128: 128}),   # one group per row: any width fits; the least padding wins
    (3, 64, {64: 64, 128: 64}),
    (8, 128, {64: 64, 128: 128}),  # a group wider than the 64-input rows
])
def test_group_sizes_and_8_bits(tmp_path, cache, bits, group_size, want_group):
    ref = build_gptq(tmp_path / "m", bits=bits, group_size=group_size)
    lm = pylut.load(tmp_path / "m", n_ctx=64).loaded
    for name, r in ref.items():
        qm = lm.tensors[name]
        assert qm.group == want_group[qm.shape[1]], name
        assert np.array_equal(qm.dequantize(), r.w), name


def test_act_order_with_contiguous_groups_stays_lossless(tmp_path, cache, caplog):
    """desc_act=True with g_idx in input order (static groups, or a trivial act order)."""
    ref = build_gptq(tmp_path / "m", bits=4, qconfig={"desc_act": True})
    with caplog.at_level(logging.WARNING, logger="pylut"):
        lm = pylut.load(tmp_path / "m", n_ctx=64).loaded
    assert "act-order" not in caplog.text
    assert all(np.array_equal(lm.tensors[n].dequantize(), r.w) for n, r in ref.items())


# requantizing to the checkpoint's own width on contiguous groups cannot follow GPTQ's
# scattered groups: measured max logit error vs the checkpoint's exact weights 25 % (2-bit),
# 9 % (3-bit), 5-6 % (4-bit) of the logit range, prompt argmax agreement 100 %
ACT_ORDER_RTOL = {2: 0.35, 3: 0.15, 4: 0.10}


@pytest.mark.parametrize("bits,sym", [(2, False), (3, True), (4, False)])
def test_act_order_is_requantized_with_a_warning(tmp_path, cache, caplog, bits, sym):
    ref = build_gptq(tmp_path / "m", bits=bits, sym=sym, act_order=True)
    with caplog.at_level(logging.WARNING, logger="pylut"):
        m = pylut.load(tmp_path / "m", n_ctx=64)
    lm = m.loaded
    n_matrices = LAYERS * len(PROJECTIONS)
    assert f"{n_matrices} GPTQ matrices use act-order" in caplog.text
    assert set(ref) <= lm.lossy
    assert all(lm.tensors[n].bits == bits and lm.tensors[n].group == 32 for n in ref)
    loaded = dequantized(lm)
    checkpoint = dict(loaded, **{n: r.w for n, r in ref.items()})
    prompt = m.tokenize("GPTQ, act order", add_bos=False)
    out = m.state.forward(prompt, m.pool, all_logits=True)
    assert relative_error(out, forward(lm.config, loaded, prompt, layout="hf")) <= LOGIT_RTOL  # the kernel itself
    want = forward(lm.config, checkpoint, prompt, layout="hf")
    assert relative_error(out, want) <= ACT_ORDER_RTOL[bits]
    assert (out.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_second_load_maps_the_packed_cache(tmp_path, cache, monkeypatch):
    build_gptq(tmp_path / "m", bits=3, sym=False)
    first = pylut.load(tmp_path / "m", n_ctx=64)

    def no_repack(*args, **kwargs):
        raise AssertionError("the second load repacked the checkpoint instead of mapping the cache")
    monkeypatch.setattr("pylut.formats.hf_loader.load_hf", no_repack)
    second = pylut.load(tmp_path / "m", n_ctx=64)
    a, b = first.loaded, second.loaded
    assert (a.lossy, a.tensor_types, a.config) == (b.lossy, b.tensor_types, b.config)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        if isinstance(t, _core.QMatrix):
            assert (t.bits, t.group, t.zero, t.has_bias) == (u.bits, u.group, u.zero, u.has_bias)
            assert np.array_equal(t.dequantize(), u.dequantize()), name
        else:
            assert np.array_equal(t, u), name
    prompt = first.tokenize("cached", add_bos=False)
    assert np.array_equal(first.state.forward(prompt, first.pool, all_logits=True),
                          second.state.forward(prompt, second.pool, all_logits=True))


def test_legacy_quantize_config_json(tmp_path, cache):
    """Older AutoGPTQ folders keep the settings in quantize_config.json, without quant_method."""
    ref = build_gptq(tmp_path / "m", bits=4)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    qc = cfg.pop("quantization_config")
    del qc["quant_method"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "m" / "quantize_config.json").write_text(json.dumps(qc))
    lm = pylut.load(tmp_path / "m", n_ctx=64).loaded
    assert all(np.array_equal(lm.tensors[n].dequantize(), r.w) for n, r in ref.items())


def test_requant_option_requantizes_gptq_layers(tmp_path, cache):
    ref = build_gptq(tmp_path / "m", bits=4)
    lm = pylut.load(tmp_path / "m", n_ctx=64, requant="q2").loaded
    assert all(lm.tensors[n].bits == 2 and n in lm.lossy for n in ref)


def test_mislabelled_checkpoint_format_warns(tmp_path, cache, caplog):
    """A gptq_v2 file declared as v1: every symmetric zero point decodes one too high."""
    build_gptq(tmp_path / "m", bits=4, fmt="gptq_v2", qconfig={"checkpoint_format": "gptq"})
    with caplog.at_level(logging.WARNING, logger="pylut"):
        pylut.load(tmp_path / "m", n_ctx=64)
    assert "14 GPTQ matrices are marked sym but have zero points other than 8" in caplog.text


# ---------------------------------------------------------------- bad checkpoints

L0, L1 = "model.layers.0.", "model.layers.1."


def _set(name, value):
    def mutate(t):
        t[name] = value(t[name]) if callable(value) else value
    return mutate


def _drop(name):
    return lambda t: t.pop(name)


def _g_idx_out_of_range(a):
    a = a.copy()
    a[3] = 99
    return a


BAD = [
    (dict(mutate=_drop(L1 + "mlp.up_proj.qweight")), f"missing tensor '{L1}mlp.up_proj.qweight'"),
    (dict(mutate=_drop(L0 + "self_attn.k_proj.qzeros")), f"missing tensor '{L0}self_attn.k_proj.qzeros'"),
    (dict(mutate=_drop(L0 + "mlp.down_proj.scales")), f"missing tensor '{L0}mlp.down_proj.scales'"),
    (dict(mutate=_set(L0 + "mlp.gate_proj.qweight", lambda a: a[:-1])),            # K
     f"'{L0}mlp.gate_proj.qweight' has shape \\(7, 128\\), expected \\(8, 128\\)"),
    (dict(mutate=_set(L0 + "self_attn.v_proj.scales", lambda a: a[:, :16])),       # N
     f"'{L0}self_attn.v_proj.scales' has shape \\(2, 16\\)"),
    (dict(qconfig={"group_size": 16}),                                             # group count
     f"'{L0}self_attn.q_proj.qzeros' has shape \\(2, 8\\), expected \\(4, 8\\)"),
    (dict(mutate=_set(L1 + "self_attn.o_proj.g_idx", _g_idx_out_of_range)),
     f"'{L1}self_attn.o_proj.g_idx' has group indices in \\[0, 99\\], outside \\[0, 2\\)"),
    (dict(mutate=_set(L0 + "self_attn.q_proj.qweight", lambda a: a.astype(np.float32))),
     f"'{L0}self_attn.q_proj.qweight' has dtype F32, expected I32"),
    (dict(mutate=_set(L0 + "mlp.up_proj.scales", lambda a: np.where(a == a.flat[0], np.nan, a).astype(np.float16))),
     f"'{L0}mlp.up_proj.scales' contains NaN"),
    (dict(mutate=_set(L0 + "self_attn.o_proj.bias", np.ones(DIM, np.float32))),
     f"'{L0}self_attn.o_proj.bias' is a nonzero bias"),
    (dict(qconfig={"bits": 5}), "GPTQ bits = 5"),
    (dict(qconfig={"quant_method": "awq"}), "'awq' quantized checkpoints are not supported"),
    (dict(qconfig={"checkpoint_format": "marlin"}), "checkpoint_format 'marlin'"),
    (dict(qconfig={"group_size": 0}), "group_size = 0"),
    (dict(qconfig={"dynamic": {"-:.*down_proj": {}}}), "dynamic"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split("'")[1] if "'" in m else m for _, m in BAD])
def test_bad_checkpoints_are_refused(tmp_path, cache, kwargs, message):
    build_gptq(tmp_path / "m", **kwargs)
    with pytest.raises(ModelFileError, match=message):
        pylut.load(tmp_path / "m", n_ctx=64)
