/* bpe.h - the BPE merge loop of pylut's tokenizer, over integer symbol ids. */
#ifndef PYLUT_BPE_H
#define PYLUT_BPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The pair table: an open-addressing hash table of cap slots (cap a power of two, at least
 * twice the number of pairs). keys[cap]: (left << 32 | right) as uint64, all ones = empty;
 * vals[2 * cap]: per slot, the pair's rank (lower merges first) and the id of the merged
 * symbol. Ids and ranks are non-negative int32. */
#define PYLUT_BPE_EMPTY UINT64_MAX

/* Fill an empty table (keys all PYLUT_BPE_EMPTY) with m pairs; a pair listed twice keeps
 * its first entry. Returns 0, or PYLUT_EINVAL (negative id or rank, cap not a power of two
 * or too small). */
int pylut_bpe_table_build(const int32_t *left, const int32_t *right, const int32_t *rank,
                          const int32_t *merged, int64_t m,
                          uint64_t *keys, int32_t *vals, int64_t cap);

/* Merge syms[n] in place: repeatedly join the adjacent pair of lowest rank (ties: the
 * leftmost), as a heap of (rank, position) with a linked list of symbols and lazy
 * invalidation does, O(n log n). Returns the number of symbols left (compacted to the
 * front of syms), PYLUT_ENOMEM, or PYLUT_EINVAL (n past 2^31 - 2). */
int64_t pylut_bpe_merge(int32_t *syms, int64_t n,
                        const uint64_t *keys, const int32_t *vals, int64_t cap);

#ifdef __cplusplus
}
#endif
#endif
