"""Many conversations over one Model: the batched step (pylut_forward_multi) against each
sequence run alone (B = 1..8, prompt chunks mixed with decodes, every cache type, streaming
heads), sessions and their scheduler from several threads, Model.generate under concurrent
calls, n > 1 completions from one prompt evaluation, per-session state files and counters."""
import threading

import numpy as np
import pytest
from model_builder import build_gguf

import pylut
from pylut import HeadPlan, _core


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sessions-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("sessions") / "tiny.gguf"
    build_gguf(path, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, n_heads=4, n_kv_heads=2,
               context_length=256)
    return path


def run_in_threads(worker, n):
    """worker(0) .. worker(n - 1), each in its own thread, all started before any is joined."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


STREAMING = [[True, False], [False, True]]  # one streaming kv head per layer


def _states(m, n, kv_type, streaming, n_ctx=128, max_batch=16):
    extra = {}
    if streaming:
        extra = dict(streaming=np.array(STREAMING), sink=4, window=16)
    return [_core.Session(m.weights, n_ctx, max_batch, kv_type, batch_invariant=m.batch_invariant, **extra)
            for _ in range(n)]


def _schedule(rng, n_seq, steps=8):
    """Per sequence: a prompt cut into chunks (1..12 tokens), then decode tokens; per step,
    the (sequence, tokens) pairs that run, some sequences sitting steps out."""
    plans = []
    for _ in range(n_seq):
        prompt = [int(t) for t in rng.integers(0, 300, int(rng.integers(1, 30)))]
        chunks, at = [], 0
        while at < len(prompt):
            k = int(rng.integers(1, 13))
            chunks.append(prompt[at:at + k])
            at += k
        chunks += [[int(t)] for t in rng.integers(0, 300, steps)]
        plans.append(chunks)
    schedule = []
    while any(plans):
        step = [(i, p.pop(0)) for i, p in enumerate(plans) if p and rng.random() < 0.8]
        if step:
            schedule.append(step)
    return schedule


def _run_batched_and_alone(m, schedule, n_seq, kv_type, streaming):
    together, alone = _states(m, n_seq, kv_type, streaming), _states(m, n_seq, kv_type, streaming)
    work = _core.Session(m.weights, 1, 64, "f16", batch_invariant=m.batch_invariant)
    got, want = [], []
    for step in schedule:
        out = _core.forward_multi(work, [together[i] for i, _ in step], [t for _, t in step], m.pool)
        got += list(out)
        want += [alone[i].forward(t, m.pool) for i, t in step]
    assert [s.pos for s in together] == [s.pos for s in alone]
    return np.array(got), np.array(want), together, alone


@pytest.mark.parametrize("kv_type", ["f16", "q8", "q4"])
@pytest.mark.parametrize("streaming", [False, True])
def test_sequences_stepped_together_match_each_alone_bit_for_bit(tiny, kv_type, streaming):
    m = pylut.load(tiny, n_ctx=128, n_threads=2, batch_invariant=True)
    rng = np.random.default_rng(7)
    for n_seq in range(1, 9):
        schedule = _schedule(rng, n_seq)
        got, want, together, alone = _run_batched_and_alone(m, schedule, n_seq, kv_type, streaming)
        np.testing.assert_array_equal(got, want, err_msg=f"B={n_seq} kv={kv_type} streaming={streaming}")
        for a, b in zip(together, alone):  # and the caches hold the same rows
            for kv in (0, 1):
                for h in range(2):
                    used = a.head_used(1, h)
                    np.testing.assert_array_equal(a.head_kv(kv, 1, h)[:used], b.head_kv(kv, 1, h)[:used])


def test_without_batch_invariance_steps_stay_close(tiny):
    m = pylut.load(tiny, n_ctx=128, n_threads=2)
    schedule = _schedule(np.random.default_rng(3), 8)
    got, want, _, _ = _run_batched_and_alone(m, schedule, 8, "f16", False)
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - want) <= 0.05 * scale), np.abs(got - want).max()


def test_forward_multi_refuses_bad_steps(tiny):
    m = pylut.load(tiny, n_ctx=64)
    a, b = _states(m, 2, "f16", False, n_ctx=64, max_batch=8)
    work = _core.Session(m.weights, 1, 12, "f16")
    with pytest.raises(ValueError, match="twice"):
        _core.forward_multi(work, [a, a], [[1], [2]], m.pool)
    with pytest.raises(ValueError, match="max_batch"):
        _core.forward_multi(work, [a, b], [[1] * 9, [2]], m.pool)
    with pytest.raises(ValueError, match="workspace"):
        _core.forward_multi(work, [a, b], [[1] * 8, [2] * 8], m.pool)
    with pytest.raises(ValueError, match="token ids"):
        _core.forward_multi(work, [a, b], [[1], [300]], m.pool)
    with pytest.raises(ValueError, match="Model"):
        _core.forward_multi(work, [a, work], [[1], [2]], m.pool)
    assert a.pos == b.pos == 0  # nothing ran


def test_session_copy_takes_the_rows_and_position(tiny):
    m = pylut.load(tiny, n_ctx=64, batch_invariant=True)
    a, b = _states(m, 2, "q8", False, n_ctx=64)
    a.forward(list(range(1, 20)), m.pool)
    b.copy_from(a)
    assert b.pos == 19
    np.testing.assert_array_equal(a.forward([5], m.pool), b.forward([5], m.pool))
    (c,) = _states(m, 1, "f16", False, n_ctx=64)
    with pytest.raises(ValueError, match="cannot copy"):
        c.copy_from(a)


# ---------------------------------------------------------------- sessions and threads

PROMPTS = [[1 + i, 7, 3 * i % 290 + 2, 11, 5] + list(range(20, 20 + i)) for i in range(32)]


def _alone(m, prompt, i):
    return m.generate(prompt, max_tokens=12, temperature=0.0 if i % 2 else 0.9, seed=i, ignore_eos=True)


def test_four_threads_of_eight_generate_calls_give_what_each_gives_alone(tiny):
    m = pylut.load(tiny, n_ctx=128, n_threads=2, batch_invariant=True)
    want = [_alone(m, p, i) for i, p in enumerate(PROMPTS)]
    got = [None] * len(PROMPTS)
    errors = []
    start = threading.Barrier(4)

    def worker(w):
        try:
            start.wait()
            for i in range(w, len(PROMPTS), 4):
                got[i] = _alone(m, PROMPTS[i], i)
        except BaseException as e:  # reported below
            errors.append(e)
    run_in_threads(worker, 4)
    assert not errors, errors
    assert got == want
    info = m.scheduler.info()
    assert info["max_seqs"] >= 2, "the threads' steps were never batched"
    assert info["pending"] == 0 and info["steps"] < info["tokens"]
    assert m.kv_stats()["sessions"] == 1  # the temporary sessions are gone


def test_sessions_in_threads_batch_and_keep_their_own_conversations(tiny):
    m = pylut.load(tiny, n_ctx=128, n_threads=2, batch_invariant=True)
    want = []
    for i in range(4):
        s = m.session()
        first = s.generate(PROMPTS[i], max_tokens=8, temperature=0)
        want.append((first, s.generate(PROMPTS[i] + [9, 9], max_tokens=8, temperature=0)))
        s.close()
    sessions = [m.session() for _ in range(4)]
    got = [None] * 4

    def worker(i):
        s = sessions[i]
        first = s.generate(PROMPTS[i], max_tokens=8, temperature=0)
        got[i] = (first, s.generate(PROMPTS[i] + [9, 9], max_tokens=8, temperature=0))
    run_in_threads(worker, 4)
    assert got == want
    for i, s in enumerate(sessions):  # the second call reused the first prompt's cache
        assert s.stats["prompt_reused"] == len(PROMPTS[i]) and s.stats["prompt_processed"] == 2
        assert s.usage()["prompt_tokens_details"]["cached_tokens"] == len(PROMPTS[i])
    stats = m.kv_stats()
    assert stats["sessions"] == 5 and 0 < stats["kv_bytes_used"] < stats["kv_bytes_total"]
    for s in sessions:
        s.close()
    assert m.kv_stats()["sessions"] == 1
    with pytest.raises(ValueError, match="closed"):
        sessions[0].generate("x")


def test_a_stream_held_open_does_not_share_the_default_session(tiny):
    m = pylut.load(tiny, n_ctx=128, batch_invariant=True)
    want_a = m.generate(PROMPTS[1], max_tokens=10, temperature=0, ignore_eos=True)
    want_b = m.generate(PROMPTS[2], max_tokens=10, temperature=0, ignore_eos=True)
    stream = m.generate(PROMPTS[1], max_tokens=10, temperature=0, stream=True, ignore_eos=True)
    first = next(stream)
    assert m.generate(PROMPTS[2], max_tokens=10, temperature=0, ignore_eos=True) == want_b
    assert first + "".join(stream) == want_a
    assert not m._default_claimed  # the finished stream gave the default session back


def test_n_completions_share_one_prompt_evaluation(tiny, monkeypatch):
    m = pylut.load(tiny, n_ctx=128, batch_invariant=True)
    calls = []
    real = m.scheduler.forward
    monkeypatch.setattr(m.scheduler, "forward", lambda state, toks: calls.append(len(toks)) or real(state, toks))
    prompt = PROMPTS[5]
    hot = dict(temperature=50.0, top_k=0, min_p=0.0, top_p=1.0)  # the tiny model is sharply peaked
    r = m.create_completion(prompt, max_tokens=16, n=3, seed=11, ignore_eos=True, **hot)
    texts = [c["text"] for c in r["choices"]]
    assert [c["index"] for c in r["choices"]] == [0, 1, 2] and len(set(texts)) == 3
    assert [n for n in calls if n > 1] == [len(prompt)], "the prompt must run once"
    assert r["usage"]["completion_tokens"] == 48 and r["usage"]["prompt_tokens"] == len(prompt)
    # choice i is what a single completion with seed 11 + i gives
    for i, text in enumerate(texts):
        one = m.create_completion(prompt, max_tokens=16, seed=11 + i, ignore_eos=True, **hot)
        assert one["choices"][0]["text"] == text
    chunks = list(m.create_completion(prompt, max_tokens=4, n=2, seed=1, stream=True, **hot))
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    assert m.kv_stats()["sessions"] == 1


def test_session_state_files_and_overrides(tiny, tmp_path):
    m = pylut.load(tiny, n_ctx=128, batch_invariant=True)
    a = m.session(n_ctx=64, kv_type="q8")
    assert a.n_ctx == 64 and a.kv_type == "q8"
    text = a.generate(PROMPTS[3], max_tokens=6, temperature=0)
    a.save_state(tmp_path / "a.bin")
    b = m.session(n_ctx=64, kv_type="q8")
    b.load_state(tmp_path / "a.bin")
    assert b._cached == a._cached
    more = PROMPTS[3] + [4, 4]
    assert b.generate(more, max_tokens=6, temperature=0) == a.generate(more, max_tokens=6, temperature=0)
    assert b.stats["prompt_processed"] == a.stats["prompt_processed"] == 2
    with pytest.raises(ValueError, match="kv_type"):
        m.session(kv_type="q5")
    with pytest.raises(ValueError, match="n_ctx"):
        m.session(n_ctx=1000)
    with pytest.raises(ValueError, match="KV cache"):
        m.session().load_state(tmp_path / "a.bin")
    assert text
    b.reset()
    assert b.n_cached == 0 and b.state.pos == 0


def test_streaming_heads_sessions_batch_exactly(tiny):
    base = pylut.load(tiny, n_ctx=128)
    plan = HeadPlan(4, 16, [[h for h, s in enumerate(layer) if not s] for layer in STREAMING],
                    HeadPlan.identity(base))
    m = pylut.load(tiny, n_ctx=128, head_plan=plan, batch_invariant=True)
    long = [int(t) for t in np.random.default_rng(1).integers(0, 300, 90)]
    want = [m.generate(long[:60 + 10 * i], max_tokens=20, temperature=0, ignore_eos=True) for i in range(3)]
    got = [None] * 3

    def worker(i):
        got[i] = m.generate(long[:60 + 10 * i], max_tokens=20, temperature=0, ignore_eos=True)
    run_in_threads(worker, 3)
    assert got == want


def test_a_shared_prefix_is_copied_from_an_idle_session_and_only_the_suffix_runs(tiny):
    m = pylut.load(tiny, n_ctx=256, batch_invariant=True)
    fresh = pylut.load(tiny, n_ctx=256, batch_invariant=True)
    system = [int(t) for t in np.random.default_rng(4).integers(0, 300, 100)]
    sessions = []
    for i in range(8):
        s = m.session()
        prompt = system + [10 + i, 20 + i, 30]
        text = s.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True)
        assert text == fresh.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True)
        if i == 0:
            assert s.stats["prompt_processed"] == len(prompt)
        else:  # the system prompt's rows came from an earlier session
            assert s.stats["prompt_processed"] == 3 and s.stats["prompt_copied"] == 100
            assert s.usage()["prompt_tokens_details"]["cached_tokens"] == 100
        sessions.append(s)
    # a session that diverged after copying never changed the one it copied from
    first, rows = sessions[0], sessions[0].state.head_kv(0, 1, 0)[:106].copy()
    sessions[1].generate(system[:50] + [1, 2, 3], max_tokens=4, temperature=0)
    np.testing.assert_array_equal(first.state.head_kv(0, 1, 0)[:106], rows)
    for s in sessions:
        s.close()


def test_a_step_takes_decodes_first_then_prompt_chunks_within_the_budget():
    from types import SimpleNamespace

    from pylut.scheduler import Scheduler, _Request
    sched = Scheduler(SimpleNamespace(max_batch=64), step_tokens=16)
    state = SimpleNamespace(max_batch=12, pos=0, n_ctx=512)
    long_a, long_b = _Request(state, np.arange(40)), _Request(state, np.arange(30))
    decodes = [_Request(state, np.array([i])) for i in range(3)]
    sched._pending = [long_a, decodes[0], long_b, decodes[1], decodes[2]]
    step = sched._pick()
    # every decode, then the oldest prompt's chunk (its session's max_batch), then what is left
    assert [(r, n) for r, n in step] == [(decodes[0], 1), (decodes[1], 1), (decodes[2], 1), (long_a, 12),
                                         (long_b, 1)]
    long_a.done_tokens = 36
    sched._pending = [long_a, long_b]
    assert [(r, n) for r, n in sched._pick()] == [(long_a, 4), (long_b, 12)]
