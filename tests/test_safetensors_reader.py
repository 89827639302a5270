"""safetensors reader: round trips of hand-written files, sharded checkpoints, and
every validation path."""
import json
import struct

import numpy as np
import pytest

from pylut.errors import ModelFileError
from pylut.formats.safetensors_reader import SafetensorsFile, SafetensorsModel, open_safetensors

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I8": np.int8,
                "U8": np.uint8, "I64": np.int64, "F64": np.float64}


def encode(tensors, metadata=None, header_patch=None, pad_header=True):
    """tensors: name -> (dtype string, ndarray).  Returns the file bytes.

    BF16 tensors are given as float32 arrays and stored truncated to their top 16 bits.
    ``header_patch(header_dict)`` may tamper with the header before it is serialised.
    """
    header, blobs, offset = {}, [], 0
    for name, (dtype, array) in tensors.items():
        if dtype == "BF16":
            blob = (np.ascontiguousarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_patch is not None:
        header_patch(header)
    text = json.dumps(header).encode()
    if pad_header:  # the reference writer pads the header to 8 bytes with spaces
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def sample_tensors(rng):
    tensors = {}
    for name, dtype in NUMPY_DTYPES.items():
        if np.issubdtype(dtype, np.floating):
            tensors[name] = (name, rng.standard_normal((3, 5)).astype(dtype))
        else:
            tensors[name] = (name, rng.integers(-100, 100, (4, 2)).astype(dtype))
    tensors["BF16"] = ("BF16", rng.standard_normal((2, 8)).astype(np.float32))
    tensors["scalar"] = ("F32", np.array(3.5, np.float32))
    tensors["empty"] = ("F32", np.zeros((0, 4), np.float32))
    return tensors


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = sample_tensors(rng)
    path = write(tmp_path, "model.safetensors", encode(tensors, metadata={"format": "pt"}))
    with SafetensorsFile(path) as f:
        assert f.metadata == {"format": "pt"}
        assert set(f.tensors) == set(tensors)
        for name, (dtype, array) in tensors.items():
            info = f.tensors[name]
            assert info.dtype == dtype and info.shape == array.shape
            assert info.data.dtype == np.uint8 and not info.data.flags.owndata
            assert not info.data.flags.writeable
            if dtype == "BF16":
                truncated = (array.view(np.uint32) & 0xFFFF0000).view(np.float32)
                np.testing.assert_array_equal(info.to_float32(), truncated)
                assert info.array().dtype == np.uint16
            else:
                np.testing.assert_array_equal(info.array(), array)
                assert info.array().dtype == array.dtype
            if dtype in ("F32", "F16"):
                np.testing.assert_array_equal(info.to_float32(), array.astype(np.float32))
        with open(path, "rb") as handle:
            handle.seek(f.tensors["F32"].offset)
            assert handle.read(4) == tensors["F32"][1].tobytes()[:4]


def test_directory_and_single_file_model(tmp_path):
    rng = np.random.default_rng(1)
    tensors = sample_tensors(rng)
    write(tmp_path, "model.safetensors", encode(tensors))
    for target in (tmp_path, tmp_path / "model.safetensors"):
        with open_safetensors(target) as model:
            assert len(model) == len(tensors) and "F32" in model
            np.testing.assert_array_equal(model["I8"].array(), tensors["I8"][1])


def write_sharded(tmp_path, weight_map_patch=None):
    rng = np.random.default_rng(2)
    shard_a = {"a.weight": ("F32", rng.standard_normal((2, 3)).astype(np.float32)),
               "b.weight": ("F16", rng.standard_normal(4).astype(np.float16))}
    shard_b = {"c.weight": ("BF16", rng.standard_normal((2, 2)).astype(np.float32))}
    write(tmp_path, "model-00001-of-00002.safetensors", encode(shard_a))
    write(tmp_path, "model-00002-of-00002.safetensors", encode(shard_b))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors",
                  "b.weight": "model-00001-of-00002.safetensors",
                  "c.weight": "model-00002-of-00002.safetensors"}
    if weight_map_patch:
        weight_map_patch(weight_map)
    index = {"metadata": {"total_size": 1234}, "weight_map": weight_map}
    write(tmp_path, "model.safetensors.index.json", json.dumps(index).encode())
    return shard_a, shard_b


def test_sharded_checkpoint(tmp_path):
    shard_a, shard_b = write_sharded(tmp_path)
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        with SafetensorsModel(target) as model:
            assert list(model) == ["a.weight", "b.weight", "c.weight"]
            assert model.metadata == {"total_size": 1234}
            assert len(model.files) == 2
            np.testing.assert_array_equal(model["a.weight"].array(), shard_a["a.weight"][1])
            assert model["c.weight"].path.endswith("model-00002-of-00002.safetensors")


def expect_error(target, *fragments):
    with pytest.raises(ModelFileError) as info:
        open_safetensors(target)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_sharded_checkpoint_errors(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    write_sharded(tmp_path, lambda m: m.update({"d.weight": "model-00003-of-00003.safetensors"}))
    expect_error(index, "model-00003-of-00003.safetensors", "missing")
    write_sharded(tmp_path, lambda m: m.update({"d.weight": "model-00002-of-00002.safetensors"}))
    expect_error(index, "'d.weight'", "does not contain it")
    write_sharded(tmp_path, lambda m: m.update({"a.weight": "model-00002-of-00002.safetensors"}))
    expect_error(index, "'a.weight'", "does not contain it")
    write_sharded(tmp_path, lambda m: m.update({"x": "../evil.safetensors"}))
    expect_error(index, "outside the checkpoint directory")
    # the same tensor stored in two shards
    write_sharded(tmp_path)
    write(tmp_path, "model-00002-of-00002.safetensors",
          encode({"a.weight": ("F32", np.zeros((2, 3), np.float32))}))
    expect_error(index, "'a.weight'", "also appears in")
    index.write_text("{not json")
    expect_error(index, "not valid JSON")
    index.write_text(json.dumps({"weight_map": ["a"]}))
    expect_error(index, "weight_map")
    expect_error(tmp_path / "missing.index.json", "cannot open")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    expect_error(empty_dir, "model.safetensors.index.json")


def test_truncation_everywhere(tmp_path):
    rng = np.random.default_rng(3)
    data = encode({"x": ("F32", rng.standard_normal((4, 4)).astype(np.float32)),
                   "y": ("I8", np.arange(5, dtype=np.int8))})
    for cut in range(len(data)):
        path = write(tmp_path, "cut.safetensors", data[:cut])
        with pytest.raises(ModelFileError) as info:
            SafetensorsFile(path)
        assert str(path) in str(info.value)


def test_header_errors(tmp_path):
    valid = {"x": ("F32", np.arange(6, dtype=np.float32).reshape(2, 3))}

    def check(data, *fragments):
        path = write(tmp_path, "bad.safetensors", data)
        message = expect_error(path, *fragments)
        assert str(path) in message

    check(b"", "empty")
    check(b"\x01\x02\x03", "too short")
    check(struct.pack("<Q", 2**40) + b"{}", "header length", "past the end")
    check(struct.pack("<Q", 10) + b"{not json}", "not valid UTF-8 JSON")
    check(struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid UTF-8 JSON")
    check(struct.pack("<Q", 2) + b"[]", "expected an object")
    check(struct.pack("<Q", 8) + b'{"x": 1}', "'x'", "not an object")
    entry = b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    dup = b'{"x": ' + entry + b', "x": ' + entry + b'}'
    check(struct.pack("<Q", len(dup)) + dup + b"\x00", "duplicate key")

    def patched(fn):
        return encode(valid, header_patch=fn)

    check(patched(lambda h: h["x"].update(dtype="Q4")), "unknown dtype 'Q4'")
    check(patched(lambda h: h["x"].update(dtype=None)), "unknown dtype")
    check(patched(lambda h: h["x"].update(shape=[2, -3])), "invalid shape")
    check(patched(lambda h: h["x"].update(shape="23")), "invalid shape")
    check(patched(lambda h: h["x"].update(shape=[2, 2])), "needs 16 bytes", "span 24")
    check(patched(lambda h: h["x"].update(dtype="F16")), "needs 12 bytes")
    check(patched(lambda h: h["x"].update(data_offsets=[0])), "invalid data_offsets")
    check(patched(lambda h: h["x"].update(data_offsets=[0, 2**70])), "outside the data section")
    check(patched(lambda h: h["x"].update(data_offsets=[-4, 20])), "outside the data section")
    check(patched(lambda h: h["x"].update(data_offsets=[8, 4])), "outside the data section")
    check(patched(lambda h: h.update({"__metadata__": [1]})), "__metadata__")
    check(patched(lambda h: h.update(
        {"y": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})), "overlap")


def test_close_with_live_views(tmp_path):
    path = write(tmp_path, "m.safetensors", encode({"x": ("F32", np.ones(4, np.float32))}))
    f = SafetensorsFile(path)
    view = f.tensors["x"].array()
    f.close()
    f.close()
    np.testing.assert_array_equal(view, np.ones(4, np.float32))
