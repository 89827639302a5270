"""Hostile files and careless clients: each defect found by fuzzing, as a test. A forged GGUF
header (huge block_count, absurd hyperparameters, broken tokenizer metadata) is a quick
ModelFileError; bad API arguments and server fields are ValueErrors / 400s; forged session
files and runaway chat templates are refused."""
import hashlib
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
    from pylut.server import make_server
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
    from pylut.chat_template import ChatTemplate, TemplateBudgetError
    t = ChatTemplate(template)
    t0 = time.monotonic()
    with pytest.raises(TemplateBudgetError, match=words):
        t.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 10


def test_ordinary_template_renders_within_budget():
    pytest.importorskip("jinja2")
    from pylut.chat_template import ChatTemplate
    t = ChatTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert t.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
