"""Hostile files and careless clients: each defect found by fuzzing, as a test. A forged GGUF
header (huge block_count, absurd hyperparameters, broken tokenizer metadata) is a quick
ModelFileError; bad API arguments and server fields are ValueErrors / 400s; forged session
files and runaway chat templates are refused."""
import hashlib
import os
import http.client
import json
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

import pylut
from pylut.errors import ModelFileError

from model_builder import build_gguf

ROOT = Path(pylut.__file__).resolve().parents[1]  # the pylut under test, for subprocesses


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "tiny-llama-q4_0.gguf"
    build_gguf(path, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, context_length=128)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def patched(src: Path, dst: Path, key: str, value=None, index: int = 0, raw: bytes = None) -> Path:
    """A copy of src with metadata `key`'s value (element `index` of an array) overwritten in
    place, keeping its type: a number, or `raw` bytes of the same length for a string."""
    dst.write_bytes(src.read_bytes())
    reader = gguf.GGUFReader(str(dst), "r+")
    field = reader.fields[key]
    part = field.parts[field.data[index]]
    if raw is not None:
        assert len(raw) == part.size
        part[:] = np.frombuffer(raw, np.uint8)
    else:
        part[0] = value
    part.base.flush() if hasattr(part.base, "flush") else None
    del reader, part
    return dst


def load_error(path) -> str:
    with pytest.raises(ModelFileError) as e:
        pylut.load(path, cache=False)
    return str(e.value)


# ---------------------------------------------------------------- GGUF headers

def test_huge_block_count_fails_fast_without_allocating(model_file, tmp_path):
    bad = patched(model_file, tmp_path / "layers.gguf", "llama.block_count", 2**31)
    code = ("import pylut, sys\n"
            "try:\n    pylut.load(sys.argv[1], cache=False)\n"
            "except pylut.errors.ModelFileError as e:\n    print('MFE', e)\n")
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True,
                           timeout=20, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("loading a GGUF with block_count 2^31 still ran after 20 s")
    assert r.stdout.startswith("MFE"), r.stdout + r.stderr
    assert "block_count" in r.stdout and str(bad) in r.stdout
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("key, value, words", [
    ("llama.attention.layer_norm_rms_epsilon", 1e-45, "layer_norm_rms_epsilon"),
    ("llama.attention.layer_norm_rms_epsilon", 3.4e38, "layer_norm_rms_epsilon"),
    ("llama.rope.freq_base", 3.4e38, "rope.freq_base"),
    ("llama.rope.freq_base", 1e-45, "rope.freq_base"),
    ("llama.context_length", 2**31, "context_length"),
    ("llama.embedding_length", 2**31, "embedding_length"),
    ("llama.attention.head_count", 2**31, "head_count"),
])
def test_hyperparameters_are_range_checked(model_file, tmp_path, key, value, words):
    msg = load_error(patched(model_file, tmp_path / "hp.gguf", key, value))
    assert words in msg and "tmp" in msg


def test_tokenizer_ids_out_of_range_are_model_file_errors(model_file, tmp_path):
    msg = load_error(patched(model_file, tmp_path / "bos.gguf", "tokenizer.ggml.bos_token_id", 10**6))
    assert "bos_token_id" in msg and "0..299" in msg
    msg = load_error(patched(model_file, tmp_path / "eos.gguf", "tokenizer.ggml.eos_token_id", 2**31))
    assert "eos_token_id" in msg


def test_non_hex_byte_token_is_a_model_file_error(model_file, tmp_path):
    # token 100 is "tok100": same length as "<0xZZ>"; make it a BYTE token that is not hex
    p = patched(model_file, tmp_path / "byte.gguf", "tokenizer.ggml.tokens", index=100, raw=b"<0xZZ>")
    p = patched(p, tmp_path / "byte2.gguf", "tokenizer.ggml.token_type", 6, index=100)
    p = patched(p, tmp_path / "byte3.gguf", "tokenizer.ggml.bos_token_id", 100)
    m = pylut.load(p, cache=False)  # a malformed byte token is shown as written, never a crash
    assert m.tokenizer.token_to_piece(100) == b"<0xZZ>"


@pytest.mark.parametrize("item_type,count", [(8, 1 << 40), (9, 1 << 40), (8, (1 << 64) - 1)])
def test_forged_array_count_in_a_vocab_fails_before_allocating(tmp_path, item_type, count):
    """A string (or nested) array whose count the file cannot hold is refused up front; the
    fuzzer found `[None] * count` raising MemoryError first."""
    from pylut.formats.gguf_reader import read_gguf_metadata
    key = b"tokenizer.ggml.tokens"
    body = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, item_type, count) + bytes(64))
    path = tmp_path / "forged-count.gguf"
    path.write_bytes(body)
    with pytest.raises(ModelFileError, match="truncated"):
        read_gguf_metadata(path)


# ---------------------------------------------------------------- API arguments

def test_api_size_arguments_are_value_errors(model_file, cache):
    with pytest.raises(ValueError, match="n_ctx"):
        pylut.load(model_file, n_ctx=True)
    with pytest.raises(ValueError, match="n_threads"):
        pylut.load(model_file, n_threads=2**31)
    with pytest.raises(ValueError, match="max_batch"):
        pylut.load(model_file, max_batch=1.5)
    m = pylut.load(model_file, n_ctx=64)
    for bad in (dict(top_k=-1), dict(top_k=2**70), dict(seed=-1), dict(repeat_penalty=float("inf")),
                dict(temperature=float("nan")), dict(temperature=True)):
        with pytest.raises(ValueError):
            m.generate("tok1", max_tokens=2, **bad)
    for prompt in ([10**9], [-1], [1.5], [2**70], [True]):
        with pytest.raises(ValueError, match="token ids"):
            m.generate(prompt, max_tokens=2)


# ---------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    import os
    os.environ.setdefault("PYLUT_CACHE_DIR", str(tmp_path_factory.mktemp("srvcache")))
    from pylut.app.server import make_server
    srv = make_server(pylut.load(model_file, n_ctx=64, n_threads=1), port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, body: str):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.mark.parametrize("body", [
    '{"prompt": [18446744073709551616]}',
    '{"prompt": [1000000000]}',
    '{"prompt": [-3]}',
    '{"prompt": [5], "seed": -1}',
    '{"prompt": [5], "top_k": -5}',
    '{"prompt": [5], "top_k": 1180591620717411303424}',
    '{"prompt": [5], "repeat_penalty": Infinity}',
    '{"prompt": [5], "temperature": NaN}',
    '{"prompt": [5], "top_p": 1e999}',
    '{"prompt": [5], "repeat_last_n": -1}',
    '{"prompt": [5], "stream": true, "seed": 1.5}',
])
def test_server_bad_numeric_fields_are_400s(server, body):
    status, reply = post(server, body)
    assert status == 400, reply
    err = reply["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert "Traceback" not in err["message"] and "numpy" not in err["message"].lower()


def test_server_still_answers_after_bad_requests(server):
    status, reply = post(server, '{"prompt": [5, 6], "max_tokens": 2, "temperature": 0}')
    assert status == 200 and reply["choices"][0]["finish_reason"] in ("length", "stop")


# ---------------------------------------------------------------- session files

def forge(src: Path, dst: Path, edit_header=None, edit_rows=None) -> Path:
    """A session file with its header/rows changed and the checksum recomputed."""
    data = src.read_bytes()
    magic, version, hlen = struct.unpack_from("<8sIQ", data)
    pre = struct.calcsize("<8sIQ")
    header = json.loads(data[pre:pre + hlen])
    rows = bytearray(data[pre + hlen:-32])
    if edit_header:
        edit_header(header)
    if edit_rows:
        edit_rows(rows)
    hb = json.dumps(header).encode()
    body = struct.pack("<8sIQ", magic, version, len(hb)) + hb + bytes(rows)
    dst.write_bytes(body + hashlib.sha256(body).digest())
    return dst


@pytest.fixture(scope="module")
def session(model_file, tmp_path_factory):
    import os
    os.environ.setdefault("PYLUT_CACHE_DIR", str(tmp_path_factory.mktemp("sesscache")))
    m = pylut.load(model_file, n_ctx=64, n_threads=1)
    m.eval(list(range(3, 13)))
    path = tmp_path_factory.mktemp("sess") / "s.bin"
    m.save_state(path)
    return m, path


def test_forged_session_header_values_are_refused(session, tmp_path):
    m, path = session
    m.load_state(path)  # the genuine file loads
    cases = {"tokens": [10**9, -1, 1.5, 2**70, True], "stream_base": [10**9, -1, 1.5]}
    for key, values in cases.items():
        for v in values:
            def edit(h, key=key, v=v):
                if key == "tokens":
                    h["tokens"][3] = v
                else:
                    h[key] = v
            with pytest.raises(ValueError):
                m.load_state(forge(path, tmp_path / "f.bin", edit_header=edit))


def test_forged_session_rows_are_refused(session, tmp_path):
    m, path = session
    nan16 = np.array([np.nan], np.float16).tobytes()

    def nan_row(rows):
        rows[64:66] = nan16

    def zero_row(rows):
        rows[:32] = bytes(32)  # the first cached key row (head_dim 16, f16: 32 bytes)
    for edit, words in ((nan_row, "NaN"), (zero_row, "zeroed")):
        with pytest.raises(ValueError, match=words):
            m.load_state(forge(path, tmp_path / "f.bin", edit_rows=edit))
    m.load_state(path)
    assert m._cached == list(range(3, 13))


# ---------------------------------------------------------------- chat templates

@pytest.mark.parametrize("template, words", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took over"),
    ("{{ 'a' * 10**9 }}", "limit"),
    ("{{ 'a' | center(10**9) }}", "limit"),
    ("{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "limit"),
])
def test_runaway_chat_templates_are_refused(template, words):
    pytest.importorskip("jinja2")
    from pylut.tokenizer.chat_template import ChatTemplate, TemplateBudgetError
    t = ChatTemplate(template)
    t0 = time.monotonic()
    with pytest.raises(TemplateBudgetError, match=words):
        t.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 10


def test_ordinary_template_renders_within_budget():
    pytest.importorskip("jinja2")
    from pylut.tokenizer.chat_template import ChatTemplate
    t = ChatTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert t.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------- packed files

def test_crc32c_matches_the_standard_and_its_scalar_twin():
    from pylut import _core
    assert _core.crc32c(b"123456789") == 0xE3069283
    assert _core.crc32c(b"123456789", scalar=True) == 0xE3069283
    rng = np.random.default_rng(1)
    buf = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    for start, n in [(0, 0), (1, 1), (3, 7), (5, 8), (7, 1000), (0, 1 << 16), (13, 40000)]:
        part = buf[start:start + n]
        assert _core.crc32c(part) == _core.crc32c(part, scalar=True)
    # chaining: the CRC of a whole is the CRC of its second half continued from the first's
    assert _core.crc32c(buf[1000:], _core.crc32c(buf[:1000])) == _core.crc32c(buf)


def _pack(model_file, cache):
    from pylut.formats import packcache
    pylut.load(model_file, n_ctx=64)
    (f,) = list(cache.glob("*.pylut"))
    return f, packcache


def _forge_pack(f: Path, edit) -> None:
    """Rewrite the pack's JSON header through edit(header), with a valid header CRC."""
    import zlib
    from pylut.formats import packcache
    data = f.read_bytes()
    magic, version, z, hoff, hlen, crc, z2 = packcache._PREFIX.unpack_from(data)
    h = json.loads(data[hoff:hoff + hlen])
    edit(h)
    raw = json.dumps(h).encode()
    prefix = packcache._PREFIX.pack(magic, version, z, hoff, len(raw), zlib.crc32(raw), z2)
    f.write_bytes(prefix + data[len(prefix):hoff] + raw)


def test_bit_flipped_pack_payload_is_refused_and_rebuilt(model_file, cache, caplog):
    f, packcache = _pack(model_file, cache)
    want = pylut.load(model_file, n_ctx=64, cache=False).eval([5, 6, 7])
    with open(f, "rb") as fh:
        h = packcache._read_header(fh, str(f), f.stat().st_size)[0]
    rng = np.random.default_rng(0)
    spans = [e[k] for e in h["tensors"].values() for k in ("codes", "scale", "data") if e.get(k)]
    good = f.read_bytes()
    for trial in range(8):
        off, n, _ = spans[rng.integers(len(spans))]
        at = off + int(rng.integers(n))
        data = bytearray(good)
        data[at] ^= 1 << int(rng.integers(8))
        st = f.stat()
        f.write_bytes(bytes(data))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its mtime restored
        with pytest.raises(packcache.PackFileError, match="CRC"):
            packcache.load(str(f))
    data = bytearray(good)
    off, n, _ = spans[0]
    data[off] ^= 0x10
    f.write_bytes(bytes(data))
    m = pylut.load(model_file, n_ctx=64)  # the cache is rebuilt, the answer unchanged
    assert "unreadable packed-model cache" in caplog.text
    assert np.array_equal(m.eval([5, 6, 7]), want)


@pytest.mark.parametrize("forgery", ["norm_eps", "rope_neox", "ffn_act", "layer_alias", "shifted_scale",
                                     "n_layers", "zero", "span_type", "ffn_dim"])
def test_forged_pack_headers_are_refused(model_file, cache, forgery):
    f, packcache = _pack(model_file, cache)

    def edit(h):
        t = h["tensors"]
        if forgery == "norm_eps":
            h["config"]["norm_eps"] = 4.6e18
        elif forgery == "rope_neox":
            h["config"]["rope_neox"] = -1
        elif forgery == "ffn_act":
            h["config"]["ffn_act"] = "gelu"
        elif forgery == "layer_alias":
            t["blk.1.attn_q"] = {"kind": "alias", "of": "blk.0.attn_q"}
        elif forgery == "shifted_scale":
            t["blk.0.attn_q"]["scale"][0] = t["blk.0.attn_q"]["codes"][0] + 64
        elif forgery == "n_layers":
            h["config"]["n_layers"] = 2**31
        elif forgery == "zero":
            t["blk.0.attn_q"]["zero"] = float("inf")
        elif forgery == "ffn_dim":  # in range, but not the tensors' shape
            h["config"]["ffn_dim"] = 1
        elif forgery == "span_type":
            t["blk.0.attn_q"]["codes"][1] = 1.5
    _forge_pack(f, edit)
    with pytest.raises(packcache.PackFileError):
        packcache.load(str(f))


def test_source_edited_in_place_with_mtime_restored_rebuilds_the_pack(tmp_path, cache):
    src = tmp_path / "m.gguf"
    build_gguf(src, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, context_length=128)
    before = pylut.load(src, n_ctx=64).eval([5, 6, 7])
    assert len(list(cache.glob("*.pylut"))) == 1
    from pylut.formats.gguf_reader import GGUFFile
    with GGUFFile(src) as g:
        info = g.tensors["blk.0.attn_q.weight"]
        at = info.offset + 2  # a code byte of the first block (after its fp16 scale)
    st = src.stat()
    data = bytearray(src.read_bytes())
    for i in range(64):
        data[at + i] ^= 0x77
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # cp -p / rsync -t / tar x
    assert src.stat().st_mtime_ns == st.st_mtime_ns and src.stat().st_size == st.st_size
    after = pylut.load(src, n_ctx=64).eval([5, 6, 7])
    fresh = pylut.load(src, n_ctx=64, cache=False).eval([5, 6, 7])
    assert len(list(cache.glob("*.pylut"))) == 2  # rebuilt, not served stale
    assert np.array_equal(after, fresh) and not np.array_equal(after, before)


def test_converted_pack_refuses_a_changed_source(tmp_path, cache):
    from pylut.app.cli import CLIError, load_model
    src = tmp_path / "m.gguf"
    build_gguf(src, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, context_length=128)
    out = tmp_path / "m.pylut"
    r = subprocess.run([sys.executable, "-m", "pylut", "convert", str(src), str(out)], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    load_model(str(out), n_ctx=64)
    data = bytearray(src.read_bytes())
    data[100] ^= 1  # inside the metadata: the tokenizer the pack would read
    st = src.stat()
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CLIError, match="changed since it was packed"):
        load_model(str(out), n_ctx=64)
