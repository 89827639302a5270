"""GGUFFile: round trips against files written by the reference ``gguf`` package, and
every validation path exercised by corrupting valid files."""
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, GGUFWriter  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402

from pylut.errors import ModelFileError  # noqa: E402
from pylut.formats.gguf_reader import GGML_TYPES, GGUFFile, tensor_nbytes  # noqa: E402

RAW_TYPES = ["BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
             "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "IQ4_NL"]


def write_gguf(path, tensors, kv=None, alignment=None):
    """tensors: list of (name, ndarray, raw type name or None)."""
    writer = GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, (kind, value) in (kv or {}).items():
        getattr(writer, f"add_{kind}")(key, value)
    for name, array, raw_type in tensors:
        raw_dtype = GGMLQuantizationType[raw_type] if raw_type else None
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_raw(rng, type_name, shape):
    """Random block bytes for a tensor of ``shape`` (numpy order) in ``type_name``."""
    block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    n_bytes = shape[-1] // block_elems * block_bytes
    return rng.integers(0, 256, size=(*shape[:-1], n_bytes), dtype=np.uint8)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A file with one tensor per type plus every metadata value type."""
    rng = np.random.default_rng(1234)
    tensors = [
        ("f32.weight", rng.standard_normal((3, 8)).astype(np.float32), None),
        ("f16.weight", rng.standard_normal((2, 4, 8)).astype(np.float16), None),
        ("i8.weight", rng.integers(-128, 127, (5,), dtype=np.int8), None),
        ("i32.weight", rng.integers(-1000, 1000, (2, 3), dtype=np.int32), None),
    ]
    for type_name in RAW_TYPES:
        tensors.append((f"{type_name.lower()}.weight", random_raw(rng, type_name, (2, 512)), type_name))
    kv = {
        "t.u8": ("uint8", 200), "t.i8": ("int8", -100), "t.u16": ("uint16", 60000),
        "t.i16": ("int16", -30000), "t.u32": ("uint32", 4_000_000_000),
        "t.i32": ("int32", -2_000_000_000), "t.f32": ("float32", 1.5),
        "t.u64": ("uint64", 2**63 + 5), "t.i64": ("int64", -2**62), "t.f64": ("float64", 0.1),
        "t.bool": ("bool", True), "t.str": ("string", "héllo wörld"),
        "t.ints": ("array", [1, 2, 3]), "t.floats": ("array", [0.5, 1.5]),
        "t.strs": ("array", ["a", "", "ünï"]), "t.nested": ("array", [[1, 2], [3]]),
        "t.bools": ("array", [True, False, True]),
    }
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "sample.gguf", tensors, kv)
    return path, tensors, kv


def test_type_table_matches_reference_package():
    for qtype in GGMLQuantizationType:
        assert GGML_TYPES[qtype.value] == (qtype.name, *GGML_QUANT_SIZES[qtype]), qtype
    assert set(GGML_TYPES) == {q.value for q in GGMLQuantizationType}


def test_metadata_round_trip(sample):
    path, _, kv = sample
    with GGUFFile(path) as f:
        assert f.version == 3
        assert f.architecture == "llama"
        assert f.get("general.architecture") == "llama"
        assert f.get("missing", 42) == 42
        for key, (kind, value) in kv.items():
            got = f.metadata[key]
            if kind == "array" and isinstance(value[0], list):
                assert [list(x) for x in got] == value
            elif kind == "array" and isinstance(value[0], str):
                assert got == value
            elif kind == "array":
                assert isinstance(got, np.ndarray)
                np.testing.assert_array_equal(got, value)
            elif kind in ("float32",):
                assert got == pytest.approx(value)
            else:
                assert got == value, key
        assert f.metadata["t.bools"].dtype == np.bool_


def test_tensor_round_trip_and_zero_copy(sample):
    path, tensors, _ = sample
    with GGUFFile(path) as f:
        assert list(f.tensors) == [name for name, _, _ in tensors]
        for name, array, raw_type in tensors:
            info = f.tensors[name]
            if raw_type is None:
                assert info.shape == array.shape
                expected_type = {np.float32: "F32", np.float16: "F16", np.int8: "I8",
                                 np.int32: "I32"}[array.dtype.type]
            else:
                expected_type = raw_type
                block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[raw_type]]
                assert info.shape == (*array.shape[:-1], array.shape[-1] // block_bytes * block_elems)
            assert info.type_name == expected_type
            assert info.ggml_type == GGMLQuantizationType[expected_type].value
            assert info.nbytes == array.nbytes == tensor_nbytes(expected_type, info.shape)
            assert info.offset % 32 == 0 and info.offset >= f.data_offset
            assert info.data.dtype == np.uint8 and not info.data.flags.owndata
            assert not info.data.flags.writeable
            np.testing.assert_array_equal(info.data, array.reshape(-1).view(np.uint8))
        with open(path, "rb") as handle:
            handle.seek(f.tensors["q4_k.weight"].offset)
            assert handle.read(16) == f.tensors["q4_k.weight"].data[:16].tobytes()


def test_matches_reference_reader(sample):
    path = sample[0]
    reference = gguf.GGUFReader(str(path))
    with GGUFFile(path) as f:
        for ref in reference.tensors:
            info = f.tensors[ref.name]
            assert info.offset == ref.data_offset
            assert info.shape == tuple(int(d) for d in reversed(ref.shape.tolist()))
            assert info.nbytes == ref.n_bytes


def test_custom_alignment_and_version_2(tmp_path):
    rng = np.random.default_rng(0)
    tensors = [("a", rng.standard_normal(3).astype(np.float32), None),
               ("b", random_raw(rng, "Q4_0", (4, 64)), "Q4_0")]
    path = write_gguf(tmp_path / "aligned.gguf", tensors, alignment=256)
    with GGUFFile(path) as f:
        assert f.alignment == 256
        assert f.data_offset % 256 == 0
        assert all(t.offset % 256 == 0 for t in f.tensors.values())
        np.testing.assert_array_equal(f.tensors["b"].data, tensors[1][1].reshape(-1))
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 2)
    v2 = tmp_path / "v2.gguf"
    v2.write_bytes(bytes(data))
    with GGUFFile(v2) as f:
        assert f.version == 2 and len(f.tensors) == 2


def test_close_with_live_views(sample):
    f = GGUFFile(sample[0])
    view = f.tensors["f32.weight"].data
    f.close()
    f.close()  # idempotent
    assert view.view(np.float32).shape == (24,)  # mapping stays valid while the view lives


# ---------------------------------------------------------------- corruption helpers
def small_file(tmp_path):
    rng = np.random.default_rng(7)
    tensors = [("tok_embd", rng.standard_normal((4, 32)).astype(np.float32), None),
               ("blk.0.q", random_raw(rng, "Q4_0", (2, 64)), "Q4_0"),
               ("blk.0.k", random_raw(rng, "Q4_K", (1, 256)), "Q4_K")]
    kv = {"meta.name": ("string", "tiny"), "meta.list": ("array", ["x", "yy", "zzz"]),
          "meta.nums": ("array", [1, 2, 3, 4])}
    return write_gguf(tmp_path / "small.gguf", tensors, kv)


def tensor_info_pos(data, name):
    """Byte offsets of (n_dims, dims[0], type, offset) fields of tensor ``name``."""
    needle = struct.pack("<Q", len(name)) + name.encode()
    pos = bytes(data).index(needle) + len(needle)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    return pos, pos + 4, type_pos, type_pos + 4


def corrupted(tmp_path, data, name="bad.gguf"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def expect_error(path, *fragments):
    with pytest.raises(ModelFileError) as info:
        GGUFFile(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncation_everywhere(tmp_path):
    path = small_file(tmp_path)
    data = path.read_bytes()
    with GGUFFile(path) as f:
        data_end = max(t.offset + t.nbytes for t in f.tensors.values())
        data_offset = f.data_offset
    cut_points = list(range(0, data_offset + 1)) + list(range(data_offset, data_end, 7))
    for cut in cut_points:
        target = corrupted(tmp_path, data[:cut])
        with pytest.raises(ModelFileError) as info:
            GGUFFile(target)
        message = str(info.value)
        assert str(target) in message
        if cut >= 4:
            assert "truncated" in message or "past the end" in message, (cut, message)
    # the padding after the last tensor is optional
    with GGUFFile(corrupted(tmp_path, data[:data_end])) as f:
        assert len(f.tensors) == 3


def test_empty_and_missing_files(tmp_path):
    expect_error(corrupted(tmp_path, b""), "empty")
    expect_error(tmp_path / "nope.gguf", "cannot open")
    expect_error(tmp_path, "cannot open")


def test_bad_magic_and_version(tmp_path):
    data = bytearray(small_file(tmp_path).read_bytes())
    expect_error(corrupted(tmp_path, b"GGML" + data[4:]), "bad magic", "not a GGUF file")
    expect_error(corrupted(tmp_path, b"\x00"), "bad magic")
    for version, fragment in ((1, "obsolete"), (4, "supported versions"),
                              (0x03000000, "big-endian")):
        data[4:8] = struct.pack("<I", version)
        expect_error(corrupted(tmp_path, data), f"unsupported GGUF version {version}", fragment)


def test_absurd_counts(tmp_path):
    data = bytearray(small_file(tmp_path).read_bytes())
    for field, value in ((8, 2**40), (8, 10**6 + 1), (16, 2**63), (16, 10**5)):
        bad = bytearray(data)
        bad[field:field + 8] = struct.pack("<Q", value)
        expect_error(corrupted(tmp_path, bad), "absurd")


def test_string_and_array_lengths_past_end(tmp_path):
    data = bytearray(small_file(tmp_path).read_bytes())
    key_pos = bytes(data).index(b"meta.name") - 8
    bad = bytearray(data)
    bad[key_pos:key_pos + 8] = struct.pack("<Q", 2**62)
    expect_error(corrupted(tmp_path, bad), "past the end")
    # value string of meta.name: right after key and the u32 value type
    value_pos = key_pos + 8 + len("meta.name") + 4
    bad = bytearray(data)
    bad[value_pos:value_pos + 8] = struct.pack("<Q", len(data))
    expect_error(corrupted(tmp_path, bad), "meta.name", "past the end")
    for key in ("meta.list", "meta.nums"):
        count_pos = bytes(data).index(key.encode()) + len(key) + 4 + 4
        bad = bytearray(data)
        bad[count_pos:count_pos + 8] = struct.pack("<Q", 2**61)
        expect_error(corrupted(tmp_path, bad), key, "past the end")


def test_bad_metadata_types_and_duplicate_keys(tmp_path):
    data = bytearray(small_file(tmp_path).read_bytes())
    type_pos = bytes(data).index(b"meta.name") + len("meta.name")
    bad = bytearray(data)
    bad[type_pos:type_pos + 4] = struct.pack("<I", 13)
    expect_error(corrupted(tmp_path, bad), "unknown value type 13")
    elem_pos = bytes(data).index(b"meta.nums") + len("meta.nums") + 4
    bad = bytearray(data)
    bad[elem_pos:elem_pos + 4] = struct.pack("<I", 99)
    expect_error(corrupted(tmp_path, bad), "unknown element type 99")
    bad = bytearray(data)
    pos = bytes(data).index(b"meta.list")
    bad[pos:pos + 9] = b"meta.nums"
    expect_error(corrupted(tmp_path, bad), "duplicate metadata key 'meta.nums'")
    bad = bytearray(data)
    bad[pos:pos + 2] = b"\xff\xfe"
    expect_error(corrupted(tmp_path, bad), "not valid UTF-8")


def test_invalid_alignment(tmp_path):
    path = write_gguf(tmp_path / "al.gguf", [("a", np.zeros(8, np.float32), None)], alignment=64)
    data = bytearray(path.read_bytes())
    value_pos = bytes(data).index(b"general.alignment") + len("general.alignment") + 4
    for value in (0, 48):
        data[value_pos:value_pos + 4] = struct.pack("<I", value)
        expect_error(corrupted(tmp_path, data), "general.alignment", "power of two")


def test_tensor_info_errors(tmp_path):
    data = bytearray(small_file(tmp_path).read_bytes())
    n_dims_pos, dim0_pos, type_pos, offset_pos = tensor_info_pos(data, "blk.0.q")

    bad = bytearray(data)
    bad[type_pos:type_pos + 4] = struct.pack("<I", 4)  # Q4_2, removed from ggml
    expect_error(corrupted(tmp_path, bad), "'blk.0.q'", "unknown ggml type id 4")
    bad[type_pos:type_pos + 4] = struct.pack("<I", 1000)
    expect_error(corrupted(tmp_path, bad), "'blk.0.q'", "unknown ggml type id 1000")

    bad = bytearray(data)
    bad[dim0_pos:dim0_pos + 8] = struct.pack("<Q", 48)  # not a multiple of Q4_0's 32
    expect_error(corrupted(tmp_path, bad), "'blk.0.q'", "not a multiple of the block size 32")

    bad = bytearray(data)
    bad[dim0_pos:dim0_pos + 8] = struct.pack("<Q", 2**40)  # far more data than the file holds
    expect_error(corrupted(tmp_path, bad), "'blk.0.q'", "runs past the end")

    bad = bytearray(data)
    bad[n_dims_pos:n_dims_pos + 4] = struct.pack("<I", 7)
    expect_error(corrupted(tmp_path, bad), "7 dimensions")

    for value, fragment in ((2**50, "runs past the end"), (2**64 - 32, "runs past the end"),
                            (33, "not a multiple of the alignment"), (0, "overlap")):
        bad = bytearray(data)
        bad[offset_pos:offset_pos + 8] = struct.pack("<Q", value)
        expect_error(corrupted(tmp_path, bad), fragment)


def test_duplicate_tensor_names(tmp_path):
    rng = np.random.default_rng(3)
    path = write_gguf(tmp_path / "dup.gguf", [("w.aa", rng.standard_normal(8).astype(np.float32), None),
                                              ("w.ab", rng.standard_normal(8).astype(np.float32), None)])
    data = path.read_bytes().replace(b"w.ab", b"w.aa")
    expect_error(corrupted(tmp_path, data), "duplicate tensor name 'w.aa'")


def test_random_corruption_never_escapes(tmp_path):
    """Flipped bytes anywhere in the header either still parse or raise ModelFileError."""
    path = small_file(tmp_path)
    data = path.read_bytes()
    with GGUFFile(path) as f:
        header_end = f.data_offset
    rng = np.random.default_rng(99)
    for trial in range(300):
        bad = bytearray(data)
        for pos in rng.integers(0, header_end, size=rng.integers(1, 4)):
            bad[pos] = rng.integers(0, 256)
        target = corrupted(tmp_path, bad, f"fuzz{trial % 4}.gguf")
        try:
            GGUFFile(target).close()
        except ModelFileError as exc:
            assert str(target) in str(exc)
