# _model.pxi - the forward pass (Model, Session): included by _core.pyx, whose imports,
# declarations and helpers it uses; kept apart so each file reads in one sitting.

# ---------------------------------------------------------------- the forward pass

from libc.stdint cimport int32_t, uintptr_t
from libc.string cimport memcpy

FFN_ACTS = {"silu": PYLUT_FFN_SILU, "relu2": PYLUT_FFN_RELU2, "gelu_tanh": PYLUT_FFN_GELU_TANH}


cdef const float *_fptr(dict keep, object a, name, int64_t n) except? NULL:
    """Pointer to a float32 vector of n entries (kept alive in keep), or NULL for None."""
    if a is None:
        return NULL
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries, got {a.shape[0]}")
    keep[name] = a
    return <const float *>cnp.PyArray_DATA(a)


cdef const pylut_qmatrix *_qptr(object q, name) except NULL:
    if not isinstance(q, QMatrix):
        raise TypeError(f"{name} must be a QMatrix, got {type(q).__name__}")
    return &(<QMatrix>q).qm


cdef class Model:
    """Weights of a Llama-family model wired for the C forward pass. `config` has arch,
    n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_ctx, norm_eps,
    rope_theta, rope_neox, ffn_act ('silu' or 'relu2'; pylut/arch.py says which arch has
    which), optionally rope_dims (the leading dims RoPE rotates; default head_dim),
    rope_inv_freq ([rope_dims/2], the scaled frequencies pylut.rope computes),
    rope_attn_factor and rope_skip_layers (layers whose q/k are not rotated); Gemma's
    embd_scale, attn_scale, attn_softcap, final_softcap, swa_layers ([n_layers] bools) with
    sliding_window, rope_inv_freq_swa (absent or 0 / None: the plain computation); `tensors`
    maps GGUF-style names to QMatrix / float32 arrays (Gemma adds attn_post_norm,
    ffn_post_norm)."""
    cdef pylut_model m
    cdef pylut_layer *layers
    cdef dict keep
    cdef readonly dict config

    def __cinit__(self, dict config, dict tensors):
        self.keep = {}
        self.config = dict(config)
        act = config["ffn_act"]
        if act not in FFN_ACTS:
            raise ValueError(f"unknown ffn_act {act!r} (known: {', '.join(FFN_ACTS)})")
        m = &self.m
        m.ffn_act = FFN_ACTS[act]
        m.n_layers = config["n_layers"]
        m.dim = config["dim"]
        m.n_heads = config["n_heads"]
        m.n_kv_heads = config["n_kv_heads"]
        m.head_dim = config["head_dim"]
        m.ffn_dim = config["ffn_dim"]
        m.vocab = config["vocab"]
        m.max_ctx = config["max_ctx"]
        m.norm_eps = config["norm_eps"]
        m.rope_theta = config["rope_theta"]
        m.rope_neox = 1 if config["rope_neox"] else 0
        m.rope_dims = config.get("rope_dims", m.head_dim)
        if m.rope_dims < 2 or m.rope_dims > m.head_dim or m.rope_dims % 2:
            raise ValueError(f"rope_dims must be even, in 2..head_dim, got {m.rope_dims}")
        m.rope_inv_freq = _fptr(self.keep, config.get("rope_inv_freq"), "rope_inv_freq", m.rope_dims // 2)
        m.rope_attn_factor = config.get("rope_attn_factor", 1.0)
        m.embd_scale = config.get("embd_scale") or 0.0
        m.attn_scale = config.get("attn_scale") or 0.0
        m.attn_softcap = config.get("attn_softcap") or 0.0
        m.final_softcap = config.get("final_softcap") or 0.0
        m.rope_inv_freq_swa = _fptr(self.keep, config.get("rope_inv_freq_swa"), "rope_inv_freq_swa", m.rope_dims // 2)
        window = config.get("sliding_window") or 0
        swa_layers = config.get("swa_layers")
        if m.n_layers < 1 or m.n_layers > 100000:
            raise ValueError(f"n_layers out of range: {m.n_layers}")
        if swa_layers is not None and len(swa_layers) != m.n_layers:
            raise ValueError(f"swa_layers must have {m.n_layers} entries, got {len(swa_layers)}")
        if window < 0 or window > (1 << 30):
            raise ValueError(f"sliding_window out of range: {window}")
        self.layers = <pylut_layer *>malloc(m.n_layers * sizeof(pylut_layer))
        if self.layers == NULL:
            raise MemoryError()
        m.layers = self.layers
        keep = self.keep
        keep["_tensors"] = dict(tensors)

        def need(name):
            if name not in tensors:
                raise ValueError(f"missing tensor {name!r}")
            return tensors[name]

        emb = need("token_embd")
        if isinstance(emb, QMatrix):
            m.tok_embd = &(<QMatrix>emb).qm
            m.tok_embd_f32 = NULL
        else:
            m.tok_embd = NULL
            m.tok_embd_f32 = _fptr(keep, emb, "token_embd", <int64_t>m.vocab * m.dim)
        m.output_norm = _fptr(keep, need("output_norm"), "output_norm", m.dim)
        m.output = _qptr(need("output"), "output")
        qd = m.n_heads * m.head_dim
        skip_rope = set(config.get("rope_skip_layers", ()))
        if not skip_rope <= set(range(m.n_layers)):
            raise ValueError(f"rope_skip_layers {sorted(skip_rope)} must be layer indices below {m.n_layers}")
        for l in range(m.n_layers):
            L = &self.layers[l]
            L.skip_rope = 1 if l in skip_rope else 0
            p = f"blk.{l}."
            L.attn_norm = _fptr(keep, need(p + "attn_norm"), p + "attn_norm", m.dim)
            L.wq = _qptr(need(p + "attn_q"), p + "attn_q")
            L.wk = _qptr(need(p + "attn_k"), p + "attn_k")
            L.wv = _qptr(need(p + "attn_v"), p + "attn_v")
            L.bq = _fptr(keep, tensors.get(p + "attn_q.bias"), p + "attn_q.bias", qd)
            L.bk = _fptr(keep, tensors.get(p + "attn_k.bias"), p + "attn_k.bias", m.n_kv_heads * m.head_dim)
            L.bv = _fptr(keep, tensors.get(p + "attn_v.bias"), p + "attn_v.bias", m.n_kv_heads * m.head_dim)
            L.q_norm = _fptr(keep, tensors.get(p + "attn_q_norm"), p + "attn_q_norm", m.head_dim)
            L.k_norm = _fptr(keep, tensors.get(p + "attn_k_norm"), p + "attn_k_norm", m.head_dim)
            L.attn_sub_norm = _fptr(keep, tensors.get(p + "attn_sub_norm"), p + "attn_sub_norm", qd)
            L.wo = _qptr(need(p + "attn_output"), p + "attn_output")
            L.ffn_norm = _fptr(keep, need(p + "ffn_norm"), p + "ffn_norm", m.dim)
            L.w_gate = _qptr(need(p + "ffn_gate"), p + "ffn_gate")
            L.w_up = _qptr(need(p + "ffn_up"), p + "ffn_up")
            L.ffn_sub_norm = _fptr(keep, tensors.get(p + "ffn_sub_norm"), p + "ffn_sub_norm", m.ffn_dim)
            L.w_down = _qptr(need(p + "ffn_down"), p + "ffn_down")
            L.attn_post_norm = _fptr(keep, tensors.get(p + "attn_post_norm"), p + "attn_post_norm", m.dim)
            L.ffn_post_norm = _fptr(keep, tensors.get(p + "ffn_post_norm"), p + "ffn_post_norm", m.dim)
            L.swa = window if swa_layers is not None and swa_layers[l] else 0
        cdef const char *why = NULL
        if pylut_model_check(m, &why) != PYLUT_OK:
            raise ValueError(f"model does not fit together: {why.decode()}")

    def __dealloc__(self):
        free(self.layers)


cdef class KVPool:
    """A pool of paged KV blocks that the Sessions of one Model with one kv type and head plan
    draw on: blocks of PYLUT_KV_PAGE positions, allocated as positions are written, shared by
    reference between sessions holding the same prefix, given back when no session holds
    them. max_blocks caps the blocks in use (past it a forward raises MemoryError)."""
    cdef pylut_kv_pool *p
    cdef readonly Model model
    cdef readonly str kv_type
    cdef readonly int64_t block_bytes

    def __cinit__(self, Model model, kv_type="f16", streaming=None, int64_t max_blocks=1 << 20):
        cdef int code = _kv_code(kv_type)
        cdef const uint8_t[::1] flags
        cdef const uint8_t *fp = NULL
        if streaming is not None:
            arr = np.ascontiguousarray(np.asarray(streaming).astype(bool).astype(np.uint8).reshape(-1))
            if arr.shape[0] != model.m.n_layers * model.m.n_kv_heads:
                raise ValueError(f"streaming must have {model.m.n_layers} x {model.m.n_kv_heads} flags")
            flags = arr
            fp = &flags[0]
        self.block_bytes = pylut_kv_block_bytes(&model.m, code, fp)
        if self.block_bytes <= 0:
            raise ValueError("no full kv head to page (or a bad kv type)")
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.p = pylut_kv_pool_create(&model.m, code, fp, max_blocks)
        if self.p == NULL:
            raise MemoryError("could not create a KV block pool")
        self.model = model
        self.kv_type = kv_type

    def __dealloc__(self):
        pylut_kv_pool_free(self.p)  # its blocks go with the last session drawing on it

    @property
    def block_len(self):
        """Positions per block."""
        return PYLUT_KV_PAGE

    @property
    def blocks_used(self):
        """Blocks in use now, a block shared by several sessions counted once."""
        return int(pylut_kv_pool_blocks_used(self.p))

    @property
    def blocks_peak(self):
        return int(pylut_kv_pool_blocks_peak(self.p))

    @property
    def chunk_blocks(self):
        """Blocks per chunk: the pool takes memory a chunk at a time, each head keeping its
        rows of a chunk's blocks side by side (a session's consecutive blocks: one stream)."""
        return int(pylut_kv_pool_chunk_blocks(self.p))

    @property
    def bytes_reserved(self):
        """Bytes of the chunks the pool holds now (a chunk goes back once empty); what was
        never written of them is not resident."""
        return int(pylut_kv_pool_bytes_reserved(self.p))

    @property
    def bytes_used(self):
        return int(pylut_kv_pool_blocks_used(self.p)) * self.block_bytes

    @property
    def max_blocks(self):
        return int(pylut_kv_pool_max_blocks(self.p))

    @max_blocks.setter
    def max_blocks(self, int64_t n):
        if n < 1:
            raise ValueError(f"max_blocks must be >= 1, got {n}")
        _check(pylut_kv_pool_set_max_blocks(self.p, n), "max_blocks")


cdef class Session:
    """One sequence's KV cache and scratch for a Model: forward(tokens) -> logits.
    streaming: optional bool [n_layers, n_kv_heads]; a True head keeps only the first `sink`
    and the `window` most recent positions (DuoAttention's streaming heads) in fewer slots."""
    cdef pylut_state *s
    cdef readonly Model model
    cdef readonly int n_ctx
    cdef readonly str kv_type
    cdef readonly object streaming
    cdef readonly int sink, window
    cdef readonly KVPool pool  # where its full heads' blocks come from (None: a private pool)

    def __cinit__(self, Model model, int n_ctx, int max_batch=64, kv_type="f16", streaming=None,
                  int sink=0, int window=0, bint batch_invariant=False, bint split_int8=False,
                  KVPool pool=None):
        if n_ctx < 1 or n_ctx > model.m.max_ctx:
            raise ValueError(f"n_ctx must be in 1..{model.m.max_ctx} (the model's context), got {n_ctx}")
        if max_batch < 1 or max_batch > 4096:
            raise ValueError(f"max_batch must be in 1..4096, got {max_batch}")
        cdef int code = _kv_code(kv_type)
        if pylut_kv_row_bytes(code, model.m.head_dim) == 0:
            raise ValueError(f"head size {model.m.head_dim} is not supported by the KV cache (even, <= 512)")
        if model.m.n_heads // model.m.n_kv_heads > 64:
            raise ValueError(f"{model.m.n_heads // model.m.n_kv_heads} query heads per kv head: at most 64 supported")
        if pool is not None and (pool.model is not model or pool.kv_type != kv_type):
            raise ValueError("a session's KV pool must be of its Model and kv type")
        self.model = model
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.pool = pool
        cdef const uint8_t[::1] flags
        cdef pylut_kv_pool *pp = pool.p if pool is not None else NULL
        cdef const uint8_t *fp = NULL  # the streaming flags, if any
        if streaming is None:
            with nogil:  # the block table only: blocks come as positions are written
                self.s = pylut_state_create_paged(&model.m, n_ctx, max_batch, code, NULL, 0, 0, pp)
        else:
            arr = np.asarray(streaming)
            if arr.shape != (model.m.n_layers, model.m.n_kv_heads):
                raise ValueError(f"streaming must have shape ({model.m.n_layers}, {model.m.n_kv_heads}) "
                                 f"(layers, kv heads), got {arr.shape}")
            if not 0 <= sink <= n_ctx or not 1 <= window <= n_ctx:
                raise ValueError(f"streaming heads need 0 <= sink <= n_ctx and 1 <= window <= n_ctx "
                                 f"(n_ctx={n_ctx}), got sink={sink}, window={window}")
            arr = np.ascontiguousarray(arr.astype(bool).astype(np.uint8).reshape(-1))
            flags = arr
            self.streaming = arr.reshape(model.m.n_layers, model.m.n_kv_heads).astype(bool)
            self.streaming.flags.writeable = False
            self.sink, self.window = sink, window
            fp = &flags[0]
            with nogil:
                self.s = pylut_state_create_paged(&model.m, n_ctx, max_batch, code, fp, sink, window, pp)
        if self.s == NULL:
            if pool is not None and pool.block_bytes != pylut_kv_block_bytes(&model.m, code, fp):
                raise ValueError("the KV pool's blocks are of another head plan")
            raise MemoryError(f"could not allocate a session with n_ctx={n_ctx}")
        _check(pylut_state_set_batch_invariant(self.s, 1 if batch_invariant else 0), "batch_invariant")
        _check(pylut_state_set_split_int8(self.s, 1 if split_int8 else 0), "split_int8")

    def __dealloc__(self):
        pylut_state_free(self.s)

    @property
    def pos(self):
        return pylut_state_pos(self.s)

    @property
    def max_batch(self):
        """Most tokens one forward step of this session takes."""
        return pylut_state_max_batch(self.s)

    def copy_from(self, Session other, n_pos=None):
        """Take other's first n_pos cached positions (default all: rows, pos, stream base);
        same model, kv type and heads. With streaming heads only all of them."""
        if other.model is not self.model or other is self:
            raise ValueError("copy_from needs another session of the same Model")
        cdef int n = other.pos if n_pos is None else n_pos
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_state_copy(self.s, other.s, n)
        _check(rc if rc != PYLUT_EINVAL else PYLUT_OK, "copy_from")  # an exhausted pool
        if rc != PYLUT_OK:
            raise ValueError(f"cannot copy {n} of a session's {other.pos} positions ({other.kv_type}) into one of "
                             f"n_ctx={self.n_ctx} ({self.kv_type}): cache types, head plans or sizes differ")

    @property
    def batch_invariant(self):
        """True: prefill stays on the table lookups, so results do not depend on chunking."""
        return pylut_state_batch_invariant(self.s) == 1

    @property
    def split_int8(self):
        """True: every B-type matrix reads its input as two int8 parts (value and rounding
        residual) in every step: ~16-bit activations, results independent of chunking."""
        return pylut_state_split_int8(self.s) == 1

    def shift(self, int n_keep, int n_discard):
        """Drop cached positions [n_keep, n_keep+n_discard); later ones move down (RoPE fixed)."""
        if n_keep < 0 or n_discard < 1 or n_keep + n_discard > self.pos:
            raise ValueError(f"cannot drop {n_discard} positions after {n_keep} of {self.pos}")
        if self.streaming is not None and self.streaming.any() and n_keep < self.sink:
            raise ValueError(f"a context shift with streaming heads must keep at least the {self.sink} sink "
                             f"positions (n_keep={n_keep})")
        cdef int rc = PYLUT_EINVAL
        with nogil:
            rc = pylut_state_shift(&self.model.m, self.s, n_keep, n_discard)
        _check(rc, "shift")

    def kv_array(self):
        """A copy of the KV cache (read-only), [2, n_layers, n_kv_heads, n_ctx, row_bytes] (keys,
        values; rows encoded as kv_type, see kv_decode; rows no block holds yet are zeros). With
        streaming heads the heads differ in slots: every head's slots one after another, flat
        (head_kv for one head)."""
        m = &self.model.m
        heads = [self.head_kv(kv, l, h) for kv in range(2) for l in range(m.n_layers) for h in range(m.n_kv_heads)]
        if self.streaming is not None and self.streaming.any():
            out = np.concatenate([x.reshape(-1) for x in heads])
        else:
            out = np.stack(heads).reshape(2, m.n_layers, m.n_kv_heads, self.n_ctx, heads[0].shape[1])
        out.flags.writeable = False
        return out

    @property
    def kv_bytes(self):
        """Bytes the KV cache takes at n_ctx positions (keys and values, every head): its
        capacity. What it holds now: blocks_held (full heads) and stream_bytes."""
        return int(pylut_state_kv_bytes(self.s))

    @property
    def blocks_held(self):
        """Pool blocks this session references (those shared with others included)."""
        return int(pylut_state_blocks_held(self.s))

    @property
    def stream_bytes(self):
        """Bytes of the streaming heads' own slots (never shared)."""
        return int(pylut_state_stream_bytes(self.s))

    def block_ids(self):
        """The pool id of each block this session holds, position order (ids of a shared
        block are the same in every holder): where its cache sits in the pool's chunks."""
        cdef int64_t i, n = (self.n_ctx + PYLUT_KV_PAGE - 1) // PYLUT_KV_PAGE
        out = []
        for i in range(n):
            b = pylut_state_block_id(self.s, i)
            if b < 0:
                break
            out.append(int(b))
        return np.array(out, dtype=np.int64)

    def _head_check(self, int layer, int head):
        if not 0 <= layer < self.model.m.n_layers or not 0 <= head < self.model.m.n_kv_heads:
            raise IndexError(f"no kv head ({layer}, {head}) in a model of {self.model.m.n_layers} layers x "
                             f"{self.model.m.n_kv_heads} kv heads")

    def head_kv(self, int kv, int layer, int head, n=None):
        """A copy of one head's keys (kv=0) or values (kv=1): uint8 [n, row_bytes], its first n
        slots (default all it has). A full head's slot is the position; a streaming head's
        slots [0, sink) hold positions 0..sink-1 and slot sink + i holds position stream_base + i."""
        self._head_check(layer, head)
        if kv not in (0, 1):
            raise ValueError("kv must be 0 (keys) or 1 (values)")
        cdef int64_t rb = pylut_kv_row_bytes(_kv_code(self.kv_type), self.model.m.head_dim)
        cdef int64_t slots = pylut_state_head_slots(self.s, layer, head)
        cdef int64_t rows = slots if n is None else n
        if not 0 <= rows <= slots:
            raise ValueError(f"n must be in 0..{slots}, got {n}")
        out = np.empty((rows, rb), np.uint8)
        cdef uint8_t[:, ::1] view = out
        if rows:
            _check(pylut_state_read_rows(self.s, kv, layer, head, 0, rows, &view[0, 0], rows * rb), "head_kv")
        return out

    def set_head_kv(self, int kv, int layer, int head, rows, int64_t start=0):
        """Write rows (uint8 [n, row_bytes], encoded as kv_type) into one head's slots from
        start: loading a saved session. Blocks another session shares are copied first."""
        self._head_check(layer, head)
        if kv not in (0, 1):
            raise ValueError("kv must be 0 (keys) or 1 (values)")
        cdef int64_t rb = pylut_kv_row_bytes(_kv_code(self.kv_type), self.model.m.head_dim)
        arr = np.ascontiguousarray(rows, dtype=np.uint8)
        if arr.ndim != 2 or arr.shape[1] != rb:
            raise ValueError(f"rows must have shape (n, {rb}), got {arr.shape}")
        cdef int64_t n = arr.shape[0]
        if start < 0 or start + n > pylut_state_head_slots(self.s, layer, head):
            raise ValueError(f"{n} rows from slot {start} do not fit the head's "
                             f"{pylut_state_head_slots(self.s, layer, head)} slots")
        if n == 0:
            return
        cdef const uint8_t[:, ::1] view = arr
        _check(pylut_state_write_rows(self.s, kv, layer, head, start, n, &view[0, 0], n * rb), "set_head_kv")

    @property
    def row_bytes(self):
        """Bytes of one cached head vector."""
        return int(pylut_kv_row_bytes(_kv_code(self.kv_type), self.model.m.head_dim))

    def head_slots(self, int layer, int head):
        """Slots the head has: n_ctx for a full head, fewer for a streaming one."""
        self._head_check(layer, head)
        return int(pylut_state_head_slots(self.s, layer, head))

    def head_used(self, int layer, int head):
        """Slots of the head holding positions at the current pos."""
        self._head_check(layer, head)
        return int(pylut_state_head_used(self.s, layer, head))

    @property
    def stream_base(self):
        return pylut_state_stream_base(self.s)

    def set_stream(self, int pos, int stream_base):
        """Restore pos and the streaming heads' stream_base (loading a saved session)."""
        cdef int rc = pylut_state_set_stream(self.s, pos, stream_base)
        if rc != PYLUT_OK and rc != PYLUT_EINVAL:
            _check(rc, "set_stream")
        if rc != PYLUT_OK:
            raise ValueError(f"pos={pos}, stream_base={stream_base} do not fit this session")

    def can_truncate(self, int pos):
        """True when going on from pos is exact (streaming heads still hold that window)."""
        return bool(pylut_state_can_truncate(self.s, pos))

    def set_pos(self, int pos):
        cdef int rc = pylut_state_set_pos(self.s, pos)
        if rc != PYLUT_OK and rc != PYLUT_EINVAL:
            _check(rc, "set_pos")
        if rc != PYLUT_OK:
            raise ValueError(f"pos must be in 0..{self.n_ctx}")

    def truncate(self, int pos):
        if pylut_state_truncate(self.s, pos) != PYLUT_OK:
            if 0 <= pos <= self.pos:
                raise ValueError(f"cannot truncate to {pos}: the streaming heads already dropped positions "
                                 f"its window needs (truncate to 0 and run the prompt again)")
            raise ValueError(f"cannot truncate to {pos}: the session holds {self.pos} positions")

    def forward(self, tokens, ThreadPool pool, bint all_logits=False):
        toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        cdef int n = toks.shape[0]
        if n < 1:
            raise ValueError("forward needs at least one token")
        if toks.min() < 0 or toks.max() >= self.model.m.vocab:
            raise ValueError(f"token ids must be in 0..{self.model.m.vocab - 1}")
        if self.pos + n > self.n_ctx:
            raise ValueError(f"{self.pos} cached + {n} new tokens exceed n_ctx={self.n_ctx}")
        t32 = toks.astype(np.int32)
        out = np.empty((n if all_logits else 1, self.model.m.vocab), np.float32)
        cdef const int32_t[::1] tv = t32
        cdef float[:, ::1] ov = out
        cdef int rc = PYLUT_EINVAL
        with pool.lock:
            with nogil:
                rc = pylut_forward(pool.pool, &self.model.m, self.s, &tv[0], n, &ov[0, 0], all_logits)
        _check(rc, "forward")
        return out if all_logits else out[0]


def forward_multi(Session work, list seqs, list tokens, ThreadPool pool):
    """One batched step: seqs[i] (Sessions of work's Model) runs tokens[i] (a non-empty int
    sequence); the matmuls run once over every token, attention per sequence. work holds the
    step's activations (a session not in seqs, max_batch >= the total). Returns the logits
    of each sequence's last token, [len(seqs), vocab]."""
    cdef int n_seq = len(seqs)
    if n_seq < 1 or len(tokens) != n_seq:
        raise ValueError("forward_multi needs one token list per session, at least one")
    cdef Model model = work.model
    parts = [np.ascontiguousarray(np.asarray(t, dtype=np.int64).reshape(-1)) for t in tokens]
    counts = np.array([p.shape[0] for p in parts], dtype=np.intc)
    cdef int total = int(counts.sum())
    if counts.min() < 1:
        raise ValueError("every session of a step needs at least one token")
    if total > work.max_batch or n_seq > work.max_batch:
        raise ValueError(f"{total} tokens over the step workspace's max_batch={work.max_batch}")
    flat = np.concatenate(parts)
    if flat.min() < 0 or flat.max() >= model.m.vocab:
        raise ValueError(f"token ids must be in 0..{model.m.vocab - 1}")
    ptrs = np.empty(n_seq, dtype=np.uintp)
    cdef Session q
    for i in range(n_seq):
        q = seqs[i]
        if q.model is not model or q is work:
            raise ValueError("forward_multi's sessions must be of the work session's Model, work not among them")
        if counts[i] > q.max_batch or q.pos + counts[i] > q.n_ctx:
            raise ValueError(f"session {i}: {counts[i]} tokens at {q.pos} do not fit (max_batch={q.max_batch}, "
                             f"n_ctx={q.n_ctx})")
        ptrs[i] = <uintptr_t>q.s
    if len({id(x) for x in seqs}) != n_seq:
        raise ValueError("a session appears twice in one step")
    t32 = flat.astype(np.int32)
    out = np.empty((n_seq, model.m.vocab), np.float32)
    cdef const int32_t[::1] tv = t32
    cdef const int[::1] cv = counts
    cdef const uintptr_t[::1] pv = ptrs
    cdef float[:, ::1] ov = out
    cdef int rc = PYLUT_EINVAL
    with pool.lock:
        with nogil:
            rc = pylut_forward_multi(pool.pool, &model.m, work.s, <pylut_state **>&pv[0], n_seq, &tv[0], &cv[0],
                                     &ov[0, 0])
    _check(rc, "forward_multi")
    return out
