"""Token sampling: greedy, temperature, top-k, top-p, min-p and a repetition penalty, in the
order llama.cpp applies them, with a seeded generator so the same seed gives the same text."""
from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8      # <= 0: greedy
    top_k: int = 40               # 0: off
    top_p: float = 0.95           # >= 1: off
    min_p: float = 0.05           # <= 0: off
    repeat_penalty: float = 1.1   # 1: off
    repeat_last_n: int = 64
    seed: Optional[int] = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        def num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
                and bool(np.isfinite(v))

        def integer(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        checks = [
            (num(self.temperature) and self.temperature >= 0, "temperature must be a finite number >= 0"),
            (integer(self.top_k) and 0 <= self.top_k < 2**31, "top_k must be an integer in 0..2^31-1 (0: off)"),
            (num(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (num(self.min_p) and 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (num(self.repeat_penalty) and 0 < self.repeat_penalty <= 1e6,
             "repeat_penalty must be a finite number in (0, 1e6]"),
            (integer(self.repeat_last_n) and 0 <= self.repeat_last_n < 2**31,
             "repeat_last_n must be an integer in 0..2^31-1"),
            (self.seed is None or (integer(self.seed) and 0 <= self.seed < 2**64),
             "seed must be an integer in 0..2^64-1 or None"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def from_kwargs(cls, **kw):
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(names))})")
        return cls(**{k: v for k, v in kw.items() if v is not None})


class Sampler:
    def __init__(self, params: SamplingParams):
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.p
        if p.repeat_penalty != 1.0 and p.repeat_last_n > 0 and len(history):
            recent = np.unique(np.asarray(history[-p.repeat_last_n:], dtype=np.int64))
            vals = logits[recent]
            logits = logits.copy()
            logits[recent] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(logits))
        # candidates: top-k first (cheap partial sort), then the sorted tail filters
        k = logits.shape[0] if p.top_k <= 0 else min(p.top_k, logits.shape[0])
        cand = np.argpartition(-logits, k - 1)[:k] if k < logits.shape[0] else np.arange(logits.shape[0])
        cl = logits[cand].astype(np.float64)
        order = np.argsort(-cl, kind="stable")
        cand, cl = cand[order], cl[order]
        probs = np.exp(cl - cl[0])
        probs /= probs.sum()
        keep = len(probs)
        if p.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        if p.min_p > 0:
            keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
        cand, cl = cand[:keep], cl[:keep] / p.temperature
        probs = np.exp(cl - cl[0])
        probs /= probs.sum()
        return int(cand[self.rng.choice(keep, p=probs)])
