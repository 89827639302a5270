"""Prompt prefixes of recently closed sessions, kept for new prompts that start the same way.

A closed session's C state still references its KV blocks (kv pool, src/model/kv_pool.c);
keeping the state keeps the blocks, and a later session takes them by reference (no rows
copied, none recomputed). Entries are found by their chain of full blocks: the key of block k
is hash((key of block k-1, its PYLUT_KV_PAGE token ids)), so a prompt's lookup walks its own
chain and stops at the first block no entry holds - the cost grows with the prompt, not with
the entries. Open sessions are searched directly (Session._take_prefix): their tokens change
with every step, an index of them would always be stale.
"""
import threading
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple


def block_chain(tokens: Sequence[int], block_len: int, root) -> List[int]:
    """Keys of tokens' full blocks: key k covers tokens[0 : (k+1) * block_len]."""
    keys, h = [], hash(root)
    for k in range(len(tokens) // block_len):
        h = hash((h, tuple(tokens[k * block_len:(k + 1) * block_len])))
        keys.append(h)
    return keys


class PrefixCache:
    """At most `capacity` closed sessions' states holding at most `max_tokens` positions in
    all, least recently used dropped first (their blocks go back to the pool unless another
    session shares them). Sessions clear it when the pool runs out. Thread-safe."""

    def __init__(self, capacity: int = 4, max_tokens: int = 4096):
        if capacity < 0 or max_tokens < 0:
            raise ValueError(f"capacity and max_tokens must be >= 0, got {capacity}, {max_tokens}")
        self.capacity = capacity
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        # entry id -> (C state, its tokens, their chain keys), least recently used first
        self._entries: "OrderedDict[int, Tuple[object, List[int], List[int]]]" = OrderedDict()
        self._index: Dict[int, List[int]] = {}  # chain key -> the entries holding that chain
        self._next = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keep(self, state, tokens: Sequence[int]) -> bool:
        """Hold a closed session's state (pos == len(tokens)); False when not worth keeping
        (under one block, or streaming heads, whose rows compaction rewrote)."""
        tokens = list(tokens)
        pool = state.pool
        if (self.capacity == 0 or pool is None or state.pos != len(tokens) or len(tokens) < pool.block_len
                or len(tokens) > self.max_tokens or (state.streaming is not None and state.streaming.any())):
            return False
        chain = block_chain(tokens, pool.block_len, state.kv_type)
        with self._lock:
            # an entry whose tokens begin this one's is wholly covered by it: drop it
            for eid, (st, toks, _) in list(self._entries.items()):
                if st.kv_type == state.kv_type and len(toks) <= len(tokens) and tokens[:len(toks)] == toks:
                    self._drop(eid)
            eid, self._next = self._next, self._next + 1
            self._entries[eid] = (state, tokens, chain)
            for key in chain:
                self._index.setdefault(key, []).append(eid)
            while len(self._entries) > self.capacity or \
                    sum(len(t) for _, t, _ in self._entries.values()) > self.max_tokens:
                self._drop(next(iter(self._entries)))
        return True

    def _drop(self, eid: int) -> None:
        _, _, chain = self._entries.pop(eid)
        for key in chain:
            ids = self._index[key]
            ids.remove(eid)
            if not ids:
                del self._index[key]

    def take(self, dst, tokens: Sequence[int], at_least: int) -> int:
        """Make dst (an open session's C state of the same pool) hold the longest prefix of
        tokens an entry holds, when longer than at_least positions; returns what dst holds
        (at_least when nothing better). One position of tokens is always left to run."""
        pool = dst.pool
        if pool is None or not self._entries:
            return at_least
        chain = block_chain(tokens, pool.block_len, dst.kv_type)
        with self._lock:
            best, n_best = None, at_least
            depth = len(chain)  # the deepest full block some entry holds (keys are prefix-closed)
            while depth and chain[depth - 1] not in self._index:
                depth -= 1
            for eid in self._index[chain[depth - 1]] if depth else ():
                state, toks, _ = self._entries[eid]
                # its chain matched (hashes: checked here token by token), then the partial block
                n = depth * pool.block_len
                while n < len(toks) and n < len(tokens) and toks[n] == tokens[n]:
                    n += 1
                if toks[:depth * pool.block_len] != list(tokens[:depth * pool.block_len]):
                    continue  # a hash collision
                n = min(n, len(tokens) - 1, dst.n_ctx)
                if n > n_best and state.kv_type == dst.kv_type:
                    best, n_best = eid, n
            if best is None:
                return at_least
            state = self._entries[best][0]
            self._entries.move_to_end(best)
            dst.copy_from(state, n_best)  # references: the blocks stay the entry's too
            self.hits += 1
            return n_best

    def clear(self) -> None:
        """Drop every entry (their blocks go back to the pool unless shared)."""
        with self._lock:
            self._entries.clear()
            self._index.clear()

    def info(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "capacity": self.capacity, "hits": self.hits,
                    "tokens": sum(len(t) for _, t, _ in self._entries.values())}
