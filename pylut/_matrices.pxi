# _matrices.pxi - packed weight matrices (QMatrix), activation tables, the LUT GEMV/GEMM
# and the int8 baseline matrix: included by _core.pyx, whose imports, declarations and
# helpers it uses.

# ---------------------------------------------------------------- packed matrices

FLOAT32_MAX = float(np.finfo(np.float32).max)


cdef class QMatrix:
    """A weight matrix W[m, k] packed in the bit-plane layout of include/pylut/pylut.h.
    Build with QMatrix.from_codes (B-types), QMatrix.from_trits (dense ternary T3) or
    QMatrix.from_f16 (fp16 weights kept as they are, no codes: TYPE_F16)."""
    cdef pylut_qmatrix qm
    cdef readonly object codes_buf, scale_buf, bias_buf, sub_scale_buf, sub_bias_buf

    @staticmethod
    def layout(int type, int64_t m, int64_t k, int group=128, bint has_bias=False):
        """Sizes of the buffers a matrix of this type/shape needs (dict)."""
        cdef pylut_qmatrix q
        _check(pylut_qmatrix_layout(&q, type, m, k, group, has_bias), "QMatrix.layout")
        return dict(type=q.type, bits=q.bits, m=q.m, k=q.k, m_pad=q.m_pad, k_pad=q.k_pad,
                    group=q.group, has_bias=bool(q.has_bias), codes_bytes=q.codes_bytes,
                    scale_count=q.scale_count)

    @staticmethod
    def from_packed(int type, int64_t m, int64_t k, int group, bint has_bias, codes,
                    scale=None, bias=None, zero=None, int super_=0, sub_scale=None, sub_bias=None,
                    bint sub_nibbles=False, post=None):
        """Wrap already-packed buffers (e.g. from a packed-model file); sizes are checked.
        super_ > 0: two-level scales (scale/bias per super-block, int8 sub_scale/sub_bias);
        sub_nibbles: sub_scale is uint8, low nibble the sub-scale, high nibble the sub-bias's
        magnitude (its sign is the bias array's), and sub_bias is None (see pylut.h).
        post: the float32 post-scale (set_post), None for 1."""
        cdef QMatrix self = QMatrix.__new__(QMatrix)
        _check(pylut_qmatrix_layout(&self.qm, type, m, k, group, has_bias), "QMatrix.from_packed")
        if post is not None:
            self.set_post(post)
        if type == PYLUT_TYPE_F16:
            if any(a is not None for a in (scale, bias, zero, sub_scale, sub_bias)) or super_ or sub_nibbles:
                raise ValueError("an F16 matrix has only its fp16 weights (no scales, biases or sub-values)")
            codes = _sized(codes, np.uint8, self.qm.codes_bytes, "codes", "bytes")
            self.codes_buf = codes
            self.qm.codes = <uint8_t *>cnp.PyArray_DATA(codes)
            return self
        if sub_nibbles and not (super_ and has_bias):
            raise ValueError("sub_nibbles needs two-level scales (super_) and a bias array")
        if sub_nibbles:
            _check(pylut_qmatrix_set_super(&self.qm, super_), "QMatrix.from_packed (super-block)")
            _check(pylut_qmatrix_set_sub_nibbles(&self.qm, 1), "QMatrix.from_packed (sub_nibbles)")
            if sub_bias is not None:
                raise ValueError("sub_nibbles: sub_bias must be None (sub_scale's high nibbles hold it)")
            a = _sized(sub_scale, np.uint8, self.qm.sub_count, "sub_scale (nibbles)")
            self.sub_scale_buf = a
            self.qm.sub_scale = <int8_t *>cnp.PyArray_DATA(a)
        elif super_:
            _check(pylut_qmatrix_set_super(&self.qm, super_), "QMatrix.from_packed (super-block)")
            for name, a in (("sub_scale", sub_scale), ("sub_bias", sub_bias if has_bias else None)):
                if a is None and name == "sub_bias":
                    continue
                a = _sized(a, np.int8, self.qm.sub_count, name)
                if name == "sub_scale":
                    self.sub_scale_buf = a
                    self.qm.sub_scale = <int8_t *>cnp.PyArray_DATA(a)
                else:
                    self.sub_bias_buf = a
                    self.qm.sub_bias = <int8_t *>cnp.PyArray_DATA(a)
        if zero is not None:
            if has_bias or type == PYLUT_TYPE_T3:
                raise ValueError("zero applies to matrices without a bias array")
            if not 0 <= zero <= (1 << self.qm.bits) - 1:
                raise ValueError(f"zero must be in [0, {(1 << self.qm.bits) - 1}], got {zero}")
            self.qm.zero = zero
        codes = _sized(codes, np.uint8, self.qm.codes_bytes, "codes", "bytes")
        self.codes_buf = codes
        self.qm.codes = <uint8_t *>cnp.PyArray_DATA(codes)
        scale = _sized(scale, np.uint16, self.qm.scale_count, "scale (fp16 bits)")
        self.scale_buf = scale
        self.qm.scale = <uint16_t *>cnp.PyArray_DATA(scale)
        if has_bias:
            bias = _sized(bias, np.uint16, self.qm.scale_count, "bias (fp16 bits)")
            self.bias_buf = bias
            self.qm.bias = <uint16_t *>cnp.PyArray_DATA(bias)
        return self

    @staticmethod
    def from_codes(codes, scale, bias=None, int bits=4, int group=128, zero=None):
        """codes: uint8 [m, k] in [0, 2^bits); scale, bias: float [m, ceil(k/group)], stored
        as fp16; W = scale*codes + bias per group. bias=None means W = scale*(codes - zero)
        with zero = (2^bits-1)/2 (the symmetric grid) unless given (Q4_0: zero=8), which
        saves the bias array."""
        codes = _array(codes, np.uint8, 2, "codes")
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be 1..8, got {bits}")
        m, k = codes.shape
        info = QMatrix.layout(bits, m, k, group, bias is not None)
        n_groups = info["k_pad"] // group
        scale = _group_params(scale, m, n_groups, "scale")
        packed_scale = _tile_params(scale, info["m_pad"], n_groups)
        packed_bias = None
        if bias is not None:
            packed_bias = _tile_params(_group_params(bias, m, n_groups, "bias"), info["m_pad"], n_groups)
        if codes.size and int(codes.max()) >> bits:
            raise ValueError(f"codes must be < 2^{bits} = {1 << bits}, max is {int(codes.max())}")
        cdef QMatrix self = QMatrix.from_packed(bits, m, k, group, bias is not None,
                                                np.zeros(info["codes_bytes"], np.uint8),
                                                packed_scale, packed_bias, zero)
        self._pack(codes)
        return self

    @staticmethod
    def from_codes_super(codes, d, sub_scale, dmin=None, sub_bias=None, int bits=2, int group=16,
                         int super_=256, zero=None, bint nibbles=False):
        """Two-level scales, llama.cpp's K-quants exactly: per super-block of super_ weights
        an fp16 d (and dmin), per group int8 sub_scale (and sub_bias); W = d*sub_scale*codes
        + dmin*sub_bias, or without dmin W = d*sub_scale*(codes - zero).
        d, dmin: [m, k_pad/super_]; sub_scale, sub_bias: [m, k_pad/group].
        nibbles: store both sub-values in one byte (Q2_K: 0.5 bit/weight less), the same W;
        needs dmin, sub_scale in 0..15, |sub_bias| <= 15 and one sign per super-block."""
        codes = _array(codes, np.uint8, 2, "codes")
        m, k = codes.shape
        cdef pylut_qmatrix q
        _check(pylut_qmatrix_layout(&q, bits, m, k, group, dmin is not None), "QMatrix.from_codes_super")
        _check(pylut_qmatrix_set_super(&q, super_), "QMatrix.from_codes_super (super_ must be a multiple of group)")
        n_super, n_groups = q.k_pad // super_, q.k_pad // group
        if codes.size and int(codes.max()) >> bits:
            raise ValueError(f"codes must be < 2^{bits} = {1 << bits}, max is {int(codes.max())}")
        d16 = _tile_params(_group_params(d, m, n_super, "d"), q.m_pad, n_super)
        dm16 = sb8 = None
        if nibbles:
            if dmin is None:
                raise ValueError("nibbles needs dmin and sub_bias (the bias array carries their sign)")
            sc8, dmin = _nibbles(sub_scale, sub_bias, _group_params(dmin, m, n_super, "dmin"), m,
                                 q.m_pad, n_groups, n_super)
            dm16 = _tile_params(dmin, q.m_pad, n_super)
        else:
            sc8 = _tile_int8(sub_scale, m, q.m_pad, n_groups, "sub_scale")
            if dmin is not None:
                dm16 = _tile_params(_group_params(dmin, m, n_super, "dmin"), q.m_pad, n_super)
                sb8 = _tile_int8(sub_bias, m, q.m_pad, n_groups, "sub_bias")
        cdef QMatrix self = QMatrix.from_packed(bits, m, k, group, dmin is not None,
                                                np.zeros(q.codes_bytes, np.uint8), d16, dm16, zero,
                                                super_, sc8, sb8, nibbles)
        self._pack(codes)
        return self

    @staticmethod
    def from_f16(w):
        """w: float [m, k]. Kept as fp16 (TYPE_F16): float16 input exactly, wider floats
        rounded to nearest; the GEMM multiplies them with fp32 activations and sums in fp32.
        NaN, inf and values past fp16's range (65504) are refused."""
        w = np.asarray(w)
        if w.ndim != 2:
            raise ValueError(f"w must be 2-D [m, k], got shape {w.shape}")
        if w.dtype.kind != "f":
            raise TypeError(f"w must be floating point, got {w.dtype}")
        if w.dtype != np.float16:
            w = w.astype(np.float32)
            if not np.all(np.isfinite(w)):
                raise ValueError("w contains NaN or inf")
            big = float(np.abs(w).max()) if w.size else 0.0
            if big > 65504.0:
                raise ValueError(f"w has |values| up to {big:g}, past fp16's range (65504)")
            w = w.astype(np.float16)
        elif not np.all(np.isfinite(w)):
            raise ValueError("w contains NaN or inf")
        bits = np.ascontiguousarray(w).view(np.uint16)
        m, k = bits.shape
        info = QMatrix.layout(PYLUT_TYPE_F16, m, k, 0)
        cdef QMatrix self = QMatrix.from_packed(PYLUT_TYPE_F16, m, k, 0, False,
                                                np.empty(info["codes_bytes"], np.uint8))
        cdef const uint16_t[:, ::1] wv = bits
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_pack_f16(&self.qm, &wv[0, 0], wv.shape[1])
        _check(rc, "pack_f16")
        return self

    @staticmethod
    def from_trits(trits, scale, int group=256):
        """trits: int8 [m, k] in {-1, 0, 1}; scale: float [m, ceil(k/group)] (or [m]: one per
        row), stored as fp16. W = scale * trits per group, packed densely (3 weights per 5
        bits: 1.67 bits/weight plus the scales). group 256 = llama.cpp's TQ blocks; a
        multiple of 6 wastes no padding."""
        trits = _array(trits, np.int8, 2, "trits")
        m, k = trits.shape
        if trits.size and (int(trits.min()) < -1 or int(trits.max()) > 1):
            raise ValueError("trits must be in {-1, 0, 1}")
        info = QMatrix.layout(PYLUT_TYPE_T3, m, k, group)
        n_groups = info["k_pad"] // group
        s = np.asarray(scale, dtype=np.float32)
        if s.ndim == 1 and s.shape[0] == m:
            s = np.repeat(s[:, None], n_groups, axis=1)
        s = _group_params(s, m, n_groups, "scale")
        cdef QMatrix self = QMatrix.from_packed(PYLUT_TYPE_T3, m, k, group, False,
                                                np.zeros(info["codes_bytes"], np.uint8),
                                                _tile_params(s, info["m_pad"], n_groups))
        self._pack(np.ascontiguousarray((trits + 1).astype(np.uint8)))
        return self

    def set_post(self, post):
        """Multiply every product of this matrix (and its dequantized rows) by post as a
        float32, after the kernels: a per-matrix scale kept exactly where the fp16 group
        scales would round it (bitnet.cpp's I2_S per-tensor scale)."""
        p = float(post)
        if not (np.isfinite(p) and 0.0 < abs(p) <= FLOAT32_MAX) or np.float32(p) == 0:
            raise ValueError(f"post-scale must be a finite nonzero float32, got {post!r}")
        _check(pylut_qmatrix_set_post(&self.qm, <float>p), "QMatrix.set_post")

    @property
    def post(self):
        """The float32 post-scale every product is multiplied by (1.0: none)."""
        return float(self.qm.post)

    cdef _pack(self, codes):
        """Pack uint8 codes [m, k] (already range-checked) into this matrix's buffers."""
        cdef const uint8_t[:, ::1] cv = codes
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_pack_codes(&self.qm, &cv[0, 0], cv.shape[1])
        _check(rc, "pack_codes")

    @property
    def shape(self):
        return (self.qm.m, self.qm.k)

    @property
    def type(self):
        return self.qm.type

    @property
    def bits(self):
        return self.qm.bits

    @property
    def group(self):
        return self.qm.group

    @property
    def super_block(self):
        """Weights per super-block of two-level scales, or 0."""
        return self.qm.super

    @property
    def sub_nibbles(self):
        """True when sub-scale and sub-bias share one byte per (row, group) (see pylut.h)."""
        return bool(self.qm.sub_nibbles)

    @property
    def has_bias(self):
        return bool(self.qm.has_bias)

    @property
    def zero(self):
        """The code meaning 0 when there is no bias array (None for T3 or with a bias)."""
        if self.qm.has_bias or self.qm.type in (PYLUT_TYPE_T3, PYLUT_TYPE_F16):
            return None
        return float(self.qm.zero)

    @property
    def k_pad(self):
        return self.qm.k_pad

    @property
    def nbytes(self):
        """Bytes a GEMV reads: packed codes + scales (+ biases, sub-values)."""
        n = self.codes_buf.nbytes
        for b in (self.scale_buf, self.bias_buf, self.sub_scale_buf, self.sub_bias_buf):
            if b is not None:
                n += b.nbytes
        return n

    @property
    def bits_per_weight(self):
        return 8.0 * self.nbytes / (self.qm.m * self.qm.k)

    def row(self, int64_t i):
        """Row i of W as float32 [k], dequantized by pylut_qmatrix_row (what the forward
        pass's embedding lookup runs)."""
        if not 0 <= i < self.qm.m:
            raise IndexError(f"row {i} of a {self.qm.m}-row matrix")
        out = np.empty(self.qm.k, np.float32)
        cdef float[::1] ov = out
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_qmatrix_row(&self.qm, i, &ov[0])
        _check(rc, "row")
        return out

    def unpack_codes(self):
        """The integer codes back as uint8 [m, k] (T3: trit+1 in {0,1,2})."""
        out = np.empty((self.qm.m, self.qm.k), np.uint8)
        cdef uint8_t[:, ::1] ov = out
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_unpack_codes(&self.qm, &ov[0, 0], ov.shape[1])
        _check(rc, "unpack_codes")
        return out

    def dequantize(self):
        """float32 W[m, k] exactly as the kernel's packed data defines it (test reference)."""
        w = self._dequantize()
        return w * np.float32(self.qm.post) if self.qm.post != 1.0 else w

    def _dequantize(self):
        m, k = self.qm.m, self.qm.k
        if self.qm.type == PYLUT_TYPE_F16:
            w = self.codes_buf.view(np.uint16).reshape(self.qm.m_pad, self.qm.k_pad)[:m, :k]
            return w.view(np.float16).astype(np.float32)
        codes = self.unpack_codes().astype(np.float32)
        g = self.qm.group
        n_groups = self.qm.k_pad // g
        gps = n_super = 0  # set below for super-block layouts, the only ones that read them
        if self.qm.super:
            gps, n_super = self.qm.super // g, self.qm.k_pad // self.qm.super
            s = np.repeat(_untile_params(self.scale_buf, self.qm.m_pad, n_super), gps, axis=1)
            s = (s * _untile_sub(self.sub_scale_buf, self.qm.m_pad, n_groups, self.qm.sub_nibbles, False))[:m]
        else:
            s = _untile_params(self.scale_buf, self.qm.m_pad, n_groups)[:m]
        if self.qm.type == PYLUT_TYPE_T3:
            return np.repeat(s, g, axis=1)[:, :k] * (codes - 1.0)
        if self.qm.has_bias and self.qm.super:
            b = np.repeat(_untile_params(self.bias_buf, self.qm.m_pad, n_super), gps, axis=1)
            sub = self.sub_scale_buf if self.qm.sub_nibbles else self.sub_bias_buf
            b = (b * _untile_sub(sub, self.qm.m_pad, n_groups, self.qm.sub_nibbles, True))[:m]
        elif self.qm.has_bias:
            b = _untile_params(self.bias_buf, self.qm.m_pad, n_groups)[:m]
        else:
            b = -s * self.qm.zero
        s = np.repeat(s, g, axis=1)[:, :k]
        b = np.repeat(b, g, axis=1)[:, :k]
        return s * codes + b


def _group_params(a, m, n_groups, name):
    a = np.asarray(a, dtype=np.float32)
    if a.shape != (m, n_groups):
        raise ValueError(f"{name} must have shape ({m}, {n_groups}) = (rows, ceil(k/group)), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def _tile_params(a, m_pad, n_groups):
    """[m, G] float -> fp16 bits in the kernel's [m_pad/32][G][32] order."""
    full = np.zeros((m_pad, n_groups), np.float16)
    full[: a.shape[0]] = a.astype(np.float16)
    return np.ascontiguousarray(full.reshape(m_pad // TILE_M, TILE_M, n_groups)
                                .transpose(0, 2, 1)).reshape(-1).view(np.uint16)


def _tile_int8(a, m, m_pad, n_groups, name, dtype=np.int8):
    a = np.asarray(a)
    if a.shape != (m, n_groups):
        raise ValueError(f"{name} must have shape ({m}, {n_groups}), got {a.shape}")
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name} must fit {np.dtype(dtype).name}")
    full = np.zeros((m_pad, n_groups), dtype)
    full[:m] = a
    return np.ascontiguousarray(full.reshape(m_pad // TILE_M, TILE_M, n_groups).transpose(0, 2, 1)).reshape(-1)


def _nibbles(sub_scale, sub_bias, dmin, m, m_pad, n_groups, n_super):
    """(packed nibble bytes, dmin with each super-block's sub-bias sign) of pylut.h's
    nibble form, or ValueError when a value does not fit it."""
    sc, sb = np.asarray(sub_scale), np.asarray(sub_bias)
    for name, a in (("sub_scale", sc), ("sub_bias", sb)):
        if a.shape != (m, n_groups):
            raise ValueError(f"{name} must have shape ({m}, {n_groups}), got {a.shape}")
    if sc.size and (sc.min() < 0 or sc.max() > 15):
        raise ValueError(f"nibbles: sub_scale must be in 0..15, got {sc.min()}..{sc.max()}")
    sb = sb.astype(np.int64)
    if sb.size and np.abs(sb).max() > 15:
        raise ValueError(f"nibbles: sub_bias must be in -15..15, got {sb.min()}..{sb.max()}")
    per = sb.reshape(m, n_super, n_groups // n_super)
    neg, pos = (per < 0).any(2), (per > 0).any(2)
    if (neg & pos).any():
        r, b = np.argwhere(neg & pos)[0]
        raise ValueError(f"nibbles: row {r}, super-block {b} has sub_bias of both signs (the sign "
                         f"is stored once per super-block, in dmin)")
    byte = sc.astype(np.int64) | (np.abs(sb) << 4)
    return _tile_int8(byte, m, m_pad, n_groups, "nibbles", np.uint8), np.where(neg, -dmin, dmin)


def _untile_int8(buf, m_pad, n_groups):
    return (buf.reshape(m_pad // TILE_M, n_groups, TILE_M).transpose(0, 2, 1)
            .reshape(m_pad, n_groups).astype(np.float32))


def _untile_sub(buf, m_pad, n_groups, nibbles, bias):
    """Sub-scales (bias False) or sub-biases as float32 [m_pad, n_groups]; from nibble bytes
    the sub-bias is the high nibble, its sign being the bias array's."""
    if nibbles:
        buf = (buf >> 4) if bias else (buf & 15)
    return _untile_int8(buf, m_pad, n_groups)


def _untile_params(buf, m_pad, n_groups):
    return (buf.view(np.float16).reshape(m_pad // TILE_M, n_groups, TILE_M)
            .transpose(0, 2, 1).reshape(m_pad, n_groups).astype(np.float32))


# ---------------------------------------------------------------- tables and GEMM

cdef class Tables:
    """Lookup tables for n activation vectors, built once and read by every matrix of the
    same k/group/family (q, k, v share one; gate, up share one). int8=True: the activations
    quantized to int8 per scale group instead, for the int8 prefill GEMM (B-type matrices);
    split=True with it: two int8 parts, the value and its rounding residual (~16-bit)."""
    cdef pylut_lut *luts
    cdef readonly int n
    cdef readonly object tbl, tscale, sumx
    cdef readonly int64_t k
    cdef readonly bint int8, split

    def __cinit__(self, QMatrix like, int n, bint int8=False, bint split=False):
        if n < 1:
            raise ValueError("n must be >= 1")
        if split and not int8:
            raise ValueError("split=True needs int8=True (it splits the int8 activations)")
        if int8 and like.qm.type == PYLUT_TYPE_F16:
            raise ValueError("int8 activations serve B-type and T3 matrices only, not F16")
        if int8 and like.qm.type == PYLUT_TYPE_T3 and (like.qm.group % 12 or like.qm.group > I8_CHUNK):
            raise ValueError(f"int8 activations serve T3 matrices whose group is a multiple of 12 up to "
                             f"{I8_CHUNK} (whole k-groups and pairs of triples), not {like.qm.group}")
        self.luts = <pylut_lut *>malloc(n * sizeof(pylut_lut))
        if self.luts == NULL:
            raise MemoryError()
        self.n = n
        self.int8, self.split = int8, split
        if int8:
            _check(pylut_lut_layout_i8(&self.luts[0], &like.qm, 2 if split else 1), "Tables")
        else:
            _check(pylut_lut_layout(&self.luts[0], &like.qm), "Tables")
        cdef pylut_lut base = self.luts[0]
        self.k = base.k
        self.tbl = np.zeros((n, base.tbl_bytes), np.int8)
        cdef int64_t floats = pylut_lut_scale_floats(&base)
        self.tscale = np.zeros((n, floats), np.float32)
        self.sumx = np.zeros((n, floats), np.float32)
        cdef int8_t[:, ::1] tv = self.tbl
        cdef float[:, ::1] sv = self.tscale
        cdef float[:, ::1] xv = self.sumx
        for i in range(n):
            self.luts[i] = base
            self.luts[i].tbl = &tv[i, 0]
            self.luts[i].tscale = &sv[i, 0]
            self.luts[i].sumx = &xv[i, 0]

    def __dealloc__(self):
        free(self.luts)

    def build(self, x, ThreadPool pool):
        x = _array(x, np.float32, (1, 2), "x")
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape != (self.n, self.k):
            raise ValueError(f"x must have shape ({self.n}, {self.k}), got {x.shape}")
        cdef const float[:, ::1] xv = x2
        cdef int rc = PYLUT_EINVAL
        with pool.lock:
            with nogil:
                rc = pylut_lut_build(pool.pool, self.luts, self.n, &xv[0, 0], xv.shape[1])
        _check(rc, "lut_build")


def i8_preferred(QMatrix qm, int n):
    """Whether the model would run n tokens through qm on the int8 prefill path here."""
    return pylut_gemm_i8_preferred(&qm.qm, n) == 1


def ternary_as_planes():
    """Whether ternary weights run faster here as 2 bit planes (B2) than densely (T3)."""
    return pylut_ternary_as_planes() == 1


def gemm_multi(mats, x, ThreadPool pool, Tables tables=None, bint int8=False, bint split=False):
    """y_i = W_i x for every matrix (same k, group and family): one table build, one
    dispatch. x: float32 [k] or [n, k]. Returns a list of float32 [m_i] or [n, m_i].
    int8=True runs the int8-activation prefill kernel instead of the table lookups; split=True
    with it reads x as two int8 parts (value and rounding residual)."""
    if not 1 <= len(mats) <= 8:
        raise ValueError("gemm_multi takes 1..8 matrices")
    for obj in mats:
        if not isinstance(obj, QMatrix):
            raise TypeError(f"expected QMatrix, got {type(obj).__name__}")
    x = _array(x, np.float32, (1, 2), "x")
    cdef QMatrix first = mats[0]
    cdef int64_t k = first.qm.k
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} columns but the matrix has k={k}")
    cdef int n = 1 if x.ndim == 1 else x.shape[0]
    if n < 1:
        raise ValueError("x has no rows")
    cdef QMatrix q
    cdef pylut_lut want, have
    pylut_lut_layout(&want, &first.qm)
    for q in mats:
        pylut_lut_layout(&have, &q.qm)
        if (have.k, have.group, have.kind, have.super) != (k, want.group, want.kind, want.super):
            raise ValueError("matrices sharing tables must have the same k, group, family and "
                             "table-scale block")
    if tables is None:
        tables = Tables(first, n, int8, split)
        tables.build(x, pool)
    elif tables.n != n or tables.k != k:
        raise ValueError("tables were built for another shape")
    outs = [np.empty((n, (<QMatrix>obj).qm.m), np.float32) for obj in mats]
    cdef const pylut_qmatrix *qms[8]
    cdef float *ys[8]
    cdef int64_t ldys[8]
    cdef float[:, ::1] ov
    cdef int i
    for i in range(len(mats)):
        q = mats[i]
        qms[i] = &q.qm
        ov = outs[i]
        ys[i] = &ov[0, 0]
        ldys[i] = ov.shape[1]
    cdef int rc = PYLUT_EINVAL, nm = len(mats)
    with pool.lock:
        with nogil:
            rc = pylut_gemm_multi(pool.pool, nm, qms, tables.luts, n, ys, ldys)
    _check(rc, "gemm")
    if x.ndim == 1:
        return [o[0] for o in outs]
    return outs


# ---------------------------------------------------------------- int8 baseline (dq8)

cdef class Dq8Matrix:
    """The llama.cpp-style dequant-dot baseline: b-bit codes unpacked to bytes and
    multiplied with int8 activations (bits 2 or 4, k a multiple of 256/bits)."""
    cdef pylut_dq8matrix qm
    cdef readonly object codes_buf, scale_buf, bias_buf

    def __cinit__(self, codes, scale, bias, int bits):
        codes = _array(codes, np.uint8, 2, "codes")
        m, k = codes.shape
        _check(pylut_dq8matrix_layout(&self.qm, bits, m, k), "Dq8Matrix (bits 2/4, k % (256/bits) == 0)")
        if codes.size and int(codes.max()) >> bits:
            raise ValueError(f"codes must be < 2^{bits}")
        self.scale_buf = np.ascontiguousarray(_group_params(scale, m, k // 32, "scale").astype(np.float16)).view(np.uint16)
        self.bias_buf = np.ascontiguousarray(_group_params(bias, m, k // 32, "bias").astype(np.float16)).view(np.uint16)
        self.codes_buf = np.zeros(m * self.qm.row_bytes, np.uint8)
        self.qm.codes = <uint8_t *>cnp.PyArray_DATA(self.codes_buf)
        self.qm.scale = <uint16_t *>cnp.PyArray_DATA(self.scale_buf)
        self.qm.bias = <uint16_t *>cnp.PyArray_DATA(self.bias_buf)
        cdef const uint8_t[:, ::1] cv = codes
        cdef int64_t ld = cv.shape[1]
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_dq8_pack(&self.qm, &cv[0, 0], ld)
        _check(rc, "dq8_pack")

    @property
    def nbytes(self):
        return self.codes_buf.nbytes + self.scale_buf.nbytes + self.bias_buf.nbytes

    def quantize_x(self, x):
        x = _array(x, np.float32, 1, "x")
        if x.shape[0] != self.qm.k:
            raise ValueError(f"x must have {self.qm.k} entries")
        xq = np.empty(self.qm.k, np.int8)
        xs = np.empty(self.qm.k // 32, np.float32)
        xsum = np.empty(self.qm.k // 32, np.float32)
        cdef const float[::1] xv = x
        cdef int8_t[::1] qv = xq
        cdef float[::1] sv = xs
        cdef float[::1] mv = xsum
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_dq8_quantize_x(self.qm.k, &xv[0], &qv[0], &sv[0], &mv[0])
        _check(rc, "dq8_quantize_x")
        return xq, xs, xsum

    def gemv(self, xq, xs, xsum, ThreadPool pool):
        """y = W x for quantized activations: xq int8 [k] or [n, k], xs/xsum [k/32] or [n, k/32]."""
        xq = _array(xq, np.int8, (1, 2), "xq")
        xs = _array(xs, np.float32, (1, 2), "xs")
        xsum = _array(xsum, np.float32, (1, 2), "xsum")
        cdef int n = 1 if xq.ndim == 1 else xq.shape[0]
        if (xq.size != n * self.qm.k or xs.size != n * (self.qm.k // 32) or xsum.size != n * (self.qm.k // 32)
                or xq.shape[-1] != self.qm.k):
            raise ValueError("quantized x does not match the matrix")
        y = np.empty((n, self.qm.m), np.float32)
        cdef const int8_t[:, ::1] qv = xq.reshape(n, -1)
        cdef const float[:, ::1] sv = xs.reshape(n, -1)
        cdef const float[:, ::1] mv = xsum.reshape(n, -1)
        cdef float[:, ::1] yv = y
        cdef int rc = PYLUT_EINVAL
        with pool.lock:
            with nogil:
                rc = pylut_dq8_gemm(pool.pool, &self.qm, n, &qv[0, 0], &sv[0, 0], &mv[0, 0], &yv[0, 0])
        _check(rc, "dq8_gemm")
        return y if xq.ndim == 2 else y[0]
