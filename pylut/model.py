"""The embeddable API: load a model file, generate text, OpenAI-shaped completions.

    model = pylut.load("model.gguf", n_ctx=2048)
    print(model.generate("Once upon a time", max_tokens=32, temperature=0))
    for piece in model.generate("Hi", stream=True): print(piece, end="")
    model.create_chat_completion([{"role": "user", "content": "Hello"}])
"""
import logging
import os
import threading
import time
import weakref
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core, arch, rope, session_file, streaming
from .prefix_cache import PrefixCache
from .scheduler import Scheduler
from .session import Session
from .tokenizer.chat_template import ChatTemplate
from .kernels import cpu_features, get_pool, packed_types, physical_cores
from .options import LoadOptions

log = logging.getLogger("pylut")


def _physical_memory() -> int:
    """Bytes of RAM (the KV pool's default cap is a share of it); 8 GiB where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def load(path, options: Optional[LoadOptions] = None, **settings) -> "Model":
    """Load a model and return a :class:`Model` ready to generate.

    Parameters
    ----------
    path : str or os.PathLike
        A GGUF file (v2/v3; llama, qwen2 or bitnet architecture), a Hugging Face folder
        (``config.json`` + ``*.safetensors`` + ``tokenizer.json``; float weights are
        quantized on load, GPTQ checkpoints keep their codes) or a ``.pylut`` pack written
        by ``pylut convert`` (its tokenizer is read from the GGUF it was converted from).
    options : LoadOptions or None, default None
        Every setting below in one validated object (:class:`pylut.LoadOptions`); the
        settings may also be given as keywords, which replace its fields.
    n_ctx : int or None, default None
        Context length in tokens, 1 to the model's own; None takes min(4096, the model's).
    n_threads : int or None, default None
        Threads of the kernel pool; None takes the number of physical cores.
    bits : {1, 2, 3, 4, 5, 6, 8, 'f16'} or None, default None
        Width that F16/BF16/F32 matrices are quantized to, or 'f16' to keep them as fp16
        (exact for F16; BF16/F32 rounded, listed in ``loaded.lossy``) multiplied with fp32
        activations, at 4x the bytes of 4 bits. None: 4, or 'f16' with precision='high'.
        Integer-grid blocks (Q4_0, Q2_K, TQ1_0, ...) keep their own codes and ignore it.
    max_batch : int, default 64
        Most tokens one forward step takes; longer prompts run in chunks of this size.
    chat_template : {None, 'chatml', 'llama-2', 'llama-3', 'zephyr', 'phi-3', 'phi-4', 'gemma', 'mistral',
                     'falcon3'}, default None
        A built-in chat template to use instead of the model's. None uses the file's
        (rendered by Jinja2 when installed, else by the closest built-in).
    cache : bool, default True
        Keep the packed model in pylut's cache directory (``$PYLUT_CACHE_DIR``, default
        ``~/.cache/pylut``) so the next load maps it instead of repacking.
    context_shift : bool, default True
        When generation fills ``n_ctx``, drop the older half of the context (keeping the
        first tokens, the attention sinks) and go on; False stops with
        ``finish_reason="length"``.
    requant : {None, 'q4', 'q3', 'q2', 'ternary'}, default None
        Requantize every matrix to that width: fewer bytes per token, lossy (round to
        nearest; small models do not survive 3 bits or less).
    kv_type : {'f16', 'q8', 'q4'}, default 'f16'
        Storage of the KV cache: fp16; int8 with an fp16 scale per 32 elements (0.53x the
        bytes); or 4-bit with an fp16 scale per 32 (0.28x, Walsh-Hadamard rotated).
        Attention reads it as stored.
    head_plan : HeadPlan, str, os.PathLike or None, default None
        A plan from :func:`pylut.calibrate_heads`, or the path of a saved one: its
        streaming kv heads keep only the attention sinks and a recent window, in a smaller
        cache. None keeps every head's whole cache.
    batch_invariant : bool, default False
        Keep prompts on the table-lookup kernels. By default, on a CPU with AVX-512 VNNI,
        AVX2 or ARM dotprod, prompt chunks of 2- to 8-bit matrices from a few tokens on (by
        ISA and bit width: ``PYLUT_I8_FROM_*`` in the kernel table; never ternary or 1-bit)
        multiply int8 activations instead, which is faster but makes logits move at the
        activation-rounding level with how a prompt is chunked. True makes every token's
        results independent of its chunk, bit for bit (prefix reuse then equals a fresh
        run exactly).
    ternary : {'auto', 't3', 'b2'}, default 'auto'
        How a GGUF file's ternary weights (TQ1_0, TQ2_0, BitNet's ternary floats) are
        packed: 't3' densely (1.67 bits/weight) or 'b2' as two bit planes (2.06); both are
        exact. 'auto' takes the faster one on this CPU: b2 where the kernels are AVX2, and
        for TQ1_0/TQ2_0 files on AVX-512VBMI (their T3 groups have no int8 prompt path there),
        t3 elsewhere (:func:`pylut.kernels.ternary_layout`).
    precision : {'fast', 'high'}, default 'fast'
        'fast' multiplies weights with int8 activations (the tables' int8 entries, or int8
        per scale group on the prompt path), about 2^-8 of a group's largest value: a
        near-tie between two tokens can go either way, as in llama.cpp. 'high' reads every
        activation as two int8 parts, its value and the rounding residual (~2^-15), through
        the int8 GEMM in every step (ternary weights as b2, so 't3' is refused): logits
        then follow a float forward pass over the same weights and greedy text matches it,
        at about half the decode speed. Float matrices are then kept as fp16 unless ``bits``
        is given, so a float model's logits follow the float model itself.

    Returns
    -------
    Model

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError, TypeError
        A setting outside the values above (the message names it), or ``n_ctx`` over the
        model's context.
    pylut.errors.ModelFileError
        The file is not a model pylut can read (the message says why).
    """
    from .formats.model_file import open_model
    options = LoadOptions.of(options, **settings)
    t0 = time.perf_counter()
    loaded, tokenizer = open_model(path, options)
    log.info("loaded %s in %.2f s", os.fspath(path), time.perf_counter() - t0)
    return Model(loaded, tokenizer, options)


class Model:
    def __init__(self, loaded, tokenizer, options: Optional[LoadOptions] = None, **settings):
        """A model over packed weights (a LoadedModel) and their tokenizer; the run settings
        of `options` (LoadOptions, keywords replacing its fields) apply, the packing ones
        were the loader's."""
        options = LoadOptions.of(options, **settings)
        self.options = options
        n_ctx, n_threads, max_batch, precision = options.n_ctx, options.n_threads, options.max_batch, options.precision
        self.context_shift = bool(options.context_shift)
        self._fingerprint_hex = None
        self.loaded = loaded
        self.tokenizer = tokenizer
        cfg = loaded.config
        if n_ctx is None:
            n_ctx = min(4096, cfg["max_ctx"])
        if n_ctx > cfg["max_ctx"]:
            raise ValueError(f"n_ctx={n_ctx} is over the model's context length {cfg['max_ctx']}")
        if tokenizer.n_vocab > cfg["vocab"]:  # (checkpoints may pad the vocabulary: fewer is fine)
            raise ValueError(f"tokenizer has {tokenizer.n_vocab} tokens but the model's vocabulary is {cfg['vocab']}")
        if precision == "high":
            t3 = next((name for name, t in loaded.tensors.items()
                       if isinstance(t, _core.QMatrix) and t.type == _core.TYPE_T3), None)
            if t3 is not None:
                raise ValueError(f"precision='high' needs every matrix on the int8 path, but {t3} is packed "
                                 "as T3 (dense ternary); load the GGUF with ternary='b2'")
        self.precision = precision
        self.n_threads = physical_cores() if n_threads is None else int(n_threads)
        self.pool = get_pool(self.n_threads)
        # LongRoPE's factor set depends on the context, so the weights are wired for this one
        self.weights = _core.Model(rope.for_context(cfg, n_ctx), loaded.tensors)
        self.name = loaded.name or os.path.basename(loaded.path)
        self.max_batch = int(max_batch)
        self.head_plan = streaming.resolve(options.head_plan)
        kv_type = options.kv_type
        self.kv_type = kv_type
        self.batch_invariant = bool(options.batch_invariant)
        self.n_ctx = int(n_ctx)
        if self.head_plan is not None:
            self.head_plan.check_model(self)
            p = self.head_plan
            if p.sink + 1 >= n_ctx or p.window > n_ctx:
                raise ValueError(f"head plan (sink={p.sink}, window={p.window}) does not fit n_ctx={n_ctx}")
        self._sessions = weakref.WeakSet()  # every open Session of this model (kv_stats)
        self._kv_pools = {}                 # kv_type -> _core.KVPool its sessions share (None: nothing paged)
        self._kv_pools_lock = threading.Lock()
        self.prefix_cache = PrefixCache()   # closed sessions' blocks, for prompts that start the same way
        self.scheduler = Scheduler(self)
        self._claim_lock = threading.Lock()
        self._default_claimed = False
        self._default = Session(self)       # what model.generate() etc. run on when it is free
        if self.head_plan is not None:
            log.info("head plan: %d of %d kv heads keep the whole cache; KV cache %.1f MiB",
                     p.n_retrieval, p.n_heads, self.state.kv_bytes / 2**20)
        tok = tokenizer

        def piece(i):
            return tok.token_to_piece(i, special=True).decode("utf-8", "replace") if i is not None else ""
        self.chat_template = ChatTemplate(tok.chat_template, bos=piece(tok.bos_id), eos=piece(tok.eos_id),
                                          arch=loaded.arch, override=options.chat_template)

    # ---------------------------------------------------------------- text <-> tokens

    def tokenize(self, text: str, add_bos: Optional[bool] = None, special: bool = False) -> List[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_bos=self.tokenizer.add_bos if add_bos is None else add_bos,
                                     parse_special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def _new_state(self, n_ctx: int, kv_type: str) -> "_core.Session":
        """A C session (KV cache and scratch) over these weights, in this model's modes."""
        modes = dict(batch_invariant=self.batch_invariant, split_int8=self.precision == "high")
        p = self.head_plan
        pool = self.kv_pool(kv_type)
        if p is None:
            return _core.Session(self.weights, int(n_ctx), self.max_batch, kv_type, pool=pool, **modes)
        return _core.Session(self.weights, int(n_ctx), self.max_batch, kv_type, streaming=p.streaming_mask(),
                             sink=p.sink, window=p.window, pool=pool, **modes)

    def kv_pool(self, kv_type: Optional[str] = None) -> Optional["_core.KVPool"]:
        """The pool of KV blocks the sessions with this kv type (default the model's) share:
        blocks of 16 positions, allocated as sessions write them, shared between sessions that
        hold the same prompt prefix. max_blocks caps it (default: blocks for 3/4 of the
        machine's memory, at least 4 full contexts); None when every kv head streams."""
        kv_type = self.kv_type if kv_type is None else kv_type
        with self._kv_pools_lock:
            if kv_type not in self._kv_pools:
                p = self.head_plan
                mask = p.streaming_mask() if p is not None else None
                pool = None
                if mask is None or not np.asarray(mask).all():
                    pool = _core.KVPool(self.weights, kv_type, streaming=mask)
                    per_ctx = -(-self.n_ctx // pool.block_len)
                    pool.max_blocks = max(4 * per_ctx, int(_physical_memory() * 3 // 4) // pool.block_bytes)
                self._kv_pools[kv_type] = pool
            return self._kv_pools[kv_type]

    # ---------------------------------------------------------------- sessions

    def session(self, **overrides) -> Session:
        """A new conversation over these weights: its own KV cache, cached tokens and stats.
        overrides: n_ctx (at most the model's), kv_type, context_shift. Sessions may run in
        different threads; the scheduler steps them together."""
        return Session(self, **overrides)

    def kv_stats(self) -> dict:
        """KV cache use over every open session: for /health and /metrics."""
        live = [s for s in list(self._sessions) if not s.closed]
        pools = [p for p in list(self._kv_pools.values()) if p is not None]
        states = [s.state for s in live if s.state is not None]
        # held: what the cache takes now - pool blocks in use, a block shared by several
        # sessions counted once, plus the streaming heads' own slots
        return {"sessions": len(live), "kv_bytes_used": sum(s.kv_bytes_used for s in live),
                "kv_bytes_total": sum(st.kv_bytes for st in states),
                "kv_bytes_held": sum(p.bytes_used for p in pools) + sum(st.stream_bytes for st in states),
                "blocks_used": sum(p.blocks_used for p in pools),
                "blocks_total": sum(p.max_blocks for p in pools),
                "block_bytes": max((p.block_bytes for p in pools), default=0),
                "prefix_cache_entries": len(self.prefix_cache),
                "tokens_cached": sum(s.n_cached for s in live)}

    @property
    def state(self) -> "_core.Session":
        """The default session's C state (forward, kv_array, head_kv: tools and tests)."""
        return self._default.state

    @property
    def stats(self) -> dict:
        """The default session's stats of its last call."""
        return self._default.stats

    @property
    def n_shifts(self) -> int:
        return self._default.n_shifts

    @property
    def _cached(self) -> List[int]:
        return self._default._cached

    def _claim(self) -> Session:
        """The default session if free, else a temporary one (closed by _release): calls from
        several threads never share a cache; each runs as it would alone."""
        with self._claim_lock:
            if not self._default_claimed:
                self._default_claimed = True
                return self._default
        return Session(self)

    def _release(self, s: Session) -> None:
        if s is self._default:
            with self._claim_lock:
                self._default_claimed = False
        else:
            s.close()

    def _on_claimed(self, call):
        """call(session) on a claimed session; an iterator result keeps it until exhausted or closed."""
        s = self._claim()
        try:
            out = call(s)
        except BaseException:
            self._release(s)
            raise
        if isinstance(out, (dict, str)):
            self._release(s)
            return out
        return _Claimed(out, lambda: self._release(s))

    # ---------------------------------------------------------------- evaluation (the default session)

    def reset(self):
        with self._default._lock:
            self._default.reset()

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after `tokens`, reusing the longest prefix already in the default session."""
        with self._default._lock:
            return self._default.eval(tokens)

    def step(self, token: int) -> np.ndarray:
        """Logits after appending one token to what the default session caches (the decode
        step, without sampling: a caller picks the next token itself, e.g. `pylut bench`)."""
        with self._default._lock:
            return self._default.step(token)

    # ---------------------------------------------------------------- sessions on disk

    def _fingerprint(self, shapes_only: bool = False) -> str:
        """Identifies the weights a session file or head plan belongs to (session_file.fingerprint);
        the sampled form is computed once per model."""
        if shapes_only:
            return session_file.fingerprint(self.loaded, shapes_only=True)
        if self._fingerprint_hex is None:
            self._fingerprint_hex = session_file.fingerprint(self.loaded)
        return self._fingerprint_hex

    def save_state(self, path) -> None:
        """Write the default session's cached tokens and their keys/values to `path` (pylut.session_file)."""
        with self._default._lock:
            self._default.save_state(path)

    def load_state(self, path) -> None:
        """Restore into the default session a session written by save_state; refuses files of
        another model/version, cache type or head plan.

        A session file is trusted data: its SHA-256 detects corruption, not forgery (anyone can
        recompute it), so load only files you wrote. What is verified: the checksum, the
        format version, the model fingerprint, kv type and head plan; every token id is an
        integer in the vocabulary, the count fits n_ctx, stream_base lies in 0..n_tokens,
        each kv head's row count and the data size match; every cached row is finite (fp16
        values, or q8/q4 scales) and not all zero bytes. Plausible but wrong keys/values
        cannot be told from real ones."""
        with self._default._lock:
            self._default.load_state(path)

    # ---------------------------------------------------------------- generation (thread-safe)

    def generate(self, prompt: Union[str, Sequence[int]], max_tokens: int = 128, stream: bool = False,
                 stop=None, ignore_eos: bool = False, **sampling):
        """Continue `prompt`. Returns the text, or an iterator of text pieces with stream=True.
        Sampling options: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed.
        Safe from several threads: a call made while another holds the default session runs
        on a temporary session of its own, so calls never share a cache and run concurrently
        (their steps batched by the scheduler)."""
        return self._on_claimed(lambda s: s.generate(prompt, max_tokens, stream, stop, ignore_eos, **sampling))

    def create_completion(self, prompt: Union[str, Sequence[int]], max_tokens: int = 16, stream: bool = False,
                          stop=None, ignore_eos: bool = False, n: int = 1, **sampling):
        """OpenAI-shaped completion (Session.create_completion; n > 1 samples n continuations
        of one prompt evaluation). Thread-safe as generate."""
        return self._on_claimed(lambda s: s.create_completion(prompt, max_tokens, stream, stop, ignore_eos, n,
                                                              **sampling))

    def create_chat_completion(self, messages: List[Dict[str, str]], max_tokens: Optional[int] = None,
                               stream: bool = False, stop=None, n: int = 1, **sampling):
        """OpenAI-shaped chat completion (Session.create_chat_completion; n > 1 samples n
        answers of one prompt evaluation). Thread-safe as generate."""
        return self._on_claimed(lambda s: s.create_chat_completion(messages, max_tokens, stream, stop, n,
                                                                   **sampling))

    # ---------------------------------------------------------------- info

    def info(self) -> dict:
        cfg = self.loaded.config
        return {"arch": self.loaded.arch, "path": self.loaded.path, "params": self.loaded.n_params,
                "bits_per_weight": self.loaded.bits_per_weight, "tensor_types": self.loaded.tensor_types,
                "n_layers": cfg["n_layers"], "dim": cfg["dim"], "vocab": cfg["vocab"],
                "features": arch.features(cfg),
                "n_heads": cfg["n_heads"], "n_kv_heads": cfg["n_kv_heads"], "head_dim": cfg["head_dim"],
                "ffn_dim": cfg["ffn_dim"], "norm_eps": cfg["norm_eps"],
                "rope": {"theta": cfg["rope_theta"], "neox": bool(cfg["rope_neox"]),
                         "scaling": cfg.get("rope_scaling") or {"type": "default"},
                         "attn_factor": cfg.get("rope_attn_factor", 1.0), "summary": rope.describe(cfg),
                         "dims": cfg.get("rope_dims", cfg["head_dim"]),
                         "longrope_factors": (("long" if rope.uses_long_factors(cfg["rope_scaling"], self.n_ctx)
                                               else "short") if (cfg.get("rope_scaling") or {}).get("type")
                                              == "longrope" else None)},
                "sliding_window": cfg.get("sliding_window"),
                "sliding_window_layers": (None if cfg.get("swa_layers") is None
                                          else [i for i, w in enumerate(cfg["swa_layers"]) if w]),
                "context": cfg["max_ctx"], "n_ctx": self.n_ctx, "isa": cpu_features()["isa"],
                "threads": self.n_threads, "chat_template": self.chat_template.name,
                "kv_type": self.kv_type, "kv_bytes": self.state.kv_bytes,
                "batch_invariant": self.batch_invariant, "precision": self.precision,
                "head_plan": self._plan_info(), "packed_types": packed_types(self.loaded.tensors),
                "lossy": sorted(self.loaded.lossy)}

    def _plan_info(self) -> Optional[dict]:
        """The head plan and what it saves: allocated KV bytes against an all-full cache."""
        if self.head_plan is None:
            return None
        cfg = self.loaded.config
        full = 2 * cfg["n_layers"] * cfg["n_kv_heads"] * self.n_ctx * _core.kv_row_bytes(self.kv_type,
                                                                                          cfg["head_dim"])
        return dict(self.head_plan.summary(), kv_bytes=self.state.kv_bytes, kv_bytes_full=full,
                    kv_bytes_saved=full - self.state.kv_bytes)


class _Claimed:
    """An iterator over a claimed session's output: the session goes back when the iterator
    is exhausted, closed or collected (a stream the caller drops does not keep it)."""

    def __init__(self, it, release):
        self._it, self._release = it, release

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._it)
        except BaseException:
            self.close()
            raise

    def close(self):
        release, self._release = self._release, None
        if release is not None:
            try:
                self._it.close()
            finally:
                release()

    def __del__(self):
        self.close()
