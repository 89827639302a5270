"""One conversation over a Model's shared weights: its own KV cache, cached tokens, sampling
and stats. Sessions of one Model may run in different threads; the model's scheduler steps
them together through one batched forward pass (pylut.scheduler).

    chat = model.session()
    chat.create_chat_completion([{"role": "user", "content": "Hi"}])
    chat.close()   # frees its cache (also on garbage collection)
"""
import logging
import queue
import threading
import time
import uuid
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core, session_file
from .options import _is_int
from .sampling import Sampler, SamplingParams

log = logging.getLogger("pylut")

MIN_PREFIX_COPY = 8  # fewer positions to gain than this: not worth looking at another session


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Session:
    N_SINK = 4  # first positions kept by a context shift (StreamingLLM's attention sinks)

    def __init__(self, model, n_ctx: Optional[int] = None, kv_type: Optional[str] = None,
                 context_shift: Optional[bool] = None):
        """Use model.session(); n_ctx (at most the model's), kv_type and context_shift
        default to the model's. batch_invariant and precision are the model's: every session
        of a model steps through the same kernels."""
        self.model = model
        n_ctx = model.n_ctx if n_ctx is None else n_ctx
        if not _is_int(n_ctx) or not 1 <= n_ctx <= model.n_ctx:
            raise ValueError(f"n_ctx must be an integer in 1..{model.n_ctx} (the model's n_ctx), got {n_ctx!r}")
        kv_type = model.kv_type if kv_type is None else kv_type
        if kv_type not in ("f16", "q8", "q4"):
            raise ValueError(f"kv_type must be 'f16', 'q8' or 'q4', got {kv_type!r}")
        self.n_ctx = int(n_ctx)
        self.context_shift = model.context_shift if context_shift is None else bool(context_shift)
        self.state = model._new_state(self.n_ctx, kv_type)  # the C session: KV cache and scratch
        self.n_shifts = 0
        self._cached: List[int] = []  # tokens whose keys/values are in the state
        self._logits = None           # logits after _cached (None: unknown)
        self._fan_usage = None        # the last call's usage when it sampled n > 1 choices
        self._lock = threading.RLock()  # one call at a time on this session (re-entered by its own thread)
        self.stats = {"prompt_tokens": 0, "prompt_processed": 0, "prompt_reused": 0, "prompt_copied": 0,
                      "prompt_s": 0.0,
                      "gen_tokens": 0, "gen_s": 0.0, "forward_s": 0.0}
        model._sessions.add(self)

    # ---------------------------------------------------------------- life

    @property
    def closed(self) -> bool:
        return self.state is None

    def close(self) -> None:
        """Give back the KV cache; the session cannot be used afterwards. Its blocks stay in
        the model's prefix cache (Model.prefix_cache) for a while, for a later prompt that
        starts the same way, unless the cache is off."""
        with self._lock:
            state, cached = self.state, self._cached
            self.state = None
            self._cached, self._logits = [], None
            self.model._sessions.discard(self)
            if state is not None:
                self.model.prefix_cache.keep(state, cached)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _live(self):
        if self.state is None:
            raise ValueError("the session is closed")
        return self.state

    @property
    def kv_type(self) -> str:
        return self._live().kv_type

    @property
    def n_cached(self) -> int:
        return len(self._cached)

    @property
    def kv_bytes_used(self) -> int:
        """Bytes of cache rows holding this session's positions (every kv head, keys and values)."""
        s = self.state
        if s is None:
            return 0
        cfg = self.model.loaded.config
        rb = _core.kv_row_bytes(s.kv_type, cfg["head_dim"])
        return 2 * rb * sum(s.head_used(l, h) for l in range(cfg["n_layers"]) for h in range(cfg["n_kv_heads"]))

    def usage(self) -> dict:
        """The last call's token counts, OpenAI-shaped; prompt_tokens_details.cached_tokens
        are prompt tokens whose cache was reused (kept, or copied from another session)
        rather than evaluated."""
        if self._fan_usage is not None:
            return self._fan_usage
        st = self.stats
        return {"prompt_tokens": st["prompt_tokens"], "completion_tokens": st["gen_tokens"],
                "total_tokens": st["prompt_tokens"] + st["gen_tokens"],
                "prompt_tokens_details": {"cached_tokens": st["prompt_reused"]}}

    # ---------------------------------------------------------------- evaluation

    def reset(self):
        with self._lock:
            self._live().truncate(0)
            self._cached, self._logits = [], None

    def _forward(self, tokens) -> np.ndarray:
        t0 = time.perf_counter()
        state = self._live()
        before = state.pos
        try:
            logits = self.model.scheduler.forward(state, tokens)
        except MemoryError:  # the KV pool is out of blocks: closed sessions' prefixes go first
            if not len(self.model.prefix_cache):
                raise
            self.model.prefix_cache.clear()
            logits = self.model.scheduler.forward(state, tokens[state.pos - before:])  # what had not run
        self.stats["forward_s"] += time.perf_counter() - t0
        return logits

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after `tokens`, reusing the longest prefix already in the cache, or a longer
        one another idle session of the model holds (copied: a shared system prompt runs once)."""
        with self._lock:
            return self._eval([int(t) for t in tokens])

    def _eval(self, tokens: List[int]) -> np.ndarray:
        state = self._live()
        if not tokens:
            raise ValueError("empty prompt")
        if len(tokens) > self.n_ctx:
            raise ValueError(f"prompt has {len(tokens)} tokens, over n_ctx={self.n_ctx}")
        vocab = self.model.loaded.config["vocab"]
        if min(tokens) < 0 or max(tokens) >= vocab:
            raise ValueError(f"token ids must be in 0..{vocab - 1}")
        t0 = time.perf_counter()
        self.stats["prompt_tokens"] = len(tokens)
        if tokens == self._cached and self._logits is not None:  # nothing new: the logits are known
            self.stats.update(prompt_processed=0, prompt_reused=len(tokens), prompt_copied=0, prompt_s=0.0)
            return self._logits
        common = min(common_prefix(self._cached, tokens), len(tokens) - 1)  # one token must run for logits
        if not state.can_truncate(common):
            common = 0  # streaming heads already dropped what going on from there would see
        state.truncate(common)
        self._cached, self._logits = self._cached[:common], None
        own = common
        common = self._take_prefix(tokens, common)
        logits = self._forward(tokens[common:])
        self.stats.update(prompt_s=time.perf_counter() - t0, prompt_processed=len(tokens) - common,
                          prompt_reused=common, prompt_copied=common - own)
        self._cached, self._logits = tokens, logits
        return logits

    def _take_prefix(self, tokens: List[int], common: int) -> int:
        """Take the longest cached prefix of tokens that an idle session of the model holds (or,
        failing that, a recently closed one: Model.prefix_cache), when longer than the common
        positions already here; returns the positions cached. Full heads' blocks are taken by
        reference (copied only when written), streaming heads' slots copied."""
        best, donor = common, None
        for d in list(self.model._sessions):
            if d is self or d.state is None or d.state.kv_type != self.state.kv_type:
                continue
            c = min(common_prefix(d._cached, tokens), len(tokens) - 1)
            if c > best:
                best, donor = c, d
        if donor is None:  # no open session holds more: a recently closed one may
            n = self.model.prefix_cache.take(self.state, tokens, common + MIN_PREFIX_COPY - 1)
            if n < common + MIN_PREFIX_COPY:
                return common
            self._cached = tokens[:n]
            return n
        if best - common < MIN_PREFIX_COPY:
            return common
        if not donor._lock.acquire(blocking=False):  # busy: its cache is changing
            return common
        try:
            src = donor.state
            if src is None or common_prefix(donor._cached, tokens) < best or src.pos != len(donor._cached):
                return common
            if src.streaming is not None and src.streaming.any():
                if src.pos > self.n_ctx or not src.can_truncate(best):
                    return common
                self.state.copy_from(src)
                self.state.truncate(best)
            else:
                self.state.copy_from(src, best)
            self._cached = tokens[:best]
        finally:
            donor._lock.release()
        return best

    def step(self, token: int) -> np.ndarray:
        """Logits after appending one token to what is cached (the decode step, without
        sampling)."""
        with self._lock:
            return self._step(int(token))

    def _step(self, token: int) -> np.ndarray:
        self._live()
        if len(self._cached) >= self.n_ctx:
            raise ValueError(f"the context is full ({self.n_ctx} tokens); reset() or eval() a shorter prompt")
        logits = self._forward([token])
        self._cached.append(int(token))
        self._logits = logits
        return logits

    def _n_keep(self) -> int:
        """Positions a context shift keeps: the attention sinks (a head plan's, if more)."""
        plan = self.model.head_plan
        sink = plan.sink if plan is not None else 0
        return min(max(self.N_SINK, sink), self.n_ctx - 2)

    def _shift(self):
        """Make room: keep the sinks, drop the older half of the rest (llama.cpp's default)."""
        keep = self._n_keep()
        drop = max(1, (len(self._cached) - keep) // 2)
        self._live().shift(keep, drop)
        self._cached, self._logits = self._cached[:keep] + self._cached[keep + drop:], None
        self.n_shifts += 1
        log.info("context full (%d): dropped %d positions after the first %d", self.n_ctx, drop, keep)

    def copy_from(self, other: "Session") -> None:
        """Take other's cached tokens, keys/values and logits (same kv type and head plan)."""
        if other.n_cached > self.n_ctx:
            raise ValueError(f"{other.n_cached} cached tokens do not fit n_ctx={self.n_ctx}")
        self._live().copy_from(other._live())
        self._cached, self._logits = list(other._cached), other._logits

    # ---------------------------------------------------------------- sessions on disk

    def save_state(self, path) -> None:
        """Write the cached tokens and their keys/values to `path` (pylut.session_file)."""
        self._live()
        session_file.save(self, path)

    def load_state(self, path) -> None:
        """Restore a session written by save_state (see Model.load_state for what is checked)."""
        self._live()
        session_file.load(self, path)
        self._logits = None

    # ---------------------------------------------------------------- generation

    def _generate_tokens(self, prompt_tokens, max_tokens, stop_ids, params):
        sampler = Sampler(params)
        self._fan_usage = None
        logits = self._eval(list(prompt_tokens))
        history = list(prompt_tokens)
        t0 = time.perf_counter()
        self.stats["gen_tokens"] = 0
        self.stats["forward_s"] = 0.0
        for i in range(max_tokens):
            tok = sampler(logits, history)
            if tok in stop_ids:
                self.stats["gen_s"] = time.perf_counter() - t0
                yield tok, "stop"
                return
            history.append(tok)
            self.stats["gen_tokens"] += 1
            last = i == max_tokens - 1
            if not last and len(self._cached) >= self.n_ctx:
                if not self.context_shift or self.n_ctx <= self._n_keep() + 1:
                    self.stats["gen_s"] = time.perf_counter() - t0
                    yield tok, "length"
                    return
                self._shift()
            yield tok, None
            if not last:
                logits = self._step(tok)
            self.stats["gen_s"] = time.perf_counter() - t0
        yield None, "length"

    def _prompt_tokens(self, prompt, special=False) -> List[int]:
        self._live()
        if isinstance(prompt, str):
            ptoks = self.model.tokenize(prompt, special=special)
        else:
            ptoks = list(prompt)
            vocab = self.model.loaded.config["vocab"]
            if not all(_is_int(t) and 0 <= t < vocab for t in ptoks):
                raise ValueError(f"prompt token ids must be integers in 0..{vocab - 1}")
            ptoks = [int(t) for t in ptoks]
        if not ptoks:
            raise ValueError("empty prompt")
        return ptoks

    def _stop_args(self, max_tokens, stop, ignore_eos=False):
        """(max_tokens, stop strings, stop token ids), checked: a bad value raises here, before
        any token is generated or any fan-out thread starts."""
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of them")
        tokenizer = self.model.tokenizer
        stop_ids = set() if ignore_eos else set(tokenizer.eot_ids)
        if tokenizer.eos_id is not None and not ignore_eos:
            stop_ids.add(tokenizer.eos_id)
        return int(max_tokens), stops, stop_ids

    def _stream_text(self, ptoks, max_tokens, stop, params, ignore_eos=False):
        """Yields (text_piece, finish_reason); stop strings are cut, never emitted."""
        max_tokens, stops, stop_ids = self._stop_args(max_tokens, stop, ignore_eos)
        return self._text_events(ptoks, max_tokens, stops, stop_ids, params)

    def _text_events(self, ptoks, max_tokens, stops, stop_ids, params):
        dec = self.model.tokenizer.stream_decoder()
        held = ""  # text that might be the start of a stop string
        keep = max((len(s) for s in stops), default=0)
        with self._lock:
            self._live()
            for tok, reason in self._generate_tokens(ptoks, max_tokens, stop_ids, params):
                if tok is not None and reason != "stop":
                    held += dec.push(tok)
                if reason is not None:
                    held += dec.flush()
                for s in stops:
                    at = held.find(s)
                    if at >= 0:
                        yield held[:at], "stop"
                        return
                if reason is not None:
                    yield held, reason
                    return
                if keep:
                    safe = len(held) - (keep - 1)
                    if safe > 0:
                        yield held[:safe], None
                        held = held[safe:]
                elif held:
                    yield held, None
                    held = ""

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: int = 128, stream: bool = False,
                 stop=None, ignore_eos: bool = False, **sampling):
        """Continue `prompt`. Returns the text, or an iterator of text pieces with stream=True.
        Sampling options: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed."""
        params = SamplingParams.from_kwargs(**sampling)
        it = self._stream_text(self._prompt_tokens(prompt), max_tokens, stop, params, ignore_eos=ignore_eos)
        if stream:
            return (piece for piece, _ in it if piece)
        return "".join(piece for piece, _ in it)

    # ---------------------------------------------------------------- OpenAI-shaped API

    def create_completion(self, prompt: Union[str, Sequence[int]], max_tokens: int = 16, stream: bool = False,
                          stop=None, ignore_eos: bool = False, n: int = 1, **sampling):
        """n > 1: n continuations of one prompt evaluation (the prompt's cache is copied into
        n - 1 helper sessions, which step together with this one); choice i samples with
        seed + i when a seed is given."""
        params = SamplingParams.from_kwargs(**sampling)
        if not _is_int(n) or not 1 <= n <= 64:
            raise ValueError(f"n must be an integer in 1..64, got {n!r}")
        ptoks = self._prompt_tokens(prompt)
        cid, created, name = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), self.model.name

        def chunk(choices):
            return {"id": cid, "object": "text_completion", "created": created, "model": name, "choices": choices}

        def choice(i, text, reason):
            return {"text": text, "index": i, "logprobs": None, "finish_reason": reason}
        if n == 1:
            events = ((0, t, r) for t, r in self._stream_text(ptoks, max_tokens, stop, params, ignore_eos))
        else:
            self._stop_args(max_tokens, stop, ignore_eos)  # bad arguments raise before threads start
            events = self._fan_out(ptoks, int(n), max_tokens, stop, params, ignore_eos)
        if stream:
            return (chunk([choice(i, t, r)]) for i, t, r in events if t or r)
        texts, reasons = [""] * n, [None] * n
        for i, t, r in events:
            texts[i] += t
            reasons[i] = r or reasons[i]
        out = chunk([choice(i, texts[i], reasons[i]) for i in range(n)])
        out["usage"] = self.usage()
        return out

    def _fan_out(self, ptoks, n, max_tokens, stop, params, ignore_eos):
        """Events (choice, text, reason) of n continuations, each in its own thread."""
        with self._lock:
            self._live()
            self.stats["forward_s"] = 0.0
            self.eval(ptoks)
            evaluated = dict(self.stats)
        helpers = []
        try:
            for _ in range(n - 1):
                h = Session(self.model, self.n_ctx, self.kv_type, self.context_shift)
                h.copy_from(self)
                helpers.append(h)
        except BaseException:
            for h in helpers:
                h.close()
            raise
        sessions = [self] + helpers
        events: "queue.Queue" = queue.Queue()
        done, cancel = object(), threading.Event()

        def run(i, s):
            p = params if params.seed is None else SamplingParams(**dict(vars(params), seed=params.seed + i))
            try:
                for t, r in s._stream_text(ptoks, max_tokens, stop, p, ignore_eos):
                    if cancel.is_set():  # the consumer stopped reading
                        break
                    events.put((i, t, r))
            except BaseException as e:  # handed to the consumer
                events.put((i, e, done))
            else:
                events.put((i, None, done))
        threads = [threading.Thread(target=run, args=(i, s), daemon=True) for i, s in enumerate(sessions)]
        for t in threads:
            t.start()
        gen_tokens, error, left = 0, None, n
        try:
            while left:
                i, t, r = events.get()
                if r is done:
                    left -= 1
                    gen_tokens += sessions[i].stats["gen_tokens"]
                    error = error or t
                elif error is None:
                    yield i, t, r
        finally:
            cancel.set()
            for t in threads:
                t.join()
            for h in helpers:
                h.close()
        if error is not None:
            raise error
        self._fan_usage = {"prompt_tokens": len(ptoks), "completion_tokens": gen_tokens,
                           "total_tokens": len(ptoks) + gen_tokens,
                           "prompt_tokens_details": {"cached_tokens": evaluated["prompt_reused"]}}

    def create_chat_completion(self, messages: List[Dict[str, str]], max_tokens: Optional[int] = None,
                               stream: bool = False, stop=None, n: int = 1, **sampling):
        """n > 1: n answers of one prompt evaluation, as create_completion."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        params = SamplingParams.from_kwargs(**sampling)
        if not _is_int(n) or not 1 <= n <= 64:
            raise ValueError(f"n must be an integer in 1..64, got {n!r}")
        model = self.model
        self._live()
        prompt = model.chat_template.render(messages, add_generation_prompt=True)
        add_bos = model.tokenizer.add_bos and not prompt.startswith(model.chat_template.bos or "\0")
        ptoks = model.tokenize(prompt, add_bos=add_bos, special=True)
        if max_tokens is None:
            max_tokens = max(1, self.n_ctx - len(ptoks))
        cid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), model.name
        if n == 1:
            events = ((0, t, r) for t, r in self._stream_text(ptoks, max_tokens, stop, params))
        else:
            self._stop_args(max_tokens, stop)  # bad arguments raise before threads start
            events = self._fan_out(ptoks, int(n), max_tokens, stop, params, False)
        if stream:
            def chunks():
                def chunk(i, delta, reason):
                    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                            "choices": [{"index": i, "delta": delta, "finish_reason": reason}]}
                for i in range(n):
                    yield chunk(i, {"role": "assistant"}, None)
                for i, t, r in events:
                    if t or r:
                        yield chunk(i, {"content": t} if t else {}, r)
            return chunks()
        texts, reasons = [""] * n, [None] * n
        for i, t, r in events:
            texts[i] += t
            reasons[i] = r or reasons[i]
        return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                             "finish_reason": reasons[i]} for i in range(n)],
                "usage": self.usage()}
