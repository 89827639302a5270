# cpylut.pxd - the C API of include/pylut/pylut.h, for Cython. Declarations only.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "pylut/pylut.h" nogil:
    enum:
        PYLUT_TYPE_B1
        PYLUT_TYPE_B2
        PYLUT_TYPE_B3
        PYLUT_TYPE_B4
        PYLUT_TYPE_T3
        PYLUT_TYPE_F16
        PYLUT_F16_KALIGN
        PYLUT_ISA_SCALAR
        PYLUT_ISA_AVX2
        PYLUT_ISA_AVX512
        PYLUT_ISA_NEON
        PYLUT_ISA_NEON_DOT
        PYLUT_ISA_AVX512VBMI
        PYLUT_OK
        PYLUT_EINVAL
        PYLUT_ENOMEM
        PYLUT_EISA
        PYLUT_EFULL
        PYLUT_TILE_M
        PYLUT_MIN_GROUP
        PYLUT_MAX_GROUP

    ctypedef struct pylut_qmatrix:
        int32_t type
        int32_t bits
        int64_t m, k, m_pad, k_pad
        int32_t group
        int32_t has_bias
        float zero
        int32_t super "super"
        int32_t sub_nibbles
        int64_t codes_bytes
        int64_t scale_count
        int64_t sub_count
        uint8_t *codes
        uint16_t *scale
        uint16_t *bias
        int8_t *sub_scale
        int8_t *sub_bias
        float post

    ctypedef struct pylut_lut:
        int32_t kind
        int64_t k, k_pad
        int32_t group
        int32_t super "super"
        int64_t tbl_bytes, n_groups
        int32_t parts
        int8_t *tbl
        float *tscale
        float *sumx

    ctypedef struct pylut_pool:
        pass

    ctypedef struct pylut_dq8matrix:
        int32_t bits
        int64_t m, k, row_bytes
        uint8_t *codes
        uint16_t *scale
        uint16_t *bias

    int pylut_qmatrix_layout(pylut_qmatrix *qm, int type, int64_t m, int64_t k, int group, int has_bias)
    int pylut_qmatrix_set_super(pylut_qmatrix *qm, int super_)
    int pylut_qmatrix_set_sub_nibbles(pylut_qmatrix *qm, int on)
    int pylut_qmatrix_set_post(pylut_qmatrix *qm, float post)
    int pylut_pack_codes(pylut_qmatrix *qm, const uint8_t *codes, int64_t ld)
    int pylut_pack_f16(pylut_qmatrix *qm, const uint16_t *w, int64_t ld)
    int pylut_unpack_codes(const pylut_qmatrix *qm, uint8_t *codes, int64_t ld)
    int pylut_qmatrix_row(const pylut_qmatrix *qm, int64_t row, float *out)
    int64_t pylut_scale_index(const pylut_qmatrix *qm, int64_t row, int64_t g)
    int pylut_lut_layout(pylut_lut *lut, const pylut_qmatrix *qm)
    int pylut_lut_layout_i8(pylut_lut *lut, const pylut_qmatrix *qm, int parts)
    int64_t pylut_lut_scale_floats(const pylut_lut *lut)
    int pylut_gemm_i8_preferred(const pylut_qmatrix *qm, int n)
    int pylut_ternary_as_planes()

    pylut_pool *pylut_pool_create(int n_threads)
    void pylut_pool_free(pylut_pool *pool)
    int pylut_pool_size(const pylut_pool *pool)

    int pylut_lut_build(pylut_pool *pool, pylut_lut *lut, int n, const float *x, int64_t ldx)
    int pylut_gemm(pylut_pool *pool, const pylut_qmatrix *qm, const pylut_lut *lut, int n,
                   float *y, int64_t ldy)
    int pylut_gemm_multi(pylut_pool *pool, int n_mats, const pylut_qmatrix *const *qms,
                         const pylut_lut *lut, int n, float *const *ys, const int64_t *ldys)

    int pylut_dq8matrix_layout(pylut_dq8matrix *qm, int bits, int64_t m, int64_t k)
    int pylut_dq8_pack(pylut_dq8matrix *qm, const uint8_t *codes, int64_t ld)
    int pylut_dq8_quantize_x(int64_t k, const float *x, int8_t *xq, float *xs, float *xsum)
    int pylut_dq8_gemv(pylut_pool *pool, const pylut_dq8matrix *qm, const int8_t *xq,
                       const float *xs, const float *xsum, float *y)
    int pylut_dq8_gemm(pylut_pool *pool, const pylut_dq8matrix *qm, int n, const int8_t *xq,
                       const float *xs, const float *xsum, float *y)

    uint64_t pylut_read_bytes(pylut_pool *pool, const void *p, int64_t n)
    int pylut_attention_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t ld, int len,
                            int hd, float scale, float *out, float *scores)
    int pylut_isa_detect()
    int pylut_isa_supported(int isa)
    int pylut_isa_active()
    int pylut_isa_set(int isa)
    const char *pylut_isa_name(int isa)
    const char *pylut_cpu_flags()
    int pylut_sanitize_selftest(int n)
    float pylut_fp16_to_fp32(uint16_t h)
    uint16_t pylut_fp32_to_fp16(float f)

cdef extern from "pylut/model.h" nogil:
    enum:
        PYLUT_FFN_SILU
        PYLUT_FFN_RELU2
        PYLUT_FFN_GELU_TANH

    ctypedef struct pylut_layer:
        const float *attn_norm
        const pylut_qmatrix *wq
        const pylut_qmatrix *wk
        const pylut_qmatrix *wv
        const float *bq
        const float *bk
        const float *bv
        const float *q_norm
        const float *k_norm
        const float *attn_sub_norm
        const pylut_qmatrix *wo
        const float *ffn_norm
        const pylut_qmatrix *w_gate
        const pylut_qmatrix *w_up
        const float *ffn_sub_norm
        const pylut_qmatrix *w_down
        int32_t skip_rope
        const float *attn_post_norm
        const float *ffn_post_norm
        int32_t swa

    ctypedef struct pylut_model:
        int32_t ffn_act
        int32_t n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab, max_ctx
        float norm_eps, rope_theta
        int32_t rope_neox
        const float *rope_inv_freq
        float rope_attn_factor
        int32_t rope_dims
        const pylut_qmatrix *tok_embd
        const float *tok_embd_f32
        const float *output_norm
        const pylut_qmatrix *output
        const pylut_layer *layers
        float embd_scale, attn_scale, attn_softcap, final_softcap
        const float *rope_inv_freq_swa

    ctypedef struct pylut_state:
        pass
    ctypedef struct pylut_kv_pool:
        pass
    enum:
        PYLUT_KV_PAGE

    int64_t pylut_kv_block_bytes(const pylut_model *m, int kv_type, const uint8_t *streaming)
    pylut_kv_pool *pylut_kv_pool_create(const pylut_model *m, int kv_type, const uint8_t *streaming, int64_t max_blocks)
    void pylut_kv_pool_free(pylut_kv_pool *p)
    int pylut_kv_pool_set_max_blocks(pylut_kv_pool *p, int64_t max_blocks)
    int64_t pylut_kv_pool_blocks_used(const pylut_kv_pool *p)
    int64_t pylut_kv_pool_blocks_peak(const pylut_kv_pool *p)
    int64_t pylut_kv_pool_max_blocks(const pylut_kv_pool *p)
    int64_t pylut_kv_pool_block_bytes(const pylut_kv_pool *p)
    int64_t pylut_kv_pool_chunk_blocks(const pylut_kv_pool *p)
    int64_t pylut_kv_pool_bytes_reserved(const pylut_kv_pool *p)
    pylut_state *pylut_state_create_paged(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                          const uint8_t *streaming, int sink, int window, pylut_kv_pool *pool)
    int64_t pylut_state_blocks_held(const pylut_state *s)
    int64_t pylut_state_stream_bytes(const pylut_state *s)
    int64_t pylut_state_block_id(const pylut_state *s, int64_t i)
    int pylut_state_read_rows(const pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, uint8_t *buf,
                              int64_t buf_bytes)
    int pylut_state_write_rows(pylut_state *s, int kv, int l, int h, int64_t slot0, int64_t n, const uint8_t *buf,
                               int64_t buf_bytes)

    int pylut_model_check(const pylut_model *m, const char **why)
    pylut_state *pylut_state_create(const pylut_model *m, int n_ctx, int max_batch, int kv_type)
    void pylut_state_free(pylut_state *s)
    int pylut_state_pos(const pylut_state *s)
    int pylut_state_truncate(pylut_state *s, int pos)
    int pylut_state_set_batch_invariant(pylut_state *s, int on)
    int pylut_state_batch_invariant(const pylut_state *s)
    int pylut_state_set_split_int8(pylut_state *s, int on)
    int pylut_state_split_int8(const pylut_state *s)
    int pylut_forward(pylut_pool *pool, const pylut_model *m, pylut_state *s, const int32_t *tokens,
                      int n, float *logits, int all_logits)
    int pylut_forward_multi(pylut_pool *pool, const pylut_model *m, pylut_state *work, pylut_state **seqs,
                            int n_seq, const int32_t *tokens, const int *n_tokens, float *logits) nogil
    int pylut_state_copy(pylut_state *dst, const pylut_state *src, int n_pos) nogil
    int pylut_state_max_batch(const pylut_state *s)
    int64_t pylut_state_kv_bytes(const pylut_state *s)
    int pylut_state_kv_type(const pylut_state *s)
    int pylut_state_set_pos(pylut_state *s, int pos)
    int pylut_state_shift(const pylut_model *m, pylut_state *s, int n_keep, int n_discard)
    pylut_state *pylut_state_create_heads(const pylut_model *m, int n_ctx, int max_batch, int kv_type,
                                          const uint8_t *streaming, int sink, int window)
    int pylut_state_can_truncate(const pylut_state *s, int pos)
    int64_t pylut_state_head_slots(const pylut_state *s, int l, int h)
    int64_t pylut_state_head_used(const pylut_state *s, int l, int h)
    int pylut_state_head_streaming(const pylut_state *s, int l, int h)
    int pylut_state_stream_base(const pylut_state *s)
    int pylut_state_set_stream(pylut_state *s, int pos, int stream_base)

cdef extern from "pylut/attention.h" nogil:
    enum:
        PYLUT_KV_F16
        PYLUT_KV_Q8
        PYLUT_KV_Q4

    int64_t pylut_kv_row_bytes(int type, int hd)
    int pylut_kv_encode(int type, int hd, const float *x, uint8_t *row)
    int pylut_kv_decode(int type, int hd, const uint8_t *row, float *x)

    ctypedef struct pylut_attn_head:
        const uint8_t *k
        const uint8_t *v
        int64_t cap
        int streaming

    ctypedef struct pylut_attn_job:
        int type, hd, n_heads, n_kv_heads
        const uint8_t *k
        const uint8_t *v
        int64_t ld, hstride
        int len
        const float *q
        int64_t ldq
        float *out
        int64_t ldo
        int n, pos0
        float scale
        const pylut_attn_head *heads
        int sink, window, stream_base
        int swa
        float softcap
        int splits
        int64_t n_items
        const uint8_t *const *blocks
        int block_len
        int64_t block_bytes
        const int64_t *k_off
        const int64_t *v_off

    int pylut_attention(pylut_pool *pool, pylut_attn_job *job)


cdef extern from "pylut/checksum.h" nogil:
    uint32_t pylut_crc32c(uint32_t crc, const void *buf, size_t n)
    uint32_t pylut_crc32c_scalar(uint32_t crc, const void *buf, size_t n)
    const char *pylut_crc32c_impl()

cdef extern from "pylut/bpe.h" nogil:
    int pylut_bpe_table_build(const int32_t *left, const int32_t *right, const int32_t *rank,
                              const int32_t *merged, int64_t m,
                              uint64_t *keys, int32_t *vals, int64_t cap)
    int64_t pylut_bpe_merge(int32_t *syms, int64_t n,
                            const uint64_t *keys, const int32_t *vals, int64_t cap)


cdef extern from "pylut/vecops.h" nogil:
    enum:
        PYLUT_GATE_SILU
        PYLUT_GATE_RELU2
        PYLUT_GATE_GELU_TANH

    int pylut_vec_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
    int pylut_vec_gate(int act, float *g, const float *u, int64_t n)
    int pylut_vec_add(float *x, const float *y, int64_t n)
    int pylut_vec_rope(float *v, int n_rot, int pos, const float *inv_freq, float scale, int neox, float *cs)
    int pylut_vec_to_f16(uint16_t *out, const float *x, int64_t n)
