"""Streaming heads in the model (opt-in head plans): the forward pass against the numpy
reference with the same streaming mask (prefill chunks shorter and longer than the window,
decode, 1-3 threads), chunk independence, cache types, the needle in a haystack on a model
with one hand-built retrieval head (tests/needle_model.py: found by calibration, answered
with the plan, missed with a wrong plan), the memory it saves, context shifts, prefix reuse,
session files (format v4, v2 and v3 still read) and plan files."""
import hashlib
import json
import struct

import numpy as np
import pytest
from model_builder import build_gguf
from needle_model import ANSWER, RETRIEVAL_HEAD, answers, build_needle_gguf, haystack
from ref_forward import forward as ref_forward

import pylut
from pylut import HeadPlan, _core

SINK, WINDOW = 4, 16


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "stream-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "tiny.gguf"
    build_gguf(path, "llama", "Q8_0", vocab=300, n_layers=2, dim=64, n_heads=4, n_kv_heads=2,
               context_length=512)
    return path


@pytest.fixture(scope="module")
def needle(tmp_path_factory):
    return build_needle_gguf(tmp_path_factory.mktemp("needle") / "needle.gguf", context_length=2048)


def plan_for(model, streaming, sink=SINK, window=WINDOW):
    retrieval = [[h for h, s in enumerate(layer) if not s] for layer in streaming]
    return HeadPlan(sink, window, retrieval, HeadPlan.identity(model))


def weights(m):
    return {k: t.dequantize() if isinstance(t, _core.QMatrix) else t for k, t in m.loaded.tensors.items()}


MIXED = [[True, False], [False, True]]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("max_batch", [8, 64])  # chunks shorter and longer than the window
def test_forward_matches_the_reference_with_the_streaming_mask(tiny, threads, max_batch):
    base = pylut.load(tiny, n_ctx=256)
    m = pylut.load(tiny, n_ctx=256, n_threads=threads, max_batch=max_batch, head_plan=plan_for(base, MIXED))
    tokens = [int(t) for t in np.random.default_rng(threads).integers(0, 300, 150)]
    ref = ref_forward(m.loaded.config, weights(m), tokens, streaming=MIXED, sink=SINK, window=WINDOW)
    pre = m.state.forward(tokens[:140], m.pool, all_logits=True)
    steps = np.stack([m.state.forward([t], m.pool) for t in tokens[140:]])
    got = np.concatenate([pre, steps])
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 0.03 * scale
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.97
    # the mask matters: the full-attention reference is further away than the tolerance
    full = ref_forward(m.loaded.config, weights(m), tokens)
    assert np.abs(full - ref)[WINDOW + SINK:].max() > 0.05 * scale


def test_results_do_not_depend_on_how_the_tokens_are_chunked(tiny):
    base = pylut.load(tiny, n_ctx=256)
    tokens = [int(t) for t in np.random.default_rng(7).integers(0, 300, 120)]
    outs = []
    for max_batch, step in ((64, 120), (5, 120), (64, 1), (64, 37)):
        m = pylut.load(tiny, n_ctx=256, n_threads=2, max_batch=max_batch, head_plan=plan_for(base, MIXED),
                       batch_invariant=True)
        outs.append(np.concatenate([m.state.forward(tokens[i:i + step], m.pool, all_logits=True)
                                    for i in range(0, len(tokens), step)]))
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() <= 1e-4 * np.abs(outs[0]).max()


@pytest.mark.parametrize("kv_type,max_rel", [("q8", 0.01), ("q4", 0.05)])
def test_quantized_caches_with_streaming_heads(tiny, kv_type, max_rel):
    base = pylut.load(tiny, n_ctx=256)
    tokens = list(range(5, 125))
    ref = pylut.load(tiny, n_ctx=256, head_plan=plan_for(base, MIXED)).eval(tokens)
    m = pylut.load(tiny, n_ctx=256, kv_type=kv_type, head_plan=plan_for(base, MIXED))
    got = m.eval(tokens)
    assert np.abs(got - ref).max() <= max_rel * (ref.max() - ref.min())


def test_no_plan_and_an_all_retrieval_plan_are_the_plain_path(tiny):
    base = pylut.load(tiny, n_ctx=256)
    allfull = pylut.load(tiny, n_ctx=256, head_plan=plan_for(base, [[False, False], [False, False]]))
    tokens = list(range(10, 150))
    assert base.state.streaming is None
    assert np.array_equal(base.eval(tokens), allfull.eval(tokens))
    assert allfull.state.kv_bytes == base.state.kv_bytes == base.state.kv_array().nbytes


def test_kv_memory_is_what_is_allocated(tiny):
    base = pylut.load(tiny, n_ctx=512, max_batch=32)
    m = pylut.load(tiny, n_ctx=512, max_batch=32, head_plan=plan_for(base, MIXED))
    rb = _core.kv_row_bytes("f16", 16)
    # two full heads of n_ctx slots, two streaming heads of sink + window + max_batch, keys and values
    assert m.state.kv_bytes == 2 * (2 * 512 + 2 * (SINK + WINDOW + 32)) * rb
    assert m.state.kv_array().nbytes == m.state.kv_bytes
    assert m.state.head_kv(0, 0, 0).shape == (SINK + WINDOW + 32, rb)
    assert m.state.head_kv(1, 0, 1).shape == (512, rb)
    info = m.info()["head_plan"]
    assert info["kv_bytes_full"] == base.state.kv_bytes
    assert info["kv_bytes_saved"] == base.state.kv_bytes - m.state.kv_bytes


# ---------------------------------------------------------------- the needle

DEPTHS = [5, 300, 900, 1500, 1900]


def test_needle_full_calibrated_and_wrong_plan(needle, capsys):
    full = pylut.load(needle, n_ctx=2048, n_threads=2)
    got_full = answers(full, 2000, DEPTHS)
    assert all(ok for _, _, ok in got_full), got_full
    # calibration finds the retrieval head on its own, on a shorter needle prompt
    plan = pylut.calibrate_heads(full, text=haystack(400, 50, 5, seed=9), retrieval_fraction=0.25, sink=4,
                                 window=64)
    assert plan.retrieval[RETRIEVAL_HEAD[0]] == [RETRIEVAL_HEAD[1]] and plan.n_retrieval == 1, plan.scores
    calibrated = pylut.load(needle, n_ctx=2048, n_threads=2, head_plan=plan)
    got_plan = answers(calibrated, 2000, DEPTHS)
    assert all(ok for _, _, ok in got_plan), got_plan
    # the wrong plan: the retrieval head streams, another keeps everything -> the needle is lost
    wrong = HeadPlan(4, 64, [[0], []], HeadPlan.identity(full))
    lost = pylut.load(needle, n_ctx=2048, n_threads=2, head_plan=wrong)
    got_wrong = answers(lost, 2000, DEPTHS)
    assert not any(ok for _, _, ok in got_wrong), got_wrong
    # ... unless the needle is inside the window (or a sink)
    code = 2
    logits = lost.eval(haystack(2000, 2000 - 30, code))
    assert int(np.argmax(logits)) == ANSWER + code
    saved = full.state.kv_bytes - calibrated.state.kv_bytes
    with capsys.disabled():
        print(f"\nneedle at depths {DEPTHS} of 2000 tokens: full {sum(o for *_, o in got_full)}/{len(DEPTHS)}, "
              f"calibrated plan {sum(o for *_, o in got_plan)}/{len(DEPTHS)}, wrong plan "
              f"{sum(o for *_, o in got_wrong)}/{len(DEPTHS)}; KV cache {full.state.kv_bytes} -> "
              f"{calibrated.state.kv_bytes} bytes ({saved} saved, {saved / full.state.kv_bytes:.0%})")
    assert calibrated.state.kv_bytes < 0.35 * full.state.kv_bytes


# ---------------------------------------------------------------- shifts, reuse, files

def test_three_times_n_ctx_with_context_shifts(tiny):
    base = pylut.load(tiny, n_ctx=96)
    m = pylut.load(tiny, n_ctx=96, n_threads=2, max_batch=16, head_plan=plan_for(base, MIXED))
    r = m.create_completion(list(range(5, 40)), max_tokens=3 * 96, temperature=0.8, seed=1, ignore_eos=True)
    assert r["usage"]["completion_tokens"] == 3 * 96 and m.n_shifts >= 4
    assert np.all(np.isfinite(m.eval(m._cached)))


def test_a_shift_keeps_each_streaming_row_where_a_full_head_has_it(tiny):
    """Layer 0's keys depend on the tokens alone: after the same shifts, every position a
    streaming head of layer 0 still holds has the row a full session holds for it."""
    base = pylut.load(tiny, n_ctx=128, max_batch=8)
    m = pylut.load(tiny, n_ctx=128, max_batch=8, head_plan=plan_for(base, [[True, True], [True, False]]))
    tokens = [int(t) for t in np.random.default_rng(2).integers(0, 300, 120)]
    for s in (base.state, m.state):
        s.forward(tokens[:100], base.pool)
        s.shift(4, 30)   # the stream's oldest rows sit in the dropped range
        s.forward(tokens[100:110], base.pool)
        s.shift(20, 5)   # the stream starts after n_keep + n_discard
        s.forward(tokens[110:], base.pool)
    pos, sb = m.state.pos, m.state.stream_base
    assert pos == base.state.pos == 85 and sb > SINK
    for kv in (0, 1):
        for h in (0, 1):
            rows, full = m.state.head_kv(kv, 0, h), base.state.head_kv(kv, 0, h)
            used = m.state.head_used(0, h)
            assert used == SINK + pos - sb
            assert np.array_equal(rows[:SINK], full[:SINK])
            assert np.array_equal(rows[SINK:used], full[sb:pos])
    with pytest.raises(ValueError, match="sink"):
        m.state.shift(2, 10)


def test_prefix_reuse_stays_exact(tiny):
    base = pylut.load(tiny, n_ctx=256)
    m = pylut.load(tiny, n_ctx=256, max_batch=16, head_plan=plan_for(base, MIXED), batch_invariant=True)
    a = list(range(5, 125))
    m.eval(a)
    longer = m.eval(a + [7, 8, 9])  # the whole prompt reused
    assert m.stats["prompt_processed"] == 3
    other = a[:40] + list(range(200, 260))  # shares 40: the stream has dropped what that needs
    got = m.eval(other)
    assert m.stats["prompt_processed"] == len(other)
    fresh = pylut.load(tiny, n_ctx=256, max_batch=16, head_plan=plan_for(base, MIXED), batch_invariant=True)
    assert np.allclose(got, fresh.eval(other), atol=1e-4 * np.abs(got).max())
    assert np.allclose(longer, fresh.eval(a + [7, 8, 9]), atol=1e-4 * np.abs(longer).max())
    with pytest.raises(ValueError, match="dropped"):
        m.state.truncate(10)


def test_session_files_record_the_plan(tiny, tmp_path):
    base = pylut.load(tiny, n_ctx=256)
    plan = plan_for(base, MIXED)
    m = pylut.load(tiny, n_ctx=256, max_batch=16, head_plan=plan)
    prompt = list(range(5, 105))
    m.eval(prompt)
    m.save_state(tmp_path / "s.bin")
    again = pylut.load(tiny, n_ctx=256, max_batch=16, head_plan=plan)
    again.load_state(tmp_path / "s.bin")
    assert again.state.stream_base == m.state.stream_base
    assert np.array_equal(again.eval(prompt + [9, 10]), m.eval(prompt + [9, 10]))
    assert again.stats["prompt_processed"] == 2
    with pytest.raises(ValueError, match="head plan"):
        pylut.load(tiny, n_ctx=256).load_state(tmp_path / "s.bin")
    other = plan_for(base, [[False, True], [True, False]])
    with pytest.raises(ValueError, match="head plan"):
        pylut.load(tiny, n_ctx=256, max_batch=16, head_plan=other).load_state(tmp_path / "s.bin")
    base.eval(prompt)
    base.save_state(tmp_path / "full.bin")
    with pytest.raises(ValueError, match="no head plan"):
        again.load_state(tmp_path / "full.bin")


def test_version_2_session_files_still_load(tiny, tmp_path):
    m = pylut.load(tiny, n_ctx=64)
    prompt = [5, 6, 7, 8, 9]
    m.eval(prompt)
    kv = m.state.kv_array()[:, :, :, :5, :]
    header = json.dumps({"fingerprint": m._fingerprint(shapes_only=True), "n_tokens": 5, "tokens": prompt,
                         "kv_type": "f16", "kv_shape": list(kv.shape), "model": m.name}).encode()
    body = struct.pack("<8sIQ", b"PYLUTST\0", 2, len(header)) + header + np.ascontiguousarray(kv).tobytes()
    (tmp_path / "v2.bin").write_bytes(body + hashlib.sha256(body).digest())
    again = pylut.load(tiny, n_ctx=64)
    again.load_state(tmp_path / "v2.bin")
    assert np.array_equal(again.eval(prompt + [10]), m.eval(prompt + [10]))
    assert again.stats["prompt_processed"] == 1


def test_a_checkpoint_of_the_same_shape_is_another_model(tiny, tmp_path):
    """The fingerprint samples weight bytes: a retrained checkpoint with every shape and type
    equal refuses the other's session file and head plan."""
    twin = tmp_path / "twin.gguf"
    build_gguf(twin, "llama", "Q8_0", vocab=300, n_layers=2, dim=64, n_heads=4, n_kv_heads=2,
               context_length=512, seed=1)
    a, b = pylut.load(tiny, n_ctx=64), pylut.load(twin, n_ctx=64)
    assert a._fingerprint(shapes_only=True) == b._fingerprint(shapes_only=True)
    assert a._fingerprint() != b._fingerprint()
    assert a._fingerprint() == pylut.load(tiny, n_ctx=64, cache=False)._fingerprint()  # mapped or not
    a.eval([5, 6, 7])
    a.save_state(tmp_path / "a.bin")
    with pytest.raises(ValueError, match="another model"):
        b.load_state(tmp_path / "a.bin")
    with pytest.raises(ValueError, match="fingerprint"):
        pylut.load(twin, n_ctx=256, head_plan=plan_for(pylut.load(tiny, n_ctx=256), MIXED))


def test_plan_files_round_trip_and_refuse_another_model(tiny, needle, tmp_path):
    base = pylut.load(tiny, n_ctx=256)
    plan = plan_for(base, MIXED)
    plan.save(tmp_path / "p.json")
    loaded = HeadPlan.load(tmp_path / "p.json")
    assert loaded == plan and loaded.key() == plan.key()
    m = pylut.load(tiny, n_ctx=256, head_plan=tmp_path / "p.json")
    assert m.info()["head_plan"]["retrieval"] == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="another model"):
        pylut.load(needle, n_ctx=256, head_plan=plan)
    # a plan recording another fingerprint is refused
    d = plan.to_dict()
    d["model"]["fingerprint"] = "0" * 64
    (tmp_path / "fp.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="fingerprint"):
        pylut.load(tiny, n_ctx=256, head_plan=tmp_path / "fp.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a head plan"):
        HeadPlan.load(tmp_path / "bad.json")
    d = plan.to_dict()
    d["retrieval"] = [[0, 7], []]
    (tmp_path / "bad2.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="kv heads"):
        HeadPlan.load(tmp_path / "bad2.json")
    with pytest.raises(FileNotFoundError, match="head plan not found"):
        pylut.load(tiny, head_plan=tmp_path / "nope.json")
    with pytest.raises(ValueError, match="longer than sink"):
        pylut.calibrate_heads(base, text=list(range(5, 30)), window=64)
