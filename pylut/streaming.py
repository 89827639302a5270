"""Streaming heads (DuoAttention / RazorAttention): most kv heads keep only the first `sink`
positions and the `window` most recent ones; a few "retrieval" heads keep the whole cache.

    plan = pylut.calibrate_heads(model, retrieval_fraction=0.25, sink=4, window=256)
    plan.save("plan.json")
    model = pylut.load("model.gguf", head_plan="plan.json")   # smaller KV cache

A HeadPlan is plain JSON: the model it belongs to, sink, window, the retrieval kv heads of
every layer and the calibration scores. Calibration is an ablation pass, no training: each
kv head in turn is made streaming alone, the calibration prompt runs again, and the head's
score is how far the logits of the prompt's last positions move (KL divergence from full
attention, in nats). The highest-scoring heads become retrieval heads. The default prompt
is a needle in a haystack built from the model's own vocabulary: random words, a pass key
phrase deep in them, and the question at the end - what a head that only sees its window
cannot answer."""
import hashlib
import json
import logging
import os
from typing import List, Optional, Sequence, Union

import numpy as np

from . import _core

log = logging.getLogger("pylut")

FORMAT = "pylut-head-plan/1"
IDENTITY_KEYS = ("arch", "n_layers", "n_kv_heads", "head_dim", "max_ctx")


class HeadPlan:
    """Which kv heads keep everything (retrieval) and which stream (sink + window)."""

    def __init__(self, sink: int, window: int, retrieval: Sequence[Sequence[int]], model: dict,
                 scores: Optional[Sequence[Sequence[float]]] = None, calibration: Optional[dict] = None):
        self.sink, self.window = int(sink), int(window)
        self.model = dict(model)
        self.retrieval = [sorted(int(h) for h in layer) for layer in retrieval]
        self.scores = None if scores is None else [[float(s) for s in layer] for layer in scores]
        self.calibration = dict(calibration or {})
        self._validate()

    def _validate(self):
        missing = [k for k in IDENTITY_KEYS if k not in self.model]
        if missing:
            raise ValueError(f"head plan: model identity lacks {', '.join(missing)}")
        n_layers, n_kv = int(self.model["n_layers"]), int(self.model["n_kv_heads"])
        if self.sink < 0 or self.window < 1:
            raise ValueError(f"head plan: need sink >= 0 and window >= 1, got sink={self.sink}, window={self.window}")
        if len(self.retrieval) != n_layers:
            raise ValueError(f"head plan: retrieval lists {len(self.retrieval)} layers, the model has {n_layers}")
        for l, heads in enumerate(self.retrieval):
            if any(not 0 <= h < n_kv for h in heads) or len(set(heads)) != len(heads):
                raise ValueError(f"head plan: layer {l} names kv heads {heads}, the model has 0..{n_kv - 1}")
        if self.scores is not None and (len(self.scores) != n_layers or any(len(s) != n_kv for s in self.scores)):
            raise ValueError(f"head plan: scores must be [{n_layers}][{n_kv}]")

    # ---------------------------------------------------------------- views

    @property
    def n_heads(self) -> int:
        return int(self.model["n_layers"]) * int(self.model["n_kv_heads"])

    @property
    def n_retrieval(self) -> int:
        return sum(len(h) for h in self.retrieval)

    def streaming_mask(self) -> np.ndarray:
        """bool [n_layers, n_kv_heads]: True for a streaming head."""
        mask = np.ones((int(self.model["n_layers"]), int(self.model["n_kv_heads"])), bool)
        for l, heads in enumerate(self.retrieval):
            mask[l, heads] = False
        return mask

    def key(self) -> str:
        """Identifies what the cache layout depends on (saved sessions record it)."""
        desc = {"sink": self.sink, "window": self.window, "retrieval": self.retrieval}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> dict:
        return {"sink": self.sink, "window": self.window, "retrieval_heads": self.n_retrieval,
                "streaming_heads": self.n_heads - self.n_retrieval,
                "retrieval": [[l, h] for l, heads in enumerate(self.retrieval) for h in heads]}

    def __repr__(self):
        return (f"HeadPlan({self.n_retrieval}/{self.n_heads} retrieval heads, sink={self.sink}, "
                f"window={self.window})")

    def __eq__(self, other):
        return isinstance(other, HeadPlan) and self.to_dict() == other.to_dict()

    # ---------------------------------------------------------------- model identity

    @staticmethod
    def identity(model) -> dict:
        """What a plan records of the model it was calibrated on."""
        cfg = model.loaded.config
        ident = {k: cfg[k] for k in IDENTITY_KEYS}
        ident["fingerprint"] = model._fingerprint()
        ident["name"] = model.name
        return ident

    def check_model(self, model) -> None:
        """ValueError when this plan was made for another model."""
        mine = {k: self.model.get(k) for k in IDENTITY_KEYS}
        theirs = HeadPlan.identity(model)
        diff = [k for k in IDENTITY_KEYS if mine[k] != theirs[k]]
        if diff:
            raise ValueError("head plan is for another model: " + ", ".join(
                f"{k} {mine[k]} != {theirs[k]}" for k in diff) + f" (plan made on {self.model.get('name')!r})")
        # (plans written before the fingerprint sampled weight bytes recorded the shapes only)
        if self.model.get("fingerprint") not in (None, theirs["fingerprint"], model._fingerprint(shapes_only=True)):
            raise ValueError(f"head plan is for another model: the weights' fingerprint differs (plan made on "
                             f"{self.model.get('name')!r}, this is {model.name!r}); calibrate it on this model")

    # ---------------------------------------------------------------- files

    def to_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "sink": self.sink, "window": self.window,
                "retrieval": self.retrieval, "scores": self.scores, "calibration": self.calibration}

    @classmethod
    def from_dict(cls, d: dict) -> "HeadPlan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a head plan (format {d.get('format') if isinstance(d, dict) else None!r}, "
                             f"expected {FORMAT!r})")
        try:
            return cls(d["sink"], d["window"], d["retrieval"], d["model"], d.get("scores"), d.get("calibration"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"corrupt head plan ({type(e).__name__}: {e})") from None

    def save(self, path) -> None:
        tmp = os.fspath(path) + ".tmp"
        with open(tmp, "w") as f:  # one line per field: readable, diffable
            f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict().items())
                    + "\n}\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "HeadPlan":
        if not os.path.exists(path):
            raise FileNotFoundError(f"head plan not found: {os.fspath(path)}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a head plan (bad JSON: {e})") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def resolve(plan: Union[None, str, os.PathLike, HeadPlan]) -> Optional[HeadPlan]:
    if plan is None or isinstance(plan, HeadPlan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return HeadPlan.load(plan)
    raise TypeError(f"head_plan must be a path or a HeadPlan, got {type(plan).__name__}")


# ---------------------------------------------------------------- calibration prompt

def needle_prompt(model, n_tokens: int, seed: int = 0, depth: float = 0.3) -> List[int]:
    """A needle in a haystack from the model's own vocabulary: random words, a pass-key
    sentence at `depth` of the way in, the question at the end (about n_tokens tokens)."""
    return _needle(model, n_tokens, seed, depth)[0]


def _needle(model, n_tokens, seed, depth, reserve=0):
    """(needle_prompt's tokens, the pass key); reserve: tokens to leave for the answer."""
    tok = model.tokenizer
    rng = np.random.default_rng(seed)
    words = []
    for i in rng.permutation(tok.n_vocab)[:4000]:
        piece = tok.token_to_piece(int(i)).decode("utf-8", "replace").strip()
        if piece.isalpha() and piece.isascii() and 3 <= len(piece) <= 10:
            words.append(piece.lower())
        if len(words) == 400:
            break
    if len(words) < 20:
        raise ValueError("the vocabulary has too few plain words for a synthetic needle prompt; "
                         "calibrate on a text instead (text= / --text)")
    key = "".join(str(d) for d in rng.integers(0, 10, 5))
    needle = model.tokenize(f" The pass key is {key}. Remember it: {key}.", add_bos=False)
    question = model.tokenize(" What is the pass key? The pass key is", add_bos=False)
    head = model.tokenize("", add_bos=None)  # the BOS, when the model wants one

    def filler(n):
        ids: List[int] = []
        while len(ids) < n:
            sentence = " ".join(rng.choice(words, rng.integers(5, 12))).capitalize() + "."
            ids += model.tokenize(" " + sentence, add_bos=False)
        return ids[:n]
    room = n_tokens - len(head) - len(needle) - len(question) - reserve
    if room < 8:
        raise ValueError(f"n_tokens={n_tokens} is too short for a needle prompt")
    before = int(room * depth)
    return head + filler(before) + needle + filler(room - before) + question, key


# ---------------------------------------------------------------- calibration

def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) over rows, in nats (float64)."""
    p = p_logits.astype(np.float64)
    q = q_logits.astype(np.float64)
    p -= p.max(-1, keepdims=True)
    q -= q.max(-1, keepdims=True)
    lp = p - np.log(np.exp(p).sum(-1, keepdims=True))
    lq = q - np.log(np.exp(q).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def calibrate_heads(model, text: Union[None, str, Sequence[int]] = None, retrieval_fraction: float = 0.25,
                    sink: int = 4, window: int = 256, n_tokens: Optional[int] = None, n_last: int = 8,
                    seed: int = 0) -> HeadPlan:
    """Score every kv head by ablation and keep the top retrieval_fraction (at least one) as
    retrieval heads. text: the calibration prompt (str, or token ids); default a synthetic
    needle prompt of n_tokens (default min(n_ctx, sink + 3 * window)) tokens followed by its
    answer, the pass key. The score of a head is the KL divergence of the next-token
    distributions when that head alone streams, against full attention: at the positions that
    predict the answer (the needle prompt), or the last n_last positions (text). Cost: one
    prefill of the prompt per kv head (minus the first sink + window positions, which no
    streaming head changes)."""
    if not 0.0 <= retrieval_fraction <= 1.0:
        raise ValueError(f"retrieval_fraction must be in [0, 1], got {retrieval_fraction}")
    if sink < 0 or window < 1:
        raise ValueError(f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
    cfg = model.loaded.config
    if text is None:
        n = n_tokens if n_tokens is not None else min(model.n_ctx, sink + 3 * window)
        answer = model.tokenize(" " + "0" * 5, add_bos=False)  # the key's length in tokens
        tokens, key = _needle(model, n, seed, 0.3, reserve=len(answer))
        answer = model.tokenize(" " + key, add_bos=False)
        # teacher-forced answer: the positions from the question's end on predict the key
        tokens, n_last, kind = tokens + answer[:-1], len(answer), "needle"
    elif isinstance(text, str):
        tokens, kind = model.tokenize(text), "text"
    else:
        tokens, kind = [int(t) for t in text], "tokens"
    if len(tokens) > model.n_ctx:
        tokens = tokens[-model.n_ctx:]
        log.info("calibration prompt cut to its last %d tokens (n_ctx)", model.n_ctx)
    prefix = sink + window  # a query before this sees the same positions either way
    if len(tokens) <= prefix:
        raise ValueError(f"the calibration prompt has {len(tokens)} tokens: it must be longer than sink + window "
                         f"= {prefix} for a streaming head to differ from a full one")
    n_layers, n_kv = cfg["n_layers"], cfg["n_kv_heads"]
    n = len(tokens)
    last = max(1, min(n_last, n - prefix))  # scored positions: the ones a streaming head changes
    kv_type, pool = model.kv_type, model.pool

    def run(session, start):
        if start < n - last:
            session.forward(tokens[start:n - last], pool)
        return session.forward(tokens[n - last:], pool, all_logits=True)

    full = _core.Session(model.weights, n, model.max_batch, kv_type)
    full.forward(tokens[:prefix], pool)
    ref = run(full, prefix)
    scores = np.zeros((n_layers, n_kv))
    for l in range(n_layers):
        for h in range(n_kv):
            mask = np.zeros((n_layers, n_kv), bool)
            mask[l, h] = True
            s = _core.Session(model.weights, n, model.max_batch, kv_type, streaming=mask, sink=sink, window=window)
            # the shared prefix: copied from the full run (a streaming head's first
            # sink + window slots are its positions, as in a full head)
            for kv in (0, 1):
                for ll in range(n_layers):
                    for hh in range(n_kv):
                        s.set_head_kv(kv, ll, hh, full.head_kv(kv, ll, hh, prefix))
            s.set_stream(prefix, sink)
            scores[l, h] = _kl(ref, run(s, prefix))
            log.info("calibration: layer %d kv head %d: KL %.4g", l, h, scores[l, h])
    n_keep = max(1, int(round(retrieval_fraction * n_layers * n_kv)))
    order = np.argsort(-scores, axis=None, kind="stable")[:n_keep]
    retrieval = [[] for _ in range(n_layers)]
    for i in order:
        retrieval[int(i) // n_kv].append(int(i) % n_kv)
    return HeadPlan(sink, window, retrieval, HeadPlan.identity(model), scores.tolist(),
                    {"prompt": kind, "tokens": n, "scored_positions": last, "metric": "kl_nats",
                     "retrieval_fraction": retrieval_fraction, "seed": seed})
