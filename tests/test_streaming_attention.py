"""Streaming heads (DuoAttention / RazorAttention) in the tiled attention kernel against a
float64 numpy reference: a streaming kv head's query at position p attends to positions
[0, sink) and (p - window, p] only, handed to the kernel compacted as a session keeps it
(sinks, then the rows from stream_base on; the rows between are not passed at all). Mixed
full / streaming heads, every ISA this machine runs, GQA ratios, f16 / int8 / 4-bit caches,
decode (cache slices for the full heads) and prefill with chunks shorter and longer than the
window, 1-3 threads."""
import numpy as np
import pytest

from pylut import _core


ISAS = _core.isa_supported()


pytestmark = pytest.mark.usefixtures("restore_isa")  # conftest.py


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_type", ["f16", "q4"])
def test_every_isa(isa, kv_type):
    _core.isa_set(isa)
    run_case(kv_type, 1, 700, 8, 2, 64, [True, False], 4, 32, 2, 3)
    run_case(kv_type, 40, 300, 9, 3, 80, [True, False, True], 4, 16, 2, 4)


def reference(q, kf, vf, n_heads, pos0, streaming, sink, window):
    n_kv, length, hd = kf.shape
    g = n_heads // n_kv
    out = np.zeros(q.shape, np.float64)
    for t in range(q.shape[0]):
        p = pos0 + t
        pos = np.arange(p + 1)
        for h in range(n_heads):
            seen = pos if not streaming[h // g] else pos[(pos < sink) | (pos > p - window)]
            s = kf[h // g, seen].astype(np.float64) @ q[t, h * hd:(h + 1) * hd].astype(np.float64) / np.sqrt(hd)
            e = np.exp(s - s.max())
            out[t, h * hd:(h + 1) * hd] = (e / e.sum()) @ vf[h // g, seen].astype(np.float64)
    return out


def run_case(kv_type, n, length, n_heads, n_kv, hd, streaming, sink, window, threads, seed, stream_base=None):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    k = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    v = _core.kv_encode(rng.standard_normal((n_kv, length, hd)).astype(np.float32), kv_type)
    kf, vf = _core.kv_decode(k, kv_type, hd), _core.kv_decode(v, kv_type, hd)
    pos0 = length - n
    if stream_base is None:  # the most a session may have compacted away before this chunk
        stream_base = max(sink, min(pos0 - window + 1, pos0))
    out = _core.attention(q, k, v, n_heads, n_kv, kv_type, pool=_core.ThreadPool(threads),
                          streaming=streaming, sink=sink, window=window, stream_base=stream_base)
    ref = reference(q, kf, vf, n_heads, pos0, streaming, sink, window)
    tol = 2e-5 * np.abs(vf).max() * max(1.0, np.log2(length))
    err = np.abs(out - ref).max()
    assert err <= tol, (err, tol)
    return out


@pytest.mark.parametrize("kv_type", ["f16", "q8", "q4"])
@pytest.mark.parametrize("n_heads,n_kv,hd", [(4, 4, 64), (8, 2, 64), (9, 3, 80), (8, 1, 128), (16, 2, 64)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decode_mixed_heads(kv_type, n_heads, n_kv, hd, threads):
    streaming = [h % 2 == 0 for h in range(n_kv)]  # head 0 streams; with n_kv == 1 every head does
    run_case(kv_type, 1, 1500, n_heads, n_kv, hd, streaming, 4, 64, threads, n_heads * 7 + n_kv + threads)


@pytest.mark.parametrize("kv_type", ["f16", "q4"])
@pytest.mark.parametrize("n,length,window", [(5, 5, 3), (40, 300, 16), (130, 200, 64), (70, 900, 100),
                                             (33, 1000, 256), (200, 200, 7)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prefill_chunks_shorter_and_longer_than_the_window(kv_type, n, length, window, threads):
    run_case(kv_type, n, length, 8, 2, 64, [True, False], 4, window, threads, n + length + window)


@pytest.mark.parametrize("kv_type", ["f16", "q8"])
@pytest.mark.parametrize("n_heads,n_kv,hd", [(9, 3, 64), (10, 2, 128), (14, 2, 80), (4, 4, 100)])
def test_prefill_gqa_ratios_and_head_sizes(kv_type, n_heads, n_kv, hd):
    """Groups of 3, 5, 7 query heads: the fp16 path's spare fourth row of a token's rows."""
    streaming = [h % 2 == 0 for h in range(n_kv)]
    run_case(kv_type, 90, 400, n_heads, n_kv, hd, streaming, 4, 24, 2, n_heads + hd)


@pytest.mark.parametrize("sink", [0, 1, 4, 20])
def test_sink_counts_and_all_heads_streaming(sink):
    run_case("f16", 50, 400, 6, 3, 64, [True, True, True], sink, 32, 2, sink)
    run_case("q8", 1, 400, 6, 3, 64, [True, True, True], sink, 32, 2, sink + 1)


def test_rows_the_stream_dropped_are_never_read():
    """Passing garbage where the window does not reach changes nothing: the kernel reads the
    compacted rows only (and with stream_base = sink the same rows are merely masked)."""
    a = run_case("f16", 10, 600, 8, 2, 64, [True, True], 4, 50, 2, 11)
    b = run_case("f16", 10, 600, 8, 2, 64, [True, True], 4, 50, 2, 11, stream_base=4)
    assert np.abs(a - b).max() <= 1e-5


def test_no_streaming_head_is_the_plain_path():
    """Per-head jobs whose heads are all full give exactly the plain job's output."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((3, 8 * 64)).astype(np.float32)
    k = _core.kv_encode(rng.standard_normal((2, 700, 64)).astype(np.float32), "f16")
    v = _core.kv_encode(rng.standard_normal((2, 700, 64)).astype(np.float32), "f16")
    plain = _core.attention(q, k, v, 8, 2, "f16", pool=_core.ThreadPool(2))
    heads = _core.attention(q, k, v, 8, 2, "f16", pool=_core.ThreadPool(2), streaming=[False, False],
                            sink=4, window=16)
    assert np.array_equal(plain, heads)


def test_bad_streaming_arguments_are_refused():
    k = _core.kv_encode(np.zeros((2, 100, 64), np.float32), "f16")
    q = np.zeros((1, 4 * 64), np.float32)
    with pytest.raises(ValueError, match="flags"):
        _core.attention(q, k, k, 4, 2, streaming=[True], sink=4, window=8)
    with pytest.raises(ValueError, match="window"):
        _core.attention(q, k, k, 4, 2, streaming=[True, False], sink=4, window=0)
    with pytest.raises(ValueError):  # the query's own position was compacted away: the C check
        _core.attention(q, k, k, 4, 2, streaming=[True, False], sink=4, window=8, stream_base=100)
