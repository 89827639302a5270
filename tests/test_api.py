"""The Python API on a tiny model the test builds: load (and the packed-model cache),
generate (greedy, seeded sampling, streaming, stop strings), OpenAI-shaped completions,
prefix reuse across chat turns, and clear errors for bad arguments."""
import os

import numpy as np
import pytest

import pylut
from pylut import _core
from pylut.formats import packcache

from model_builder import build_gguf


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "tiny-llama-q4_0.gguf"
    build_gguf(path, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, context_length=128)
    return path


def test_packed_cache_roundtrip_gives_identical_logits(model_file, cache):
    m1 = pylut.load(model_file, n_ctx=64)
    files = [f for f in os.listdir(cache) if not f.endswith(".verified")]
    assert len(files) == 1 and files[0].endswith(".pylut")
    m2 = pylut.load(model_file, n_ctx=64)  # mapped from the cache
    toks = list(range(3, 20))
    assert np.array_equal(m1.eval(toks), m2.eval(toks))
    assert m2.info()["params"] == m1.info()["params"]


def test_corrupt_cache_is_rebuilt(model_file, cache, caplog):
    pylut.load(model_file, n_ctx=64)
    (f,) = list(cache.glob("*.pylut"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    m = pylut.load(model_file, n_ctx=64)
    assert "unreadable packed-model cache" in caplog.text
    assert m.eval([1, 2, 3]).shape == (300,)
    with pytest.raises(packcache.PackFileError, match="bad magic"):
        bad = cache / "bad.pylut"
        bad.write_bytes(b"NOTPYLUT" + bytes(100))
        packcache.load(str(bad))


def test_cache_key_follows_the_source_file(model_file, cache):
    k1 = packcache.cache_key(str(model_file), bits=4)
    os.utime(model_file, ns=(1, 1))
    assert packcache.cache_key(str(model_file), bits=4) != k1
    assert packcache.cache_key(str(model_file), bits=2) != packcache.cache_key(str(model_file), bits=4)


def test_generate_greedy_seeded_and_streamed(model_file, cache):
    m = pylut.load(model_file, n_ctx=64)
    prompt = [5, 6, 7, 8]
    a = m.generate(prompt, max_tokens=8, temperature=0)
    assert a == m.generate(prompt, max_tokens=8, temperature=0)
    s1 = m.generate(prompt, max_tokens=8, temperature=1.0, seed=42)
    assert s1 == m.generate(prompt, max_tokens=8, temperature=1.0, seed=42)
    assert "".join(m.generate(prompt, max_tokens=8, temperature=0, stream=True)) == a


def test_prefix_reuse_only_processes_new_tokens(model_file, cache):
    m = pylut.load(model_file, n_ctx=64, batch_invariant=True)
    first = list(range(3, 23))
    m.eval(first)
    assert m.stats["prompt_processed"] == 20
    logits = m.eval(first + [30, 31, 32])
    assert m.stats["prompt_processed"] == 3
    fresh = pylut.load(model_file, n_ctx=64, batch_invariant=True)
    assert np.array_equal(logits, fresh.eval(first + [30, 31, 32]))


def test_high_precision_is_chunk_independent_and_checked(model_file, cache):
    """precision='high' runs every chunk and decode step on two-part int8 activations, so
    prefix reuse equals a fresh run bit for bit; bad values are refused by name."""
    m = pylut.load(model_file, n_ctx=64, precision="high")
    assert m.info()["precision"] == "high" and m.state.split_int8
    first = list(range(3, 23))
    m.eval(first)
    logits = m.eval(first + [30, 31, 32])
    assert m.stats["prompt_processed"] == 3
    assert np.array_equal(logits, pylut.load(model_file, n_ctx=64, precision="high").eval(first + [30, 31, 32]))
    assert pylut.load(model_file, n_ctx=64).info()["precision"] == "fast"
    with pytest.raises(ValueError, match="precision must be 'fast' or 'high'"):
        pylut.load(model_file, precision="exact")
    with pytest.raises(ValueError, match="needs ternary weights as b2"):
        pylut.load(model_file, precision="high", ternary="t3")


def test_prefix_reuse_on_the_int8_prefill_path_stays_close(model_file, cache):
    """By default a 20-token prompt goes through the int8 prefill kernel where the CPU has
    one, and the 3 new tokens through the tables: close to a fresh 23-token run, not equal."""
    m = pylut.load(model_file, n_ctx=64)
    assert m.info()["batch_invariant"] is False
    first = list(range(3, 23))
    m.eval(first)
    logits = m.eval(first + [30, 31, 32])
    assert m.stats["prompt_processed"] == 3
    fresh = pylut.load(model_file, n_ctx=64).eval(first + [30, 31, 32])
    exact = pylut.load(model_file, n_ctx=64, batch_invariant=True).eval(first + [30, 31, 32])
    scale = np.abs(exact).max()
    assert np.abs(logits - exact).max() <= 0.05 * scale
    assert np.abs(fresh - exact).max() <= 0.05 * scale
    if _core.i8_preferred(m.loaded.tensors["blk.0.attn_q"], 20):
        assert not np.array_equal(fresh, exact)  # the int8 path did run
    m.eval(first[:5] + [40])  # diverges: the cache is cut back to the common prefix
    assert m.stats["prompt_processed"] == 1


@pytest.mark.parametrize("isa", [i for i in ("avx2", "avx512vbmi") if i in _core.isa_supported()])
def test_matrices_of_one_table_layout_choose_their_path_each(tmp_path, cache, isa, restore_isa):
    """Q2_K and Q3_K share a table layout (16-weight groups, 256-weight super-blocks): in a
    20-token chunk the Q3_K matrices take the int8 kernel and the Q2_K query projection keeps
    the tables, so the chunk builds both inputs and each matrix reads its own."""
    pylut.set_isa(isa)
    path = tmp_path / "mixed.gguf"
    build_gguf(path, "llama", "Q3_K", dim=256, ffn=256, vocab=300,
               type_overrides={"blk.0.attn_q.weight": "Q2_K", "blk.1.attn_q.weight": "Q2_K"})
    prompt = list(range(3, 23))
    m = pylut.load(path, n_ctx=64)
    q2k, q3k = m.loaded.tensors["blk.0.attn_q"], m.loaded.tensors["blk.0.attn_k"]
    assert (q2k.bits, q3k.bits) == (2, 3) and q2k.super_block == q3k.super_block == 256
    assert not _core.i8_preferred(q2k, len(prompt)) and _core.i8_preferred(q3k, len(prompt))
    logits = m.eval(prompt)
    exact = pylut.load(path, n_ctx=64, batch_invariant=True).eval(prompt)
    assert np.all(np.isfinite(logits)) and not np.array_equal(logits, exact)
    assert np.abs(logits - exact).max() <= 0.05 * np.abs(exact).max()


def test_openai_shaped_results(chat_model_file, cache):
    m = pylut.load(chat_model_file, n_ctx=128)
    assert m.info()["chat_template"]
    r = m.create_completion("Hello there", max_tokens=4, temperature=0)
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] in ("stop", "length")
    assert r["usage"]["completion_tokens"] <= 4
    chunks = list(m.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=3,
                                           temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_bad_arguments(model_file, cache):
    with pytest.raises(FileNotFoundError):
        pylut.load(model_file.parent / "missing.gguf")
    with pytest.raises(ValueError, match="context length"):
        pylut.load(model_file, n_ctx=10**6)
    m = pylut.load(model_file, n_ctx=16)
    with pytest.raises(ValueError, match="n_ctx"):
        m.eval(list(range(1, 40)))
    with pytest.raises(ValueError, match="max_tokens"):
        m.generate([1, 2], max_tokens=0)
    with pytest.raises(TypeError, match="unknown sampling option"):
        m.generate([1, 2], max_tokens=2, temprature=0.5)
    with pytest.raises(ValueError, match="top_p"):
        m.generate([1, 2], max_tokens=2, top_p=0)
    with pytest.raises(ValueError, match="token ids"):
        m.state.forward([10**6], pylut.get_pool(1))


def test_generation_stops_at_context_end(model_file, cache):
    m = pylut.load(model_file, n_ctx=16)
    r = m.create_completion([5, 6, 7], max_tokens=100, temperature=0)
    assert r["choices"][0]["finish_reason"] in ("length", "stop")
    assert m.state.pos <= 16


# ---------------------------------------------------------------- context shift, sessions

def test_context_shift_rerotates_keys(model_file, cache):
    """Layer-0 keys depend only on token and position, so after a shift the moved keys must
    equal keys computed fresh at their new positions."""
    m = pylut.load(model_file, n_ctx=32, batch_invariant=True)  # 20 and 14-token prompts compared
    toks = list(range(3, 23))
    m.eval(toks)
    m.state.shift(4, 6)
    hd = m.loaded.config["head_dim"]
    keys = lambda model: _core.kv_decode(model.state.kv_array()[0, 0, :, :14], "f16", hd)  # noqa: E731
    shifted = keys(m)
    fresh = pylut.load(model_file, n_ctx=32, batch_invariant=True)
    fresh.eval(toks[:4] + toks[10:])
    # fp16 cache: the re-rotation rounds once more than a fresh write (2 ulp of fp16)
    assert np.allclose(shifted, keys(fresh), rtol=2e-3, atol=2e-3)
    assert np.array_equal(m.state.kv_array()[1, 0, :, :14], fresh.state.kv_array()[1, 0, :, :14])


def test_generation_runs_past_n_ctx_with_shift(model_file, cache):
    m = pylut.load(model_file, n_ctx=16)
    r = m.create_completion([5, 6, 7], max_tokens=48, temperature=0)
    assert r["usage"]["completion_tokens"] == 48 and r["choices"][0]["finish_reason"] == "length"
    assert m.n_shifts >= 2 and m.state.pos <= 16
    off = pylut.load(model_file, n_ctx=16, context_shift=False)
    r = off.create_completion([5, 6, 7], max_tokens=48, temperature=0)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] < 48


def test_save_and_load_state_continue_identically(model_file, cache, tmp_path):
    m = pylut.load(model_file, n_ctx=64)
    prompt = [5, 6, 7, 8, 9]
    m.eval(prompt)
    m.save_state(tmp_path / "s.bin")
    expected = m.generate(prompt, max_tokens=10, temperature=0)
    other = pylut.load(model_file, n_ctx=64)
    other.load_state(tmp_path / "s.bin")
    assert other.state.pos == len(prompt)
    assert other.generate(prompt, max_tokens=10, temperature=0) == expected
    assert other.stats["prompt_processed"] == 1  # only the last prompt token re-ran


def test_foreign_or_corrupt_state_is_refused(model_file, cache, tmp_path):
    m = pylut.load(model_file, n_ctx=64)
    m.eval([5, 6, 7])
    m.save_state(tmp_path / "s.bin")
    data = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "flip.bin").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ValueError, match="checksum"):
        m.load_state(tmp_path / "flip.bin")
    (tmp_path / "short.bin").write_bytes(data[:20])
    with pytest.raises(ValueError, match="too short|checksum"):
        m.load_state(tmp_path / "short.bin")
    (tmp_path / "junk.bin").write_bytes(b"x" * 200)
    with pytest.raises(ValueError, match="bad magic"):
        m.load_state(tmp_path / "junk.bin")
    other_file = tmp_path / "other.gguf"
    build_gguf(other_file, "llama", "Q4_0", vocab=300, n_layers=1, dim=64, context_length=128)
    with pytest.raises(ValueError, match="another model"):
        pylut.load(other_file, n_ctx=64).load_state(tmp_path / "s.bin")


def test_second_chat_turn_prefills_only_the_new_tokens(chat_model_file, cache):
    """Chat clients re-send the whole conversation: turn 2 must not re-run turn 1."""
    m = pylut.load(chat_model_file, n_ctx=256)
    msgs = [{"role": "user", "content": "Hello there"}]
    r1 = m.create_chat_completion(msgs, max_tokens=8, temperature=0)
    first_prompt = m.stats["prompt_tokens"]
    msgs += [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
             {"role": "user", "content": "And again"}]
    m.create_chat_completion(msgs, max_tokens=4, temperature=0)
    assert m.stats["prompt_tokens"] > first_prompt
    assert m.stats["prompt_processed"] <= m.stats["prompt_tokens"] - first_prompt
