# _attention.pxi - attention over the KV cache and the cache's row codecs (f16, q8, q4):
# included by _core.pyx, whose imports, declarations and helpers it uses.

# ---------------------------------------------------------------- attention and the KV codec

def attention_f16(q, k, v, float scale):
    """One head's attention over an fp16 cache: q float32 [hd]; k, v float16 [len, hd]."""
    q = _array(q, np.float32, 1, "q")
    k = _array(k, np.float16, 2, "k")
    v = _array(v, np.float16, 2, "v")
    if k.shape != v.shape or k.shape[1] != q.shape[0] or k.shape[0] < 1:
        raise ValueError(f"k and v must be [len >= 1, {q.shape[0]}], got {k.shape} and {v.shape}")
    out = np.empty(q.shape[0], np.float32)
    scores = np.empty(k.shape[0], np.float32)
    cdef const float[::1] qv = q
    cdef const uint16_t[:, ::1] kv = k.view(np.uint16)
    cdef const uint16_t[:, ::1] vv = v.view(np.uint16)
    cdef float[::1] ov = out
    cdef float[::1] sv = scores
    cdef int rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_attention_f16(&qv[0], &kv[0, 0], &vv[0, 0], kv.shape[1], kv.shape[0], kv.shape[1],
                                 scale, &ov[0], &sv[0])
    _check(rc, "attention_f16")
    return out


KV_TYPES = {"f16": PYLUT_KV_F16, "q8": PYLUT_KV_Q8, "q4": PYLUT_KV_Q4}


def _kv_code(kv_type):
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
    return KV_TYPES[kv_type]


def kv_row_bytes(kv_type, int hd):
    """Bytes of one cached head vector of hd elements in this cache type."""
    cdef int64_t rb = pylut_kv_row_bytes(_kv_code(kv_type), hd)
    if rb == 0:
        raise ValueError(f"head size must be even and in [2, 512], got {hd}")
    return int(rb)


def kv_encode(x, kv_type):
    """float32 [..., hd] -> the cache's encoded rows, uint8 [..., kv_row_bytes]."""
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim < 1:
        raise ValueError("x must have a last axis of head size")
    cdef int code = _kv_code(kv_type), hd = x.shape[-1]
    cdef int64_t rb = kv_row_bytes(kv_type, hd), n = x.size // hd, i
    flat = x.reshape(n, hd)
    out = np.empty((n, rb), np.uint8)
    cdef const float[:, ::1] xv = flat
    cdef uint8_t[:, ::1] ov = out
    with nogil:
        for i in range(n):
            pylut_kv_encode(code, hd, &xv[i, 0], &ov[i, 0])
    return out.reshape(x.shape[:-1] + (rb,))


def kv_decode(rows, kv_type, int hd):
    """Encoded rows uint8 [..., kv_row_bytes] -> float32 [..., hd]."""
    rows = np.ascontiguousarray(rows, np.uint8)
    cdef int code = _kv_code(kv_type)
    cdef int64_t rb = kv_row_bytes(kv_type, hd), n, i
    if rows.ndim < 1 or rows.shape[-1] != rb:
        raise ValueError(f"rows must have a last axis of {rb} bytes for {kv_type} head size {hd}")
    n = rows.size // rb
    out = np.empty((n, hd), np.float32)
    cdef const uint8_t[:, ::1] rv = rows.reshape(n, rb)
    cdef float[:, ::1] ov = out
    with nogil:
        for i in range(n):
            pylut_kv_decode(code, hd, &rv[i, 0], &ov[i, 0])
    return out.reshape(rows.shape[:-1] + (hd,))


def attention(q, k, v, int n_heads, int n_kv_heads, kv_type="f16", pos0=None, scale=None,
              ThreadPool pool=None, streaming=None, int sink=0, int window=0, stream_base=None,
              int swa=0, float softcap=0.0, int block_len=0, seed=0):
    """Causal attention of n query tokens over an encoded cache (the tiled kernel).

    q: float32 [n, n_heads * hd]; k, v: uint8 [n_kv_heads, len, kv_row_bytes] (kv_encode's
    rows, each head's positions contiguous); query t sits at position pos0 + t (default len - n) and sees positions 0..pos0+t.
    streaming: n_kv_heads flags; a streaming head sees only positions [0, sink) and the
    `window` most recent ones, and is handed to the kernel compacted as a model session keeps
    it: its sink rows, then rows stream_base (default sink) .. len-1 (the rows between are
    not passed at all). swa > 0: a sliding-window layer, query at p sees only (p - swa, p];
    softcap > 0: each score s becomes softcap * tanh(s / softcap) (Gemma 2).
    block_len > 0: the full heads' rows are handed over paged, as a session's block table
    holds them: blocks of block_len positions ([2][n_kv_heads][block_len][rb]) in an order
    shuffled by seed, with spare blocks of noise between them.
    Returns float32 [n, n_heads * hd]."""
    q = _array(q, np.float32, 2, "q")
    k = _array(k, np.uint8, 3, "k")
    v = _array(v, np.uint8, 3, "v")
    if n_heads < 1 or n_kv_heads < 1 or q.shape[1] % n_heads:
        raise ValueError(f"q has {q.shape[1]} columns: not a multiple of n_heads={n_heads}")
    cdef int hd = q.shape[1] // n_heads, code = _kv_code(kv_type)
    cdef int64_t rb = kv_row_bytes(kv_type, hd)
    if k.shape != v.shape or k.shape[0] != n_kv_heads or k.shape[2] != rb or k.shape[1] < 1:
        raise ValueError(f"k and v must be [{n_kv_heads}, len >= 1, {rb}], got {k.shape} and {v.shape}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    p0 = k.shape[1] - q.shape[0] if pos0 is None else int(pos0)
    if p0 < 0 or p0 + q.shape[0] > k.shape[1]:
        raise ValueError(f"{q.shape[0]} queries from position {p0} run past the {k.shape[1]} cached positions")
    if pool is None:
        pool = ThreadPool(1)
    out = np.empty_like(q)
    cdef const float[:, ::1] qv = q
    cdef const uint8_t[:, :, ::1] kv = k
    cdef const uint8_t[:, :, ::1] vv = v
    cdef float[:, ::1] ov = out
    cdef pylut_attn_job job
    memset(&job, 0, sizeof(job))
    job.type, job.hd, job.n_heads, job.n_kv_heads = code, hd, n_heads, n_kv_heads
    job.k, job.v, job.ld, job.hstride, job.len = &kv[0, 0, 0], &vv[0, 0, 0], rb, k.shape[1] * rb, k.shape[1]
    job.q, job.ldq, job.out, job.ldo = &qv[0, 0], q.shape[1], &ov[0, 0], q.shape[1]
    job.n, job.pos0 = q.shape[0], p0
    job.scale = (1.0 / np.sqrt(hd)) if scale is None else float(scale)
    job.swa, job.softcap = swa, softcap
    cdef pylut_attn_head *heads = NULL
    cdef const uint8_t[:, ::1] hk
    cdef const uint8_t[:, ::1] hv
    keep = []
    if streaming is not None:
        flags = [bool(f) for f in streaming]
        if len(flags) != n_kv_heads:
            raise ValueError(f"streaming needs {n_kv_heads} flags, got {len(flags)}")
        base = sink if stream_base is None else int(stream_base)
        if sink < 0 or window < 1 or base < sink or base > max(sink, k.shape[1]):
            raise ValueError(f"need sink >= 0, window >= 1 and sink <= stream_base <= len "
                             f"(got {sink}, {window}, {base})")
        heads = <pylut_attn_head *>malloc(n_kv_heads * sizeof(pylut_attn_head))
        if heads == NULL:
            raise MemoryError()
        for h in range(n_kv_heads):
            if flags[h]:  # what a session keeps of a streaming head: sinks, then from stream_base
                hk_arr = np.ascontiguousarray(np.concatenate([k[h, :sink], k[h, base:]]))
                hv_arr = np.ascontiguousarray(np.concatenate([v[h, :sink], v[h, base:]]))
            else:
                hk_arr, hv_arr = k[h], v[h]
            keep += [hk_arr, hv_arr]
            hk, hv = hk_arr, hv_arr
            heads[h].k, heads[h].v, heads[h].cap, heads[h].streaming = &hk[0, 0], &hv[0, 0], hk_arr.shape[0], flags[h]
        job.heads, job.sink, job.window, job.stream_base = heads, sink, window, base
    cdef const uint8_t[:, ::1] pages_view
    cdef const int64_t[::1] offs
    cdef const uintptr_t[::1] table_view
    if block_len < 0:
        raise ValueError(f"block_len must be >= 0, got {block_len}")
    if block_len:
        n_blk = -(-k.shape[1] // block_len)
        rng = np.random.default_rng(seed)
        where = rng.permutation(2 * n_blk)[:n_blk]  # block i sits at slot where[i] of twice as many
        pages = rng.integers(0, 256, (2 * n_blk, 2, n_kv_heads, block_len, rb), dtype=np.uint8)
        for i in range(n_blk):
            a, b = i * block_len, min((i + 1) * block_len, k.shape[1])
            pages[where[i], 0, :, :b - a] = k[:, a:b]
            pages[where[i], 1, :, :b - a] = v[:, a:b]
        pages_view = pages.reshape(2 * n_blk, -1)
        table = np.array([<uintptr_t>&pages_view[where[i], 0] for i in range(n_blk)], dtype=np.uintp)
        off = np.concatenate([np.arange(n_kv_heads), n_kv_heads + np.arange(n_kv_heads)]).astype(np.int64) \
            * block_len * rb
        keep += [pages, table, off]
        offs, table_view = off, table
        job.k = job.v = NULL
        job.blocks, job.block_len = <const uint8_t *const *>&table_view[0], block_len
        job.block_bytes, job.k_off, job.v_off = pages_view.shape[1], &offs[0], &offs[n_kv_heads]
    cdef int rc = PYLUT_EINVAL
    try:
        with pool.lock:
            with nogil:
                rc = pylut_attention(pool.pool, &job)
    finally:
        free(heads)
    _check(rc, "attention")
    return out
