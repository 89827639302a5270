# _vecops.pxi - the forward pass's element-wise kernels (RMSNorm, gated activations, residual
# add, RoPE) on the active ISA, for tests: included by _core.pyx, whose imports, declarations
# and helpers it uses. Each returns a new array; the inputs are not changed.

GATE_ACTS = {"silu": PYLUT_GATE_SILU, "relu2": PYLUT_GATE_RELU2, "gelu_tanh": PYLUT_GATE_GELU_TANH}


def _same_size(a, b, an, bn):
    if a.shape[0] != b.shape[0] or a.shape[0] < 1:
        raise ValueError(f"{an} and {bn} must have the same length >= 1, got {a.shape[0]} and {b.shape[0]}")


def vec_rmsnorm(x, w, float eps):
    """x * (1 / sqrt(mean(x^2) + eps)) * w, float32 [n] (the mean taken in double)."""
    x = _array(x, np.float32, 1, "x")
    w = _array(w, np.float32, 1, "w")
    _same_size(x, w, "x", "w")
    out = np.empty_like(x)
    cdef const float[::1] xv = x
    cdef const float[::1] wv = w
    cdef float[::1] ov = out
    cdef int rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_vec_rmsnorm(&ov[0], &xv[0], &wv[0], xv.shape[0], eps)
    _check(rc, "vec_rmsnorm")
    return out


def vec_gate(act, g, u):
    """act(g) * u, float32 [n]; act one of GATE_ACTS (SiLU, ReLU^2, GELU's tanh form)."""
    if act not in GATE_ACTS:
        raise ValueError(f"act must be one of {sorted(GATE_ACTS)}, got {act!r}")
    g = _array(g, np.float32, 1, "g")
    u = _array(u, np.float32, 1, "u")
    _same_size(g, u, "g", "u")
    out = g.copy()
    cdef float[::1] ov = out
    cdef const float[::1] uv = u
    cdef int code = GATE_ACTS[act], rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_vec_gate(code, &ov[0], &uv[0], ov.shape[0])
    _check(rc, "vec_gate")
    return out


def vec_add(x, y):
    """x + y, float32 [n], with the residual stream's kernel."""
    x = _array(x, np.float32, 1, "x")
    y = _array(y, np.float32, 1, "y")
    _same_size(x, y, "x", "y")
    out = x.copy()
    cdef float[::1] ov = out
    cdef const float[::1] yv = y
    cdef int rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_vec_add(&ov[0], &yv[0], ov.shape[0])
    _check(rc, "vec_add")
    return out


def vec_rope(v, int n_rot, int pos, inv_freq, float scale=1.0, bint neox=False):
    """v float32 [hd] with its first n_rot dims rotated for position pos: pairs (2i, 2i+1), or
    (i, i + n_rot/2) with neox; angles float32(pos) * inv_freq[i] (float32 [n_rot/2]), cos and
    sin times scale. Dims past n_rot pass through."""
    v = _array(v, np.float32, 1, "v")
    inv_freq = _array(inv_freq, np.float32, 1, "inv_freq")
    if n_rot < 2 or n_rot % 2 or n_rot > v.shape[0]:
        raise ValueError(f"n_rot must be even, >= 2 and at most len(v) = {v.shape[0]}, got {n_rot}")
    if inv_freq.shape[0] != n_rot // 2:
        raise ValueError(f"inv_freq must have n_rot/2 = {n_rot // 2} entries, got {inv_freq.shape[0]}")
    out = v.copy()
    cs = np.empty(2 * n_rot, np.float32)
    cdef float[::1] ov = out
    cdef float[::1] csv = cs
    cdef const float[::1] fv = inv_freq
    cdef int rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_vec_rope(&ov[0], n_rot, pos, &fv[0], scale, neox, &csv[0])
    _check(rc, "vec_rope")
    return out


def vec_to_f16(x):
    """x float32 [n] as fp16, uint16 bits [n], with the fp16 KV cache's row conversion."""
    x = _array(x, np.float32, 1, "x")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one value")
    out = np.empty(x.shape[0], np.uint16)
    cdef const float[::1] xv = x
    cdef uint16_t[::1] ov = out
    cdef int rc = PYLUT_EINVAL
    with nogil:
        rc = pylut_vec_to_f16(&ov[0], &xv[0], xv.shape[0])
    _check(rc, "vec_to_f16")
    return out
