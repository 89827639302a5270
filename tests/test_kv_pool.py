"""The paged KV cache: blocks from a per-model pool, allocated as positions are written,
shared by reference between sessions holding the same prompt prefix and copied before a
write (a session that diverges, shifts or truncates never changes another's cache), counted
once in the pool's counters, given back when sessions close; exhausted pools fail clearly."""
import gc

import numpy as np
import pytest
from model_builder import build_gguf

import pylut
from pylut import HeadPlan, _core

SYSTEM = 1000  # tokens of the shared system prompt


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kv-pool-cache"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("kv_pool") / "tiny.gguf"
    build_gguf(path, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, n_heads=4, n_kv_heads=2,
               context_length=2048)
    return path


def _tokens(seed, n):
    return [int(t) for t in np.random.default_rng(seed).integers(0, 300, n)]


def _greedy(session, prompt, n=4):
    """Logits after prompt, then n greedy decode steps' logits."""
    out = [session.eval(prompt)]
    for _ in range(n):
        out.append(session.step(int(np.argmax(out[-1]))))
    return np.array(out)


def test_eight_sessions_share_a_system_prompt_by_reference(tiny):
    m = pylut.load(tiny, n_ctx=1100, batch_invariant=True)
    pool = m.kv_pool()
    system = _tokens(1, SYSTEM)
    suffixes = [_tokens(100 + i, 20 + 3 * i) for i in range(8)]
    before = pool.blocks_used  # the default session holds nothing until it runs
    sessions, got = [], []
    for i, suffix in enumerate(suffixes):
        s = m.session()
        got.append(_greedy(s, system + suffix))
        if i == 0:
            one = pool.bytes_used - before * pool.block_bytes  # one session: its prompt and decodes
            assert s.stats["prompt_processed"] == SYSTEM + len(suffix)
        else:  # the system prompt's blocks are referenced, only the suffix runs
            assert s.stats["prompt_processed"] == len(suffix)
            assert s.usage()["prompt_tokens_details"]["cached_tokens"] == SYSTEM
        sessions.append(s)
    held = pool.bytes_used - before * pool.block_bytes
    per_token = pool.block_bytes // pool.block_len
    own = sum(len(x) + 4 for x in suffixes) * per_token  # each session's suffix and decodes
    assert held <= 1.25 * one + own, (held, one, own)
    assert held < 2 * one  # eight copies would be 8x
    stats = m.kv_stats()
    assert stats["blocks_used"] == pool.blocks_used and stats["kv_bytes_held"] == pool.bytes_used
    # each output equals the same session run alone, in a model with no other session: bit
    # for bit, given the same chunks (the alone run evaluates the system prompt first, as the
    # first session did for the others; a different chunking moves attention's rounding)
    for i, (suffix, g) in enumerate(zip(suffixes, got)):
        alone = pylut.load(tiny, n_ctx=1100, batch_invariant=True).session()
        if i:
            alone.eval(system)
        np.testing.assert_array_equal(g, _greedy(alone, system + suffix))
        alone.close()
    for s in sessions:
        s.close()
    gc.collect()
    # the prefix cache keeps a few closed sessions' blocks (the shared system prompt's once)
    assert 0 < len(m.prefix_cache) <= m.prefix_cache.capacity
    assert pool.blocks_used <= before + (SYSTEM + 41 + 4) // pool.block_len + 1 + 4 * 4
    m.prefix_cache.clear()
    gc.collect()
    assert pool.blocks_used == before  # every block went back
    assert m.kv_stats()["blocks_used"] == before


def test_a_closed_sessions_prefix_serves_a_later_prompt(tiny):
    m = pylut.load(tiny, n_ctx=512, batch_invariant=True)
    system = _tokens(11, 200)
    a = m.session()
    first = _greedy(a, system + [1, 2, 3])
    a.close()
    assert len(m.prefix_cache) == 1
    b = m.session()
    again = _greedy(b, system + [1, 2, 3])
    assert b.stats["prompt_processed"] == 1  # all but the last prompt token came from the cache
    np.testing.assert_array_equal(again[1:], first[1:])
    b.close()  # b's entry replaces a's (it holds a's tokens and more)
    assert len(m.prefix_cache) == 1
    c = m.session()
    c.eval(system[:100] + [4])  # a shorter shared prefix, inside a block: taken up to its token
    assert c.stats["prompt_processed"] == 1 and m.prefix_cache.info()["hits"] == 2
    d = m.session()
    d.eval(_tokens(12, 40))  # nothing in common
    assert d.stats["prompt_processed"] == 40
    for s in (c, d):
        s.close()
    m.prefix_cache.clear()
    pool = m.kv_pool()
    pool.max_blocks = pool.blocks_used + 40
    e = m.session()
    e.eval(system + [9])
    e.close()  # kept: its blocks count against the pool
    f = m.session()
    f.eval(_tokens(13, 500))  # 32 blocks: only with the kept ones given up
    assert len(m.prefix_cache) == 0
    f.close()


def test_a_diverging_session_never_changes_the_one_it_shares_with(tiny):
    m = pylut.load(tiny, n_ctx=256, batch_invariant=True)
    prompt = _tokens(2, 70)  # 4 full blocks and a partial one
    a, b = m.session(), m.session()
    a.eval(prompt)
    keys = [a.state.head_kv(kv, l, h, 70) for kv in (0, 1) for l in range(2) for h in range(2)]
    used = m.kv_pool().blocks_used
    b.eval(prompt + [7, 8])  # shares a's blocks; writes into a copy of the partial one
    assert b.stats["prompt_processed"] == 2 and m.kv_pool().blocks_used == used + 1
    want = a.state.forward([5], m.pool)
    a.state.truncate(70)
    # b truncates inside a shared block and rewrites it, then shifts its context
    b.eval(prompt[:37] + _tokens(3, 40))
    b.state.shift(4, 20)
    b.step(9)

    def same():
        for i, (kv, l, h) in enumerate((kv, l, h) for kv in (0, 1) for l in range(2) for h in range(2)):
            np.testing.assert_array_equal(a.state.head_kv(kv, l, h, 70), keys[i])
    same()
    np.testing.assert_array_equal(a.state.forward([5], m.pool), want)
    a.state.truncate(70)
    # and the other way: a shifts and rewrites while c holds its prefix
    c = m.session()
    c.eval(prompt + [1])
    c_rows = c.state.head_kv(0, 1, 1, 71)
    a.state.shift(4, 30)
    a.eval(_tokens(5, 60))
    np.testing.assert_array_equal(c.state.head_kv(0, 1, 1, 71), c_rows)
    for s in (a, b, c):
        s.close()


def test_streaming_heads_sessions_share_full_heads_and_keep_their_own_streams(tiny):
    base = pylut.load(tiny, n_ctx=256)
    plan = HeadPlan(4, 16, [[1], [0]], HeadPlan.identity(base))  # one streaming kv head per layer
    m = pylut.load(tiny, n_ctx=256, head_plan=plan, batch_invariant=True)
    fresh = pylut.load(tiny, n_ctx=256, head_plan=plan, batch_invariant=True)
    system = _tokens(6, 90)
    sessions = []
    for i in range(3):
        s = m.session()
        prompt = system + [11 + i, 12]
        np.testing.assert_array_equal(_greedy(s, prompt), _greedy(fresh.session(), prompt))
        if i:
            assert s.stats["prompt_processed"] == 2
        sessions.append(s)
    # full heads' blocks of the shared 90 positions are held once
    blocks = -(-92 // 16)
    assert m.kv_pool().blocks_used <= blocks + 2 * 2
    streams = sessions[0].state.stream_bytes  # each session's own, the default session's too
    assert streams > 0 and m.kv_stats()["kv_bytes_held"] == m.kv_pool().bytes_used + 4 * streams
    for s in sessions:
        s.close()


def test_an_exhausted_pool_fails_clearly_and_recovers(tiny):
    m = pylut.load(tiny, n_ctx=256)
    pool = m.kv_pool()
    s = m.session()
    pool.max_blocks = pool.blocks_used + 3  # 48 positions
    with pytest.raises(MemoryError, match="KV block pool is exhausted"):
        s.eval(_tokens(7, 100))
    pool.max_blocks = 1 << 20
    s.reset()
    assert s.eval(_tokens(7, 100)).shape == (300,)
    with pytest.raises(ValueError, match="max_blocks"):
        pool.max_blocks = 0
    s.close()


def test_blocks_come_as_positions_are_written(tiny):
    m = pylut.load(tiny, n_ctx=1024)
    pool = m.kv_pool()
    s = m.session()
    assert s.state.blocks_held == 0 and s.state.kv_bytes == pool.block_bytes * 1024 // pool.block_len
    s.eval(_tokens(8, 33))
    assert s.state.blocks_held == 3  # 33 positions: 16 + 16 + 1
    s.reset()
    assert s.state.blocks_held == 0
    s.close()


def test_session_files_round_trip_through_blocks(tiny, tmp_path):
    m = pylut.load(tiny, n_ctx=256, batch_invariant=True)
    a = m.session()
    prompt = _tokens(9, 50)
    a.eval(prompt)
    want = a.state.forward([3], m.pool)
    a.state.truncate(50)
    a.save_state(tmp_path / "a.session")
    b = m.session()
    b.eval(prompt[:20])  # blocks of its own, to be replaced
    b.load_state(tmp_path / "a.session")
    np.testing.assert_array_equal(b.state.forward([3], m.pool), want)
    for s in (a, b):
        s.close()


@pytest.mark.usefixtures("restore_isa")  # conftest.py
def test_paged_attention_agrees_on_every_isa(tiny):
    """Every ISA's attention kernel through the block-table driver (runs per block, merged by
    the running max/sum): a q4 and an f16 cache, prompt (many queries, causal) and decodes."""
    m = pylut.load(tiny, n_ctx=128, batch_invariant=True)
    prompt = _tokens(10, 45)
    for kv_type in ("f16", "q4"):
        outs = []
        for isa in _core.isa_supported():
            _core.isa_set(isa)
            s = m.session(kv_type=kv_type)
            outs.append(_greedy(s, prompt, n=3))
            s.close()
        for o in outs[1:]:
            np.testing.assert_allclose(o, outs[0], rtol=0, atol=1e-2 * np.abs(outs[0]).max())


def test_a_copy_into_a_full_pool_fails_and_leaves_an_empty_session(tiny):
    m = pylut.load(tiny, n_ctx=256)
    src = _core.Session(m.weights, 256, 16, "f16")  # a private pool: copying means rows
    src.forward(_tokens(14, 100), m.pool)
    pool = _core.KVPool(m.weights, "f16", max_blocks=3)
    dst = _core.Session(m.weights, 256, 16, "f16", pool=pool)
    dst.forward([5, 6], m.pool)
    with pytest.raises(MemoryError, match="exhausted"):
        dst.copy_from(src)  # 7 blocks into a pool of 3
    assert dst.pos == 0 and pool.blocks_used == 0
    dst.forward([1, 2, 3], m.pool)  # still usable
    assert dst.pos == 3 and pool.blocks_used == 1
    with pytest.raises(ValueError, match="kv type"):
        _core.Session(m.weights, 256, 16, "q8", pool=pool)


def _runs(ids):
    """Runs of consecutive ids (1: the blocks are one stream per head)."""
    return 1 + int(np.count_nonzero(np.diff(ids) != 1)) if len(ids) else 0


def test_a_sessions_blocks_are_one_run_of_ids_per_head_stream(tiny):
    """The pool keeps each head's rows of neighbouring block ids side by side, so a session
    whose blocks have consecutive ids reads each head as one stream (what the hardware
    prefetcher follows at long contexts). A prompt and its decodes draw consecutive ids; a
    session sharing a prefix starts one run of its own after the shared blocks; two
    sessions decoding side by side do not interleave their ids (a lowest-free-first pool
    would alternate them block by block); the memory goes back when the blocks do."""
    m = pylut.load(tiny, n_ctx=2048)
    pool = m.kv_pool()
    assert pool.bytes_reserved == 0
    a = m.session()
    prompt = _tokens(20, 500)
    _greedy(a, prompt, n=40)
    ids_a = a.state.block_ids()
    assert len(ids_a) == a.state.blocks_held == -(-a.state.pos // pool.block_len)
    assert _runs(ids_a) == 1
    b = m.session()
    b.eval(prompt[:320] + _tokens(21, 200))  # 320 positions: 20 whole blocks to share
    assert b.usage()["prompt_tokens_details"]["cached_tokens"] == 320
    ids_b = b.state.block_ids()
    np.testing.assert_array_equal(ids_b[:20], ids_a[:20])
    assert _runs(ids_b[20:]) == 1 and not set(ids_b[20:]) & set(ids_a)
    c, d = m.session(), m.session()
    toks = [int(np.argmax(c.eval(_tokens(22, 100)))), int(np.argmax(d.eval(_tokens(23, 100))))]
    for _ in range(300):  # one token each in turn: both grow a block every 16 steps
        toks = [int(np.argmax(c.step(toks[0]))), int(np.argmax(d.step(toks[1])))]
    ids_c, ids_d = c.state.block_ids(), d.state.block_ids()
    assert len(ids_c) == len(ids_d) == 25
    assert _runs(ids_c) <= 2 and _runs(ids_d) <= 2, (ids_c, ids_d)
    held = {int(i) for s in (a, b, c, d) for i in s.state.block_ids()}
    assert len(held) == pool.blocks_used
    chunk = pool.chunk_blocks * pool.block_bytes
    assert 0 < pool.bytes_reserved <= chunk * (max(held) // pool.chunk_blocks + 1)
    for s in (a, b, c, d):
        s.close()
    m.prefix_cache.clear()
    gc.collect()
    assert pool.blocks_used == 0 and pool.bytes_reserved == 0
