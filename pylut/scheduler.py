"""The model's step scheduler: forward requests of sessions used from different threads are
gathered and run as one batched forward pass over all their tokens (continuous batching).

A request is a session's next tokens (a prompt, or one decode token). No thread of its own:
a requesting thread that finds no step running becomes the runner and steps until its own
tokens are in, then hands the role on. Before each step the runner waits at most
`window_s` for the sessions of the previous step to come back (a decode loop samples and
asks again within microseconds; a thread blocked elsewhere, say on a slow socket, is simply
not in the next step). A step takes up to `step_tokens` tokens: every pending decode token
first, then prompt chunks in arrival order (chunked prefill: a long prompt runs over several
steps, so it never stalls the others' decodes). One C call (pylut_forward_multi) runs the
matmuls once over all of them and attention per sequence over its own cache; each request
whose tokens are all in gets its last logits."""
import logging
import threading
import time
from typing import List, Optional

import numpy as np

from . import _core

log = logging.getLogger("pylut")


class _Request:
    __slots__ = ("state", "tokens", "done_tokens", "done", "logits", "error")

    def __init__(self, state, tokens):
        self.state, self.tokens, self.done_tokens, self.done = state, tokens, 0, False
        self.logits: Optional[np.ndarray] = None
        self.error: Optional[BaseException] = None


class Scheduler:
    """step_tokens: most tokens of one step (default the model's max_batch); window_s: how
    long a step waits for the previous step's sessions to ask again. Both may be set."""

    def __init__(self, model, step_tokens: Optional[int] = None, window_s: float = 0.002):
        self.model = model
        self.step_tokens = int(step_tokens or model.max_batch)
        self.window_s = float(window_s)
        self._cv = threading.Condition()
        self._pending: List[_Request] = []
        self._running = False   # a thread is stepping
        self._previous = set()  # ids of the states in the last step
        self._workspace = None  # the step's activation buffers (a C session without a real cache)
        self.stats = {"steps": 0, "tokens": 0, "max_seqs": 0, "busy_s": 0.0, "idle_s": 0.0}
        # since when a request has waited while no step ran (None: none has): the time to
        # the next step's start is the scheduler's own overhead (gather window, hand-over
        # of the runner role, Python), which idle_s sums
        self._waiting_since: Optional[float] = None
        self._stepping = False

    def info(self) -> dict:
        """Counters for /metrics: steps run, tokens stepped, most sequences in one step,
        seconds spent in steps (busy_s) and between steps while requests waited (idle_s),
        requests waiting now, and the settings."""
        with self._cv:
            pending = len(self._pending)
        return dict(self.stats, pending=pending, step_tokens=self.step_tokens, window_s=self.window_s)

    # ---------------------------------------------------------------- the callers' side

    def forward(self, state, tokens) -> np.ndarray:
        """Logits after `tokens` appended to the C session `state`, run in a batched step
        (blocks the calling thread until its tokens are all in)."""
        toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32).reshape(-1))
        if toks.size < 1:
            raise ValueError("forward needs at least one token")
        if state.pos + toks.size > state.n_ctx:
            raise ValueError(f"{state.pos} cached + {toks.size} new tokens exceed n_ctx={state.n_ctx}")
        req = _Request(state, toks)
        with self._cv:
            self._pending.append(req)
            if self._waiting_since is None and not self._stepping:
                self._waiting_since = time.perf_counter()
            self._cv.notify_all()
            while not req.done and self._running:
                self._cv.wait()
            if not req.done:
                self._running = True
        if not req.done:
            self._lead(req)
        if req.error is not None:
            raise req.error
        return req.logits

    def _lead(self, mine):
        """Run steps until mine is done; then the role passes to a waiting thread."""
        try:
            while not mine.done:
                with self._cv:
                    deadline = time.monotonic() + self.window_s
                    while True:  # gather: the previous step's sessions usually come straight back
                        waiting = self._previous - {id(r.state) for r in self._pending}
                        left = deadline - time.monotonic()
                        if not waiting or left <= 0:
                            break
                        self._cv.wait(left)
                    step = self._pick()
                    self._stepping = True
                    t0 = time.perf_counter()
                    if self._waiting_since is not None:
                        self.stats["idle_s"] += t0 - self._waiting_since
                        self._waiting_since = None
                self._run(step)
                with self._cv:
                    self._previous = {id(r.state) for r, _ in step}
                    self._pending = [r for r in self._pending if not r.done]
                    self._stepping = False
                    self._waiting_since = time.perf_counter() if self._pending else None
                    self._cv.notify_all()
        finally:
            with self._cv:
                self._running = False
                self._cv.notify_all()

    def _pick(self):
        """(request, n_tokens) pairs of the next step within the token budget: decodes first."""
        budget, step = self.step_tokens, []
        for r in sorted(self._pending, key=lambda r: len(r.tokens) - r.done_tokens > 1):  # stable: FIFO
            if budget <= 0 or len(step) == self.step_tokens:
                break
            n = min(len(r.tokens) - r.done_tokens, budget, r.state.max_batch)
            step.append((r, n))
            budget -= n
        return step

    def _run(self, step):
        t0 = time.perf_counter()
        try:
            chunks = [r.tokens[r.done_tokens:r.done_tokens + n] for r, n in step]
            pool = self.model.pool
            if len(step) == 1:
                logits = [step[0][0].state.forward(chunks[0], pool)]
            else:
                if self._workspace is None or self._workspace.max_batch < self.step_tokens:
                    m = self.model
                    self._workspace = _core.Session(m.weights, 1, self.step_tokens, "f16",
                                                    batch_invariant=m.batch_invariant,
                                                    split_int8=m.precision == "high")
                logits = _core.forward_multi(self._workspace, [r.state for r, _ in step], chunks, pool)
            for (r, n), lg in zip(step, logits):
                r.done_tokens += n
                if r.done_tokens == len(r.tokens):
                    r.logits = lg
                    r.done = True
            self.stats["steps"] += 1
            self.stats["tokens"] += sum(n for _, n in step)
            self.stats["max_seqs"] = max(self.stats["max_seqs"], len(step))
            self.stats["busy_s"] += time.perf_counter() - t0
        except BaseException as e:  # the requests see it; the next step goes on without them
            for r, _ in step:
                r.error, r.done = e, True
