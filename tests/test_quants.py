"""Integer-code decoders checked against ``gguf.quants.dequantize``.

Comparison is bit-exact (``np.array_equal``; 0.0 and -0.0 compare equal): the affine
form scale*code+bias evaluated in float32 rounds at most once, exactly where the
reference dequantizer rounds (see pylut/formats/quants.py docstring).
"""
import zlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
import gguf.quants as reference  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

from pylut.formats import quants  # noqa: E402

# byte offsets of the fp16 super-scale fields (d, and dmin/m where present) per block
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "TQ1_0": [52], "TQ2_0": [64],
}
EXPECTED = {  # type -> (bits, group, ternary)
    "Q4_0": (4, 32, False), "Q4_1": (4, 32, False), "Q5_0": (5, 32, False),
    "Q5_1": (5, 32, False), "Q8_0": (8, 32, False), "Q2_K": (2, 16, False),
    "Q3_K": (3, 16, False), "Q4_K": (4, 32, False), "Q5_K": (5, 32, False),
    "Q6_K": (6, 16, False), "TQ1_0": (2, 256, True), "TQ2_0": (2, 256, True),
}
QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0"]


def random_blocks(rng, type_name, n_rows, n_cols):
    """Random block bytes whose fp16 scale fields hold finite values of mixed magnitude."""
    block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    n_blocks = n_rows * n_cols // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for pos in FP16_FIELDS[type_name]:
        magnitude = 10.0 ** rng.integers(-5, 2, size=n_blocks)
        d = (rng.uniform(-3.0, 3.0, size=n_blocks) * magnitude).astype(np.float16)
        raw[:, pos:pos + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, -1)


def affine_float32(q):
    """scale*codes+bias the plain way, in float32, as a kernel would."""
    scale = np.repeat(q.scale, q.group, axis=1)
    bias = np.repeat(q.bias, q.group, axis=1)
    return scale * q.codes.astype(np.float32) + bias


def check_against_reference(raw, type_name, shape):
    expected = reference.dequantize(raw, GGMLQuantizationType[type_name]).reshape(shape)
    q = quants.decode_codes(raw, type_name, shape)
    bits, group, ternary = EXPECTED[type_name]
    n_rows, n_cols = shape
    assert (q.bits, q.group, q.ternary, q.type_name) == (bits, group, ternary, type_name)
    assert q.codes.shape == (n_rows, n_cols) and q.codes.dtype == np.uint8
    assert q.scale.shape == q.bias.shape == (n_rows, n_cols // group)
    assert q.scale.dtype == q.bias.dtype == np.float32
    assert int(q.codes.max()) < 2 ** bits
    np.testing.assert_array_equal(affine_float32(q), expected)
    np.testing.assert_array_equal(quants.dequantize(raw, type_name, shape), expected)
    np.testing.assert_array_equal(q.dequantize(), expected)
    return q


@pytest.mark.parametrize("type_name", list(EXPECTED))
def test_random_blocks_match_reference_exactly(type_name):
    rng = np.random.default_rng(zlib.crc32(type_name.encode()))
    shape = (6, 1024)
    check_against_reference(random_blocks(rng, type_name, *shape), type_name, shape)


@pytest.mark.parametrize("type_name", QUANTIZABLE)
def test_reference_quantizer_output_matches(type_name):
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((8, 512)).astype(np.float32)
    if type_name.startswith("TQ"):  # ternary quantizers expect (scaled) ternary data
        weights = np.sign(np.round(weights)) * rng.uniform(0.01, 1, (8, 1)).astype(np.float32)
    raw = reference.quantize(weights, GGMLQuantizationType[type_name])
    q = check_against_reference(raw, type_name, weights.shape)
    if q.ternary:
        assert set(np.unique(q.codes)) <= {0, 1, 2}
        np.testing.assert_array_equal(q.bias, -q.scale)
    # scale/bias are plain fp16 values (times a power of two) for these formats
    assert quants.fp16_exact(q)


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_fp16_exactness(type_name):
    rng = np.random.default_rng(11)
    q = quants.decode_codes(random_blocks(rng, type_name, 4, 512), type_name, (4, 512))
    # d*sc carries up to 11+7 significant bits, more than fp16's 11
    assert not quants.fp16_exact(q)
    # with d = dmin = 1 every scale/bias is a small integer, which fp16 holds exactly
    raw = random_blocks(rng, type_name, 4, 512)
    blocks = raw.reshape(-1, GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1])
    for pos in FP16_FIELDS[type_name]:
        blocks[:, pos:pos + 2] = np.array([1], np.float16).view(np.uint8)
    assert quants.fp16_exact(quants.decode_codes(raw, type_name, (4, 512)))


def test_fp16_exact_detects_overflow_and_rounding():
    q = quants.decode_codes(random_blocks(np.random.default_rng(0), "Q4_0", 1, 64), "Q4_0", (1, 64))
    assert quants.fp16_exact(q)
    q.scale[0, 0] = np.float32(1.0 + 2 ** -12)
    assert not quants.fp16_exact(q)
    q.scale[0, 0] = 1.0
    q.bias[0, 1] = np.float32(1e6)
    assert not quants.fp16_exact(q)


def test_layouts_by_hand():
    # Q4_0: d = 0.5, byte j = (j+1)<<4 | j -> element j = j, element 16+j = j+1
    block = np.zeros(18, np.uint8)
    block[0:2] = np.array([0.5], np.float16).view(np.uint8)
    block[2:] = [(((j + 1) & 15) << 4) | j for j in range(16)]
    q = quants.decode_codes(block, "Q4_0", (1, 32))
    np.testing.assert_array_equal(q.codes[0], list(range(16)) + [(j + 1) & 15 for j in range(16)])
    assert (q.scale[0, 0], q.bias[0, 0]) == (0.5, -4.0)
    # Q8_0: int8 q -> code q + 128
    block = np.zeros(34, np.uint8)
    block[0:2] = np.array([2.0], np.float16).view(np.uint8)
    block[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    q = quants.decode_codes(block, "Q8_0", (1, 32))
    np.testing.assert_array_equal(q.codes[0], np.arange(112, 144))
    np.testing.assert_array_equal(q.dequantize()[0], 2.0 * np.arange(-16, 16))


def test_multi_dimensional_and_chunked(monkeypatch):
    rng = np.random.default_rng(2)
    monkeypatch.setattr(quants, "_BLOCKS_PER_CHUNK", 3)  # force several chunks
    raw = random_blocks(rng, "Q4_K", 2 * 3, 512)
    expected = reference.dequantize(raw, GGMLQuantizationType.Q4_K)
    q = quants.decode_codes(raw, "Q4_K", (2, 3, 512))
    assert q.codes.shape == (6, 512)
    np.testing.assert_array_equal(quants.dequantize(raw, "Q4_K", (2, 3, 512)),
                                  expected.reshape(2, 3, 512))


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types(type_name):
    rng = np.random.default_rng(4)
    values = rng.standard_normal((3, 16)).astype(np.float32)
    if type_name == "F32":
        raw = values.view(np.uint8)
    elif type_name == "F16":
        raw = values.astype(np.float16).view(np.uint8)
    else:
        raw = reference.quantize(values, GGMLQuantizationType.BF16)
    expected = reference.dequantize(raw, GGMLQuantizationType[type_name]).reshape(3, 16)
    decoded = quants.decode_float(raw, type_name, (3, 16))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(quants.dequantize(raw, type_name, (3, 16)), expected)
    if type_name == "F32":
        assert np.shares_memory(decoded, raw)


def test_decoding_a_gguf_tensor(tmp_path):
    from pylut.formats.gguf_reader import GGUFFile
    rng = np.random.default_rng(8)
    raw = random_blocks(rng, "Q6_K", 4, 512)
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tensor("w", raw, raw_dtype=GGMLQuantizationType.Q6_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(tmp_path / "m.gguf") as f:
        info = f.tensors["w"]
        assert info.shape == (4, 512)
        np.testing.assert_array_equal(quants.dequantize(info.data, info.type_name, info.shape),
                                      reference.dequantize(raw, GGMLQuantizationType.Q6_K))


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs 36 bytes"):
        quants.decode_codes(np.zeros(35, np.uint8), "Q4_0", (2, 32))
    with pytest.raises(ValueError, match="multiple of the block size"):
        quants.decode_codes(np.zeros(18, np.uint8), "Q4_0", (1, 16))
    with pytest.raises(ValueError, match="no integer-code decoder"):
        quants.decode_codes(np.zeros(18, np.uint8), "IQ4_NL", (1, 32))
    with pytest.raises(ValueError, match="decode_float"):
        quants.decode_float(np.zeros(18, np.uint8), "Q4_0", (1, 32))
    with pytest.raises(ValueError, match="no integer-code decoder"):
        quants.dequantize(np.zeros(4, np.uint8), "Q9_9", (1, 1))
