"""Tiny random llama / qwen2 / bitnet GGUF files for loader and forward-pass tests.

Float weights are drawn at random and stored with ``gguf.quants.quantize`` where the gguf
package can quantize the type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, TQ1_0, TQ2_0).  It
cannot write K-quants, so those tensors are random block bytes whose fp16 super-scales are
chosen per block to give the same weight spread as the float matrices, with ``dmin`` set so
a block's weights average about zero (random codes alone would give every weight a large
positive offset and a degenerate model).

The output matrix is the embedding with its rows shuffled (see build_gguf for why).

BitNet matrices (the bitnet, bitnet-b1.58 and bitnet-25 archs) are ternary with one scale
per tensor, as BitNet b1.58 trains them, so that TQ1_0/TQ2_0 blocks all carry the same
scale and float files hold ternary values (what llama.cpp's converter writes for BitNet).
Their LM head is the embedding (llama.cpp's `bitnet` has no output tensor), they have
sub-norms, and may carry a one-element ``*.scale`` tensor beside each matrix.

Everything is drawn from ``seed``: the same arguments write byte-identical files.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import gguf
import gguf.quants
import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.constants import GGML_QUANT_SIZES

VOCAB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "vocab"

K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# byte offsets of (d, dmin) inside one K-quant block; dmin None for the symmetric ones
_K_SCALE_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2),
                   "Q6_K": (208, None)}
_FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16}
BITNET_ARCHS = ("bitnet", "bitnet-b1.58", "bitnet-25")
# types gguf.quants can quantize from floats
QUANTIZABLE = ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0")


def super_block(tensor_type: str) -> int:
    """Elements per block: a row length must be a multiple of it."""
    return GGML_QUANT_SIZES[GGMLQuantizationType[tensor_type]][0]


def _random_k_quant(rng: np.random.Generator, tensor_type: str, rows: int, cols: int,
                    std: float) -> np.ndarray:
    """Random K-quant block bytes [rows, bytes_per_row] with weights of about ``std``."""
    qtype = GGMLQuantizationType[tensor_type]
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    d_pos, dmin_pos = _K_SCALE_FIELDS[tensor_type]

    def with_scales(d, dmin):
        out = raw.copy()
        out[:, d_pos:d_pos + 2] = np.asarray(d, np.float16).reshape(-1, 1).view(np.uint8)
        if dmin_pos is not None:
            out[:, dmin_pos:dmin_pos + 2] = np.asarray(dmin, np.float16).reshape(-1, 1).view(np.uint8)
        return out

    def weights(blocks):
        return gguf.quants.dequantize(blocks, qtype).reshape(n_blocks, block_elems).astype(np.float64)

    ones, zeros = np.ones(n_blocks), np.zeros(n_blocks)
    grid = weights(with_scales(ones, zeros))              # d * sub-scale * code part
    spread = np.maximum(grid.std(axis=1), 1e-3)
    d = std / spread
    dmin = zeros
    if dmin_pos is not None:
        offset = -weights(with_scales(zeros, ones)).mean(axis=1)   # dmin * sub-min part
        dmin = np.where(offset > 0, d * grid.mean(axis=1) / np.maximum(offset, 1e-9), 0.0)
    return with_scales(d, dmin).reshape(rows, -1)


def _ternary(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """BitNet-style weights: one fp16-exact scale times trits (a third of them zero)."""
    scale = float(np.float16(std * 1.2247))   # sqrt(3/2): trit variance is 2/3
    return (scale * rng.integers(-1, 2, size=(rows, cols))).astype(np.float32)


I2S_TYPE_ID = 36   # bitnet.cpp's I2_S; the gguf package does not know it


def _encode(w: np.ndarray, tensor_type: str) -> tuple[np.ndarray, GGMLQuantizationType | int | None]:
    if tensor_type == "I2_S":
        # trits and the one scale of a ternary matrix (see _ternary), in bitnet.cpp's layout:
        # written as int8 bytes of a raw type id, so gguf keeps the given shape
        from pylut.formats.quants import encode_i2s
        scale = float(np.abs(w).max())
        return encode_i2s(np.sign(w).astype(np.int8), scale).view(np.int8), I2S_TYPE_ID
    if tensor_type in _FLOAT_DTYPES:
        return w.astype(_FLOAT_DTYPES[tensor_type]), None
    qtype = GGMLQuantizationType[tensor_type]
    return gguf.quants.quantize(w, qtype), qtype


def _copy_tokenizer(writer: gguf.GGUFWriter, vocab_file: Path) -> int:
    """Copy every tokenizer.* key of a vocab-only GGUF; returns its vocabulary size."""
    from pylut.formats.gguf_reader import GGUFFile
    with GGUFFile(vocab_file) as f:
        for key, value in f.metadata.items():
            if not key.startswith("tokenizer."):
                continue
            vtype = GGUFValueType(f.metadata_types[key])
            if vtype != GGUFValueType.ARRAY:
                if vtype == GGUFValueType.STRING:
                    value = value.encode("utf-8", "surrogateescape")
                writer.add_key_value(key, value, vtype)
            elif isinstance(value, np.ndarray):
                sub = {np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.int32): GGUFValueType.INT32,
                       np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(np.int8): GGUFValueType.INT8,
                       np.dtype(np.uint8): GGUFValueType.UINT8, np.dtype(bool): GGUFValueType.BOOL}[value.dtype]
                writer.add_key_value(key, value.tolist(), vtype, sub_type=sub)
            else:   # string arrays; vocab entries may be raw bytes kept via surrogateescape
                writer.add_key_value(key, [s.encode("utf-8", "surrogateescape") for s in value],
                                     vtype, sub_type=GGUFValueType.STRING)
        return len(f.metadata["tokenizer.ggml.tokens"])


def _made_up_tokenizer(writer: gguf.GGUFWriter, vocab: int, merges: Iterable[str] = ()) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    merges = list(merges)
    if merges:   # llama.cpp refuses a BPE vocabulary without them (GGUF has no empty arrays)
        writer.add_token_merges(merges)
    writer.add_token_types([1] * vocab)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)


def build_gguf(path, arch: str, tensor_type: str, vocab_from: str | None = None,
               n_layers: int = 2, dim: int = 64, n_heads: int = 4, n_kv_heads: int = 2,
               ffn: int = 128, seed: int = 0, *, vocab: int = 300, tied: bool = False,
               context_length: int = 128, omit: Iterable[str] = (),
               shape_overrides: dict[str, tuple[int, ...]] | None = None,
               type_overrides: dict[str, str] | None = None,
               residual_gain: float | None = None, rope_theta: float = 10000.0,
               rope_freqs: np.ndarray | None = None, metadata: dict | None = None,
               scale_tensors: bool = False, extra_tensors: dict[str, np.ndarray] | None = None,
               merges: Iterable[str] = (), truncate_i2s: int = 0, truncate_name: str = "") -> dict[str, str]:
    """Write a random model; returns GGUF tensor name -> type name as written.

    tensor_type applies to every matrix (embedding and output included); norms and biases
    are F32.  vocab_from: a file name in VOCAB_DIR whose tokenizer metadata is copied (the
    vocabulary size then follows it).  For the bad-input tests: ``omit`` leaves tensors out,
    ``shape_overrides`` writes a tensor with another shape, ``type_overrides`` stores one
    matrix as another type (any type: raw random bytes when gguf cannot quantize to it);
    ``arch`` may be any string (the tensor layout is llama's unless qwen2 / a bitnet);
    ``extra_tensors`` adds F32 tensors as given; ``merges`` go into the made-up vocabulary.
    tied: no output.weight (always for the bitnets). scale_tensors (bitnets): a one-element
    ``<matrix>.scale`` beside each layer matrix, an fp16-exact factor in [0.5, 2] that the
    runtime multiplies the product by.
    rope_freqs: written as rope_freqs.weight (F32); metadata: extra keys (str, float or int
    values), e.g. "llama.rope.scaling.type".
    tensor_type "I2_S" (bitnet.cpp's, for the bitnets): the ternary matrices in I2_S, the
    embedding F16 (type_overrides may name another).
    truncate_i2s: the I2_S tensor truncate_name loses its last truncate_i2s bytes."""
    rng = np.random.default_rng(seed)
    # GPT-2's init: the projections back into the residual stream get 1/sqrt(#branches), so
    # the current token's embedding stays the largest part of the residual (see output.weight)
    if residual_gain is None:
        residual_gain = (2 * n_layers) ** -0.5
    shape_overrides = dict(shape_overrides or {})
    type_overrides = dict(type_overrides or {})
    omit = set(omit)
    bitnet = arch in BITNET_ARCHS
    tied = tied or bitnet
    writer = gguf.GGUFWriter(str(path), arch)
    if vocab_from is not None:
        vocab = _copy_tokenizer(writer, VOCAB_DIR / vocab_from)
    else:
        _made_up_tokenizer(writer, vocab, merges)
    head_dim = dim // n_heads
    writer.add_block_count(n_layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(rope_theta)
    writer.add_rope_dimension_count(head_dim)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, int(value))

    written: dict[str, str] = {}

    def matrix(name, rows, cols, ternary, rows_of=None):
        """Write a random matrix, or (rows_of) the given encoded rows of another one."""
        rows, cols = shape_overrides.get(name, (rows, cols))
        qtype_name = type_overrides.get(name, tensor_type)
        if qtype_name == "I2_S" and not ternary:   # the embedding: F16, as bitnet.cpp writes it
            qtype_name = "F16"
        std = 1.0 if name == "token_embd.weight" else cols ** -0.5
        if name.endswith(("attn_output.weight", "ffn_down.weight")):
            std *= residual_gain
        if rows_of is not None:
            data, qtype, qtype_name = rows_of
        elif qtype_name in K_QUANTS:
            data, qtype = _random_k_quant(rng, qtype_name, rows, cols, std), GGMLQuantizationType[qtype_name]
        elif qtype_name in _FLOAT_DTYPES or qtype_name in QUANTIZABLE or qtype_name == "I2_S":
            w = _ternary(rng, rows, cols, std) if ternary else rng.normal(0, std, (rows, cols)).astype(np.float32)
            data, qtype = _encode(w, qtype_name)
        else:   # a type the loader must refuse: random bytes of the right size
            qtype = GGMLQuantizationType[qtype_name]
            block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
            data = rng.integers(0, 256, size=(rows, cols // block_elems * block_bytes), dtype=np.uint8)
        if name not in omit:
            if qtype == I2S_TYPE_ID:
                data = data[: data.size - truncate_i2s] if name == truncate_name else data
                writer.add_tensor(name, data, raw_shape=(rows, cols), raw_dtype=qtype)
            else:
                writer.add_tensor(name, data, raw_dtype=qtype)
            written[name] = qtype_name
            if scale_tensors and name.startswith("blk."):
                scale_name = name[: -len(".weight")] + ".scale"
                factor = np.float32(np.float16(rng.uniform(0.5, 2.0)))
                writer.add_tensor(scale_name, np.array([factor], np.float32))
                written[scale_name] = "F32"
        return data, qtype, qtype_name

    def vector(name, size, mean):
        shape = shape_overrides.get(name, (size,))
        if name not in omit:
            writer.add_tensor(name, (mean + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            written[name] = "F32"

    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
        written["rope_freqs.weight"] = "F32"
    ternary = bitnet
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    embd, qtype, qtype_name = matrix("token_embd.weight", vocab, dim, False)
    vector("output_norm.weight", dim, 1.0)
    if not tied:
        # The output rows are the embedding rows shuffled: the residual stream keeps the
        # current token's embedding, so the model prefers one successor per token by a clear
        # margin and greedy decoding is rarely decided by a near-tie (a random output matrix
        # gives near-ties every few steps, which int8 table rounding then flips).  Context
        # still moves the logits: the layers add as much to the residual as the embedding.
        successor = rng.permutation(vocab)
        matrix("output.weight", vocab, dim, False, rows_of=(embd[successor], qtype, qtype_name))
    for layer in range(n_layers):
        p = f"blk.{layer}."
        vector(p + "attn_norm.weight", dim, 1.0)
        matrix(p + "attn_q.weight", q_dim, dim, ternary)
        matrix(p + "attn_k.weight", kv_dim, dim, ternary)
        matrix(p + "attn_v.weight", kv_dim, dim, ternary)
        if arch == "qwen2":
            vector(p + "attn_q.bias", q_dim, 0.0)
            vector(p + "attn_k.bias", kv_dim, 0.0)
            vector(p + "attn_v.bias", kv_dim, 0.0)
        if bitnet:
            vector(p + "attn_sub_norm.weight", q_dim, 1.0)
        matrix(p + "attn_output.weight", dim, q_dim, ternary)
        vector(p + "ffn_norm.weight", dim, 1.0)
        matrix(p + "ffn_gate.weight", ffn, dim, ternary)
        matrix(p + "ffn_up.weight", ffn, dim, ternary)
        if bitnet:
            vector(p + "ffn_sub_norm.weight", ffn, 1.0)
        matrix(p + "ffn_down.weight", dim, ffn, ternary)
    for name, value in (extra_tensors or {}).items():
        writer.add_tensor(name, np.asarray(value, np.float32))
        written[name] = "F32"

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written
