"""The streamed packed-model cache (format 5, header last): the first load writes the cache
one tensor at a time and maps it, and must equal the in-memory load bit for bit; a cache
file that is truncated, corrupt, of another version or left by an interrupted write is
never trusted (refused by packcache.load, rebuilt by pylut.load); a failing disk falls back
to loading without the cache. Models are tiny and built here (tests/model_builder.py)."""
import errno
import mmap
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.app import cli
from pylut.formats import gguf_reader, packcache
from pylut.tokenizer import loaders as tokenizer_loaders
from pylut.formats import gguf_model as loader_mod
from pylut.formats.hf_loader import load_hf
from pylut.formats.gguf_model import load_gguf

from model_builder import build_gguf
from test_hf_loader import build_hf

TOKENS = [3, 7, 11, 20, 5, 9, 2, 30, 41, 8]


def _model(tmp_path, tensor_type="Q4_0", arch="llama", **kw):
    path = tmp_path / f"m-{arch}-{tensor_type}.gguf"
    wide = tensor_type.endswith("_K") or tensor_type.startswith("TQ")  # 256-weight blocks
    build_gguf(path, arch, tensor_type, vocab=300, n_layers=2, dim=256 if wide else 64,
               ffn=256 if wide else 128, context_length=64, **kw)
    return path


def _logits(model):
    return model.eval(TOKENS)


def _mapped(arr) -> bool:
    """arr is a view of a file mapping (not a copy in memory)."""
    while arr is not None and not isinstance(arr, mmap.mmap):
        arr = getattr(arr, "base", None) if not isinstance(arr, memoryview) else arr.obj
    return arr is not None


def _header(path):
    with open(path, "rb") as fh:
        return packcache._read_header(fh, str(path), os.path.getsize(path))


def _the_cache_file(cache):
    files = [p for p in cache.iterdir() if p.suffix != ".verified"]
    assert len(files) == 1 and files[0].suffix == ".pylut", files  # no temp file left beside it
    return files[0]


# ---------------------------------------------------------------- the streamed file

@pytest.mark.parametrize("arch,tensor_type,tied", [
    ("llama", "Q4_0", False), ("llama", "Q2_K", True), ("llama", "Q6_K", False),
    ("bitnet", "TQ2_0", True), ("llama", "F16", True),
    ("bitnet-b1.58", "I2_S", True)])   # a bitnet head is always tied
def test_streamed_cache_equals_the_in_memory_load(tmp_path, cache, arch, tensor_type, tied):
    src = _model(tmp_path, tensor_type, arch, tied=tied)
    reference = pylut.load(src, n_ctx=64, cache=False)
    first = pylut.load(src, n_ctx=64)                  # builds the cache by streaming
    f = _the_cache_file(cache)
    warm = pylut.load(src, n_ctx=64)                   # maps it
    want = _logits(reference)
    assert np.array_equal(_logits(first), want)
    assert np.array_equal(_logits(warm), want)
    # the first load serves the mapped file, exactly as a warm load does
    for m in (first, warm):
        embd = m.loaded.tensors["token_embd"]
        assert isinstance(embd, _core.QMatrix) and _mapped(embd.codes_buf)
        assert (m.loaded.tensors["output"] is embd) == tied
        for key in ("n_params", "bits_per_weight", "tensor_types", "lossy", "tied_output", "config"):
            assert getattr(m.loaded, key) == getattr(reference.loaded, key), key
        assert m.loaded.path == os.path.abspath(src)
        for name, t in reference.loaded.tensors.items():  # I2_S: float32 post-scales kept
            if isinstance(t, _core.QMatrix):
                assert m.loaded.tensors[name].post == t.post, name
        q = m.loaded.tensors["blk.0.attn_q"]  # Q2_K: nibble sub-values, mapped as uint8
        assert q.sub_nibbles == (tensor_type == "Q2_K") == (q.sub_scale_buf is not None
                                                             and q.sub_scale_buf.dtype == np.uint8)
    # the tied output is stored once, as an alias
    h, _, _ = _header(f)
    assert (h["tensors"]["output"]["kind"] == "alias") == tied
    assert h["tensors"]["blk.0.attn_q"]["sub_nibbles"] == (tensor_type == "Q2_K")


def test_i2s_post_scales_survive_the_cache(tmp_path, cache, monkeypatch):
    """I2_S scales that fp16 cannot hold become float32 post-scales (QMatrix.post): the
    cache stores them, and the mapped model computes what the in-memory load does."""
    import model_builder

    def ternary(rng, rows, cols, std):  # model_builder._ternary with a scale fp16 would round
        scale = np.float32(std * 1.2247 * (1 + 2 ** -12))
        return (scale * rng.integers(-1, 2, size=(rows, cols))).astype(np.float32)
    monkeypatch.setattr(model_builder, "_ternary", ternary)
    src = _model(tmp_path, "I2_S", "bitnet-b1.58", tied=True)
    reference = pylut.load(src, n_ctx=64, cache=False)
    posts = {n: t.post for n, t in reference.loaded.tensors.items() if isinstance(t, _core.QMatrix)}
    assert sum(p != 1.0 for p in posts.values()) >= 7 and not reference.loaded.lossy
    want = _logits(reference)
    pylut.load(src, n_ctx=64)
    warm = pylut.load(src, n_ctx=64)
    assert {n: warm.loaded.tensors[n].post for n in posts} == posts
    assert np.array_equal(_logits(warm), want)


def test_ternary_layout_is_part_of_the_key_only_where_it_can_matter(tmp_path, cache, monkeypatch):
    """ternary='auto' takes this ISA's layout (pylut.kernels.ternary_layout); a file that can
    hold ternary weights gets one cache file per layout, with the same logits; any other
    file keeps one cache file whatever is asked. A bad value is refused."""
    from pylut.kernels import ternary_layout
    src = _model(tmp_path, "TQ2_0", "bitnet")
    auto = pylut.load(src, n_ctx=64)
    want_type = _core.TYPE_T3 if ternary_layout(tq=True) == "t3" else 2
    assert auto.loaded.tensors["blk.0.attn_q"].type == want_type
    other = "b2" if ternary_layout(tq=True) == "t3" else "t3"
    forced = pylut.load(src, n_ctx=64, ternary=other)
    assert forced.loaded.tensors["blk.0.attn_q"].type != want_type
    assert len(list(cache.glob("*.pylut"))) == 2
    np.testing.assert_allclose(_logits(forced), _logits(auto), atol=0.05 * np.abs(_logits(auto)).max())
    (tmp_path / "plain").mkdir()
    plain = _model(tmp_path / "plain", "Q4_0")
    for layout in ("t3", "b2", "auto"):
        pylut.load(plain, n_ctx=64, ternary=layout)
    assert len(list(cache.glob("*.pylut"))) == 3
    # a warm load finds its own layout's pack, the GGUF opened once (its header read once,
    # for the tokenizer and the ternary check alike)
    opens = []
    real_init = gguf_reader.GGUFFile.__init__
    monkeypatch.setattr(gguf_reader.GGUFFile, "__init__", lambda f, p: opens.append(os.fspath(p)) or real_init(f, p))
    monkeypatch.setattr(tokenizer_loaders, "read_gguf_metadata", lambda p: pytest.fail(f"{p} read again"))
    pylut.load(plain, n_ctx=64)
    again = pylut.load(src, n_ctx=64, ternary=other)
    assert opens == [os.fspath(plain), os.fspath(src)]
    assert again.loaded.tensors["blk.0.attn_q"].type == forced.loaded.tensors["blk.0.attn_q"].type
    assert len(list(cache.glob("*.pylut"))) == 3
    with pytest.raises(ValueError, match="ternary must be"):
        pylut.load(src, n_ctx=64, ternary="planes")


def test_layout_header_last_and_aligned(tmp_path, cache):
    src = _model(tmp_path)
    pylut.load(src, n_ctx=64)
    f = _the_cache_file(cache)
    data = f.read_bytes()
    magic, version, _, hoff, hlen, crc, _ = packcache._PREFIX.unpack_from(data)
    assert magic == packcache.MAGIC and version == packcache.FORMAT_VERSION == 10
    assert hoff % packcache.ALIGN == 0 and hoff + hlen == len(data) and zlib.crc32(data[hoff:]) == crc
    spans = []
    for e in _header(f)[0]["tensors"].values():
        for key in ("codes", "scale", "bias", "sub_scale", "sub_bias", "data"):
            if e.get(key) is not None:
                spans.append(e[key])
    assert spans and all(off % packcache.ALIGN == 0 and off >= packcache.DATA_START and off + n <= hoff
                         for off, n, _ in spans)
    spans.sort()
    assert all(a[0] + a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap



def test_writes_go_out_in_whole_2mib_aligned_pieces(tmp_path, monkeypatch):
    """The page cache holds a file written this way in 2 MiB folios, which a mapping gets as
    huge pages; the bytes must land exactly where the header says all the same."""
    writes = []
    real = packcache.PackWriter._write_all

    def record(self, buf):
        writes.append((self._f.tell(), len(buf)))
        real(self, buf)
    monkeypatch.setattr(packcache.PackWriter, "_write_all", record)
    rng = np.random.default_rng(1)
    arrays = {f"a{i}": rng.standard_normal(n).astype(np.float32)
              for i, n in enumerate([25, 700_000, 1_300_000, 5, 524_288, 3_000_001])}
    path = tmp_path / "x.pylut"
    w = packcache.PackWriter(str(path))
    for name, a in arrays.items():
        w.put(name, a)
    config = dict(arch="llama", n_layers=1, dim=64, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128,
                  vocab=300, max_ctx=128, norm_eps=1e-5, rope_theta=10000.0, rope_neox=False,
                  ffn_act="silu")
    w.finish(loader_mod.LoadedModel(config=config, tensors=arrays, metadata={}, path=str(path), arch="llama",
                                    tensor_types={}, n_params=0, bits_per_weight=32.0, lossy=set(),
                                    tied_output=False))
    huge = 2 << 20
    assert writes[0] == (0, packcache.DATA_START)  # the incomplete-file prefix, at once
    assert writes[-1] == (0, packcache._PREFIX.size)  # finish(): the prefix, now complete
    body = writes[1:-1]
    assert len(body) >= 3 and all(off % huge == 0 and n % huge == 0 for off, n in body[:-1])
    assert body[-1][0] % huge == 0  # the tail starts aligned too
    h = packcache.load(str(path), check_model=False)  # arrays, not a model
    for name, a in arrays.items():
        assert np.array_equal(h.tensors[name], a)
def test_convert_streams_the_same_file(tmp_path, cache):
    src = _model(tmp_path, "Q4_K")
    out = tmp_path / "m.pylut"
    assert cli.main(["convert", str(src), str(out)]) == 0
    pylut.load(src, n_ctx=64)
    assert out.read_bytes() == _the_cache_file(cache).read_bytes()
    # and a packcache.convert output equals an in-memory model saved with packcache.save
    saved, streamed = tmp_path / "saved.pylut", tmp_path / "streamed.pylut"
    packcache.save(load_gguf(str(src)), str(saved))
    packcache.convert(str(src), str(streamed), lambda sink: load_gguf(str(src), sink=sink))
    assert saved.read_bytes() == streamed.read_bytes()


@pytest.mark.parametrize("tensor_type,arch", [("Q4_K", "llama"), ("TQ2_0", "bitnet")])
def test_load_opens_a_converted_pack(tmp_path, cache, tensor_type, arch):
    """pylut.load takes a `pylut convert` pack as it takes the GGUF: the same logits, the
    tokenizer read from the source GGUF, the weights mapped from the pack, named after it."""
    src = _model(tmp_path, tensor_type, arch)
    out = tmp_path / "m.pylut"
    assert cli.main(["convert", str(src), str(out)]) == 0
    direct = pylut.load(src, n_ctx=64, cache=False)
    packed = pylut.load(out, n_ctx=64)
    assert np.array_equal(_logits(packed), _logits(direct))
    assert packed.generate(TOKENS, max_tokens=4, temperature=0) == direct.generate(TOKENS, max_tokens=4, temperature=0)
    assert _mapped(packed.loaded.tensors["token_embd"].codes_buf)
    assert packed.name == "m.pylut" and packed.loaded.path == os.path.abspath(src)
    assert not cache.exists() or not list(cache.iterdir())  # a pack is its own cache
    os.unlink(src)
    with pytest.raises(pylut.errors.ModelFileError, match="source GGUF .* is gone"):
        pylut.load(out, n_ctx=64)


def test_load_names_a_file_it_cannot_open(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PYLU" + bytes(60))
    with pytest.raises(pylut.errors.ModelFileError, match="unknown model file kind"):
        pylut.load(junk)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        pylut.load(tmp_path / "nothing.gguf")
    with pytest.raises(pylut.errors.ModelFileError, match="folder without config.json"):
        pylut.load(tmp_path)


def test_hf_folder_streams_into_the_cache(tmp_path, cache):
    folder = build_hf(tmp_path / "hf", tied=True)
    want = _logits(pylut.load(folder, n_ctx=64, cache=False))
    assert np.array_equal(_logits(pylut.load(folder, n_ctx=64)), want)
    _the_cache_file(cache)
    assert np.array_equal(_logits(pylut.load(folder, n_ctx=64)), want)


# ---------------------------------------------------------------- files never trusted

def _cut(data, where):
    return data[:where]


def _damaged_files(good: bytes):
    """name -> (bytes, expected error text) for every way a cache file may be damaged."""
    hoff, hlen = packcache._PREFIX.unpack_from(good)[3:5]
    flip_header = bytearray(good)
    flip_header[hoff + hlen // 2] ^= 0x20
    incomplete = bytearray(good)
    struct.pack_into("<Q", incomplete, 16, 0)
    return {
        "empty": (b"", "truncated header"),
        "cut in the prefix": (_cut(good, 20), "truncated header"),
        "cut in the data": (_cut(good, hoff // 2), "does not end the"),
        "cut in the header": (_cut(good, hoff + hlen - 5), "does not end the"),
        "appended to": (good + b"\0" * 64, "does not end the"),
        "header byte flipped": (bytes(flip_header), "checksum mismatch"),
        "interrupted write": (bytes(incomplete), "incomplete packed-model file"),
        "bad magic": (b"NOTPYLUT" + good[8:], "bad magic"),
        "old version": (good[:8] + struct.pack("<I", 9) + good[12:],  # 9: I2_S scales as fp16
                        "packed format version 9, this pylut reads 10"),
    }


def test_damaged_cache_files_are_refused_and_rebuilt(tmp_path, cache, caplog):
    src = _model(tmp_path, "Q4_1")
    want = _logits(pylut.load(src, n_ctx=64, cache=False))
    pylut.load(src, n_ctx=64)
    f = _the_cache_file(cache)
    good = f.read_bytes()
    for name, (data, message) in _damaged_files(good).items():
        f.write_bytes(data)
        with pytest.raises(packcache.PackFileError, match=message):
            packcache.load(str(f))
        caplog.clear()
        m = pylut.load(src, n_ctx=64)
        assert "unreadable packed-model cache" in caplog.text, name
        assert np.array_equal(_logits(m), want), name
        assert _the_cache_file(cache).read_bytes() == good, name   # rebuilt in place


def test_a_buffer_outside_the_data_is_refused(tmp_path, cache):
    src = _model(tmp_path)
    pylut.load(src, n_ctx=64)
    f = _the_cache_file(cache)
    data = bytearray(f.read_bytes())
    hoff, hlen = packcache._PREFIX.unpack_from(data)[3:5]
    header = bytes(data[hoff:])
    off = header.rindex(b'"codes": [') + len(b'"codes": [')  # the last: as many digits as hoff
    end = header.index(b",", off)
    assert end - off >= len(str(hoff))
    moved = header[:off] + str(hoff).encode().rjust(end - off) + header[end:]  # same length
    data[hoff:] = moved
    struct.pack_into("<I", data, 32, zlib.crc32(moved))
    f.write_bytes(bytes(data))
    with pytest.raises(packcache.PackFileError, match="outside the file's data"):
        packcache.load(str(f))


# ---------------------------------------------------------------- interrupted and failed writes

def test_an_interrupted_build_leaves_nothing_behind(tmp_path, cache):
    src = _model(tmp_path)

    def build(sink):
        def put(name, t):
            if name == "blk.1.attn_q":
                raise KeyboardInterrupt  # the user gives up halfway through the first load
            real_put(name, t)
        real_put = sink.put
        sink.put = put
        return load_gguf(str(src), sink=sink)

    with pytest.raises(KeyboardInterrupt):
        packcache.load_or_build(str(src), build, bits=4, requant=None)
    assert not cache.exists() or not list(cache.iterdir())
    assert np.array_equal(_logits(pylut.load(src, n_ctx=64)), _logits(pylut.load(src, n_ctx=64, cache=False)))


def test_a_killed_writer_leaves_a_temp_file_that_is_never_read(tmp_path, cache):
    src = _model(tmp_path)
    target = packcache.cache_path(str(src), bits=4, requant=None)
    code = ("import os, sys; from pylut.formats import packcache; from pylut.formats.gguf_model import load_gguf\n"
            "w = packcache.PackWriter(sys.argv[2])\n"
            "load_gguf(sys.argv[1], sink=w)\n"
            "os._exit(9)  # killed before finish()\n")
    r = subprocess.run([sys.executable, "-c", code, str(src), target], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1], timeout=120, check=False)
    assert r.returncode == 9, r.stderr
    (tmp,) = list(cache.iterdir())
    assert tmp.name.startswith(os.path.basename(target) + ".") and tmp.suffix == ".tmp"
    with pytest.raises(packcache.PackFileError, match="incomplete packed-model file"):
        packcache.load(str(tmp))
    os.utime(tmp, (1, 1))  # old enough to be a dead writer's, not a slow one's
    m = pylut.load(src, n_ctx=64)        # builds: the temp file is not the cache
    assert np.array_equal(_logits(m), _logits(pylut.load(src, n_ctx=64, cache=False)))
    assert _the_cache_file(cache) == Path(target)  # and the dead writer's temp file is gone


def test_a_failing_disk_falls_back_to_loading_without_the_cache(tmp_path, cache, caplog, monkeypatch):
    src = _model(tmp_path, "Q5_0")
    want = _logits(pylut.load(src, n_ctx=64, cache=False))
    real_write = packcache.PackWriter._write

    def write(self, buf):
        if self.pos > 20000:
            raise packcache.CacheWriteError(errno.ENOSPC, "No space left on device")
        real_write(self, buf)
    monkeypatch.setattr(packcache.PackWriter, "_write", write)
    m = pylut.load(src, n_ctx=64)
    assert "could not write the packed-model cache" in caplog.text
    assert np.array_equal(_logits(m), want)
    assert not list(cache.iterdir())
    # a real ENOSPC from the file system under the writer is a CacheWriteError too
    monkeypatch.setattr(packcache.PackWriter, "_write", real_write)
    if os.path.exists("/dev/full"):
        w = packcache.PackWriter(str(tmp_path / "x.pylut"))
        w._f.close()
        w._f = open("/dev/full", "wb", buffering=0)
        with pytest.raises(packcache.CacheWriteError, match="cannot write"):
            w.put("v", np.ones(1 << 20, np.float32))  # > 2 MiB: the writer's staging must flush
        w.abort()
        assert not list(tmp_path.glob("x.pylut*"))
    # and convert reports it as a clear command-line error
    monkeypatch.setattr(packcache.PackWriter, "_write", write)
    assert cli.main(["convert", str(src), str(tmp_path / "c.pylut")]) == 1
    assert not list(tmp_path.glob("c.pylut*"))


# ---------------------------------------------------------------- conversion by row pieces

def _buffers(lm):
    def raw(t):
        if not isinstance(t, _core.QMatrix):
            return np.asarray(t).tobytes()
        return [None if getattr(t, b) is None else getattr(t, b).tobytes() for b in loader_mod._BUFFERS]
    return {name: raw(t) for name, t in lm.tensors.items()}


@pytest.mark.parametrize("arch,tensor_type,requant", [
    ("llama", "Q4_0", None), ("llama", "Q2_K", None), ("llama", "Q3_K", None), ("llama", "Q6_K", None),
    ("bitnet", "TQ1_0", None), ("bitnet", "F16", None), ("llama", "F32", None), ("llama", "Q8_0", "q3"),
    ("llama", "Q4_K", "ternary")])
def test_row_pieces_pack_exactly_like_the_whole_matrix(tmp_path, monkeypatch, arch, tensor_type, requant):
    """Pieces of one 64-row tile (vocab 300: a short last piece) give the same bytes."""
    src = _model(tmp_path, tensor_type, arch)
    whole = load_gguf(str(src), requant=requant)
    monkeypatch.setattr(loader_mod, "PIECE_WEIGHTS", 1)
    pieces = load_gguf(str(src), requant=requant)
    assert _buffers(pieces) == _buffers(whole)
    assert pieces.lossy == whole.lossy and pieces.bits_per_weight == whole.bits_per_weight


def test_pieces_of_different_forms_fall_back_to_the_whole_matrix(tmp_path, monkeypatch):
    """A piece whose K-quant scales leave the two-level form exact and one whose don't."""
    src = _model(tmp_path, "Q6_K")
    calls = []
    real = loader_mod._k_super

    def k_super(info, q):
        calls.append(info.shape)
        return None if len(calls) == 2 else real(info, q)  # the second piece only
    monkeypatch.setattr(loader_mod, "_k_super", k_super)
    monkeypatch.setattr(loader_mod, "PIECE_WEIGHTS", 1)
    lm = load_gguf(str(src))
    assert calls[:3] == [(64, 256), (64, 256), (300, 256)]  # piece, piece, then the whole
    assert lm.tensors["token_embd"].super_block == 256


def test_hf_float_matrices_by_row_pieces(tmp_path, monkeypatch):
    folder = build_hf(tmp_path / "hf", vocab=300, dtype="F16")
    whole = load_hf(folder)
    monkeypatch.setattr(loader_mod, "PIECE_WEIGHTS", 1)
    assert _buffers(load_hf(folder)) == _buffers(whole)


# ---------------------------------------------------------------- peak memory of a first load

_HWM_SCRIPT = """
import sys
def hwm():
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM'))
import pylut
base = hwm()
pylut.load(sys.argv[1], n_ctx=32, n_threads=1, cache=sys.argv[2] == '1')
print(hwm() - base)
"""


@pytest.mark.memory_peak
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's VmHWM")
def test_first_load_peak_memory_stays_near_a_warm_load(tmp_path):
    """The high-water mark a load adds, in fresh processes, for a ~23 MB model: the first
    (streaming) load may exceed a warm one by the largest tensor's worth, not by the model
    (before streaming: by 2x the source size); without the cache, the packed model (about
    the source size) is in memory but the source no longer is. Margins are a third or more
    of the source size, so allocator noise does not decide the result."""
    src = tmp_path / "m.gguf"
    build_gguf(src, "llama", "Q4_0", vocab=8000, n_layers=8, dim=512, ffn=2048, n_heads=8, n_kv_heads=8,
               context_length=64)
    size = src.stat().st_size
    root = str(Path(__file__).resolve().parents[1])  # this checkout's pylut, as in the tests
    env = dict(os.environ, PYLUT_CACHE_DIR=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))

    def rise(cache):
        r = subprocess.run([sys.executable, "-c", _HWM_SCRIPT, str(src), cache], capture_output=True, text=True,
                           env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])
    first, warm, no_cache = rise("1"), rise("1"), rise("0")
    assert first - warm < size / 2, (first, warm, size)
    assert no_cache < 1.5 * size, (no_cache, size)
