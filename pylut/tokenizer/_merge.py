"""BPE merging of one pre-token: the Python reference loop and the table that hands long
words to the C loop (src/text/bpe_merge.c), which gives the same pieces.

Both join, again and again, the adjacent pair of lowest priority (ties: leftmost first), as a
heap of candidate pairs over a linked list of symbols with lazy invalidation: O(n log n) in
the word's length. Python's constant is large (a 10 MB word took minutes), so words of
C_MERGE_MIN_CHARS or more go to C over integer symbol ids."""
from __future__ import annotations

import heapq
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import _core

# Words at least this long are merged in C; shorter ones (nearly every word of prose, and
# cached) stay in Python, where building the arrays would cost more than the merge.
C_MERGE_MIN_CHARS = 64


# ---------------------------------------------------------------- the reference loop

def merge_symbols(symbols: List[str], priority: Dict, use_pairs: bool) -> List[str]:
    """Greedy pairwise merging shared by every encoder.

    Repeatedly joins the adjacent pair with the lowest priority value (ties: leftmost pair
    first) until no adjacent pair has a priority. ``priority`` is keyed by the merged string
    (SentencePiece) or, if ``use_pairs``, by the ``(left, right)`` tuple (BPE), and its values
    are non-negative integer ranks. A heap plus a doubly linked list keeps it O(n log n) in
    the word's length: the heap holds plain integers ``rank * n + position`` (fast to compare,
    where tuples made a 10 MB single-word input take minutes), and an entry is stale when the
    pair now at its position no longer has its rank.
    """
    n = len(symbols)
    if n < 2:
        return symbols
    symbols = list(symbols)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = priority.get
    heap = []
    for i in range(n - 1):
        a, b = symbols[i], symbols[i + 1]
        p = get((a, b) if use_pairs else a + b)
        if p is not None:
            heap.append(p * n + i)
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        p, i = divmod(pop(heap), n)
        a = symbols[i]
        j = nxt[i]
        if a is None or j < 0:
            continue
        b = symbols[j]
        if get((a, b) if use_pairs else a + b) != p:
            continue  # a neighbour merged first: this pair is gone
        merged = a + b
        symbols[i] = merged
        symbols[j] = None
        k = nxt[j]
        nxt[i] = k
        if k >= 0:
            prv[k] = i
        h = prv[i]
        if h >= 0:
            q = get((symbols[h], merged) if use_pairs else symbols[h] + merged)
            if q is not None:
                push(heap, q * n + h)
        if k >= 0:
            q = get((merged, symbols[k]) if use_pairs else merged + symbols[k])
            if q is not None:
                push(heap, q * n + i)
    return [s for s in symbols if s is not None]


# ---------------------------------------------------------------- the C loop's table


class MergeTable:
    """The merge priorities as integers for the C loop: every string that can be a symbol
    gets an id (ids from len(strings) upwards stand for characters no merge names), and
    every mergeable pair of ids its rank and the merged symbol's id.

    ``priority`` and ``use_pairs`` are merge_symbols' arguments; ``token_of`` maps a string
    to its token id (or None)."""

    def __init__(self, priority: Dict, use_pairs: bool,
                 token_of: Callable[[str], Optional[int]]) -> None:
        # string -> symbol id, in order of first appearance (setdefault's len(ids) is taken
        # before the insertion, so a new string gets the next id)
        ids: Dict[str, int] = {}
        if use_pairs:  # BPE: (a, b) -> rank, a and b any strings (a malformed merge line
            # without its space never matches a pair, in the Python loop either)
            kept = [(pair, rank) for pair, rank in priority.items() if len(pair) == 2]
            pairs = [pair for pair, _ in kept]
            ranks = [rank for _, rank in kept]
        else:  # SentencePiece: a symbol is one character or a piece with a priority
            pairs, ranks = [], []
            for piece, rank in priority.items():
                for k in range(1, len(piece)):
                    a, b = piece[:k], piece[k:]
                    if (len(a) == 1 or a in priority) and (len(b) == 1 or b in priority):
                        pairs.append((a, b))
                        ranks.append(rank)
        left = [ids.setdefault(a, len(ids)) for a, _ in pairs]
        right = [ids.setdefault(b, len(ids)) for _, b in pairs]
        merged = [ids.setdefault(a + b, len(ids)) for a, b in pairs]
        strings = list(ids)
        if ranks and (min(ranks) < 0 or max(ranks) > np.iinfo(np.int32).max):
            raise ValueError("merge priorities must be ranks in int32 range")
        self._keys, self._vals = _core.bpe_table(left, right, ranks, merged)
        self._strings = strings
        self._unknown_base = len(strings)  # id of character c when no merge names it: base + ord(c)
        chars = [(ord(t), i) for i, t in enumerate(strings) if len(t) == 1]
        top = max((c for c, _ in chars), default=0)
        self._char_sym = np.full(top + 1, -1, np.int32)  # code point -> symbol id, -1: none
        for c, i in chars:
            self._char_sym[c] = i
        self._sym_token = np.array([-1 if (t := token_of(s)) is None else t for s in strings]
                                   + [-1], np.int64)  # symbol id -> token id, -1: none
        self._token_of = token_of

    def encode(self, word: str, fallback: Callable[[str, List[int]], None]) -> List[int]:
        """Token ids of ``word`` merged; a piece that is no token goes to ``fallback(piece,
        ids)``, which appends its byte tokens."""
        cps = np.frombuffer(word.encode("utf-32-le", "surrogatepass"), np.uint32).view(np.int32)
        syms = np.full(len(cps), -1, np.int32)  # code points < 0x110000: int32 throughout
        inside = cps < len(self._char_sym)
        syms[inside] = self._char_sym[cps[inside]]
        unknown = syms < 0
        syms[unknown] = self._unknown_base + cps[unknown]
        out = _core.bpe_merge(syms, self._keys, self._vals)
        toks = self._sym_token[np.minimum(out, self._unknown_base)]
        if len(toks) and toks.min() >= 0:
            return toks.tolist()
        ids: List[int] = []
        for s, t in zip(out.tolist(), toks.tolist()):
            if t < 0:
                piece = self._strings[s] if s < self._unknown_base else chr(s - self._unknown_base)
                found = self._token_of(piece)
                if found is None:
                    fallback(piece, ids)
                    continue
                t = found
            ids.append(t)
        return ids
