"""tools/bench_model_2b4t.py: its Q6_K quantizer against gguf's dequantizer, its I2_S packing
against the layout bitnet.cpp publishes, and a tiny file written the 2B4T way read back."""
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_model_2b4t as bm  # noqa: E402


def test_q6_k_matches_gguf_dequantizer():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 512)) * rng.uniform(0.01, 10, (32, 1))).astype(np.float32)
    x[3] = 0.0            # an all-zero row: scales 0, no division by zero
    x[5, :16] = 0.0       # one all-zero sub-block
    q = bm.quantize_q6_k(x)
    assert q.shape == (32, 2 * 210) and q.dtype == np.uint8
    y = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q6_K)
    assert np.all(y[3] == 0.0) and np.all(y[5, :16] == 0.0)
    # 6-bit codes on a per-16 scale: within a step (peak / 32, plus the int8 scale's rounding)
    xb, yb = x.reshape(-1, 16), y.reshape(-1, 16)
    peak = np.abs(xb).max(axis=1)
    assert np.all(np.abs(xb - yb).max(axis=1) <= peak / 32 * 1.25 + 1e-7)


def test_i2_s_layout():
    rng = np.random.default_rng(1)
    codes = rng.integers(-1, 2, size=(4, 256)).astype(np.int8)
    data = bm.pack_i2_s(codes, 0.75)
    n = codes.size
    assert data.size == n // 4 + 32
    assert data[n // 4:n // 4 + 4].view(np.float32)[0] == np.float32(0.75)
    flat = codes.reshape(-1)
    for blk, j in ((0, 0), (0, 31), (3, 7), (7, 31)):
        b = int(data[blk * 32 + j])
        base = blk * 128 + j
        assert [(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3] == \
            [int(flat[base + k * 32]) + 1 for k in range(4)]
    back, scale = bm.unpack_i2_s(data, n)
    assert np.array_equal(back, flat) and scale == 0.75
    with pytest.raises(ValueError, match="multiple of 128"):
        bm.pack_i2_s(np.zeros((3, 100), np.int8), 1.0)


# ----------------------------------------------------------------------------
# a minimal GGUF reader: gguf's GGUFReader refuses type 36 (I2_S is not in its enum)

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path):
    """-> (metadata {key: value}, tensors {name: (ggml shape, type id, bytes)})."""
    import struct
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return buf[pos - n:pos].decode("utf-8")

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(_SCALAR[t])
    assert buf[:4] == b"GGUF"
    pos = 8
    n_tensors, n_kv = take("Q"), take("Q")
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    ends = sorted(off for *_, off in infos) + [len(buf) - start]
    tensors = {}
    for name, dims, t, off in infos:
        end = ends[ends.index(off) + 1]
        tensors[name] = (dims, t, np.frombuffer(buf, np.uint8, end - off, start + off))
    return meta, tensors


@pytest.mark.parametrize("kind", ["I2_S", "TQ2_0"])
def test_tiny_file_reads_back(tmp_path, kind):
    shape = dict(layers=2, dim=256, ffn=512, heads=4, kv_heads=2, ctx=64)
    vocab = {"tokens": [f"t{i}" for i in range(300)], "token_type": [1] * 300, "merges": ["t 1"]}
    weights = bm.ternary_weights(shape, seed=3)
    embd = np.random.default_rng(4).standard_normal((300, 256), dtype=np.float32)
    path = tmp_path / f"m-{kind}.gguf"
    bm.write_model(str(path), kind, shape, weights, vocab, embd, bm.quantize_q6_k(embd))
    meta, t = read_gguf(path)
    assert meta["general.architecture"] == ("bitnet-b1.58" if kind == "I2_S" else "bitnet")
    assert ("tokenizer.ggml.pre" in meta) == (kind != "I2_S")  # the published file has none
    assert len(t) == 2 + 11 * shape["layers"] and "output.weight" not in t   # tied LM head
    assert t["token_embd.weight"][1] == gguf.GGMLQuantizationType.Q6_K
    codes, scale = weights["blk.1.ffn_down.weight"]
    dims, typ, data = t["blk.1.ffn_down.weight"]
    assert dims == [512, 256]      # ggml order: cols, rows
    if kind == "I2_S":
        assert typ == bm.GGML_TYPE_I2_S and data.size >= codes.size // 4 + 32
        got, got_scale = bm.unpack_i2_s(data, codes.size)
        assert np.array_equal(got, codes.reshape(-1)) and got_scale == np.float32(scale)
    else:
        nbytes = codes.size // 256 * gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(typ)][1]
        w = gguf.quants.dequantize(data[:nbytes].reshape(256, -1), gguf.GGMLQuantizationType(typ))
        assert np.array_equal(w, codes.astype(np.float32) * np.float32(np.float16(scale)))
