# _bpe.pxi - part of _core.pyx: the tokenizer's BPE merge loop in C (src/text/bpe_merge.c).
from libc.stdint cimport int32_t, uint64_t


def bpe_table(left, right, rank, merged):
    """(keys uint64[cap], vals int32[2 * cap]): the pair table of src/text/bpe_merge.c for
    the pairs (left[k], right[k]) -> (rank[k], merged[k]); a pair listed twice keeps its
    first entry."""
    cdef const int32_t[::1] lv = np.ascontiguousarray(left, np.int32)
    cdef const int32_t[::1] rv = np.ascontiguousarray(right, np.int32)
    cdef const int32_t[::1] kv = np.ascontiguousarray(rank, np.int32)
    cdef const int32_t[::1] mv = np.ascontiguousarray(merged, np.int32)
    cdef int64_t m = lv.shape[0]
    if not (rv.shape[0] == kv.shape[0] == mv.shape[0] == m):
        raise ValueError("bpe_table: left, right, rank and merged differ in length")
    cdef int64_t cap = 16
    while cap < 2 * m:
        cap *= 2
    keys = np.full(cap, np.iinfo(np.uint64).max, np.uint64)
    vals = np.zeros(2 * cap, np.int32)
    cdef uint64_t[::1] keyv = keys
    cdef int32_t[::1] valv = vals
    cdef int rc
    with nogil:
        rc = pylut_bpe_table_build(&lv[0] if m else NULL, &rv[0] if m else NULL,
                                   &kv[0] if m else NULL, &mv[0] if m else NULL, m,
                                   &keyv[0], &valv[0], cap)
    _check(rc, "bpe_table")
    return keys, vals


def bpe_merge(syms, keys, vals):
    """The symbol ids left after merging int32 `syms` with the pair table (keys, vals) of
    bpe_table: lowest rank first, ties leftmost first. GIL released."""
    out = np.array(syms, np.int32)
    cdef int32_t[::1] sv = out
    cdef const uint64_t[::1] keyv = keys
    cdef const int32_t[::1] valv = vals
    cdef int64_t n = sv.shape[0], cap = keyv.shape[0]
    if valv.shape[0] != 2 * cap or cap == 0 or (cap & (cap - 1)):
        raise ValueError("bpe_merge: not a table made by bpe_table")
    if n < 2:
        return out
    cdef int64_t r
    with nogil:
        r = pylut_bpe_merge(&sv[0], n, &keyv[0], &valv[0], cap)
    if r < 0:
        _check(<int>r, "bpe_merge")
    return out[:r]
