"""The embeddable API: load a model file, generate text, OpenAI-shaped completions.

    model = pylut.load("model.gguf", n_ctx=2048)
    print(model.generate("Once upon a time", max_tokens=32, temperature=0))
    for piece in model.generate("Hi", stream=True): print(piece, end="")
    model.create_chat_completion([{"role": "user", "content": "Hello"}])
"""
import logging
import os
import time
import uuid
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core, arch, rope, session_file, streaming
from .tokenizer.chat_template import ChatTemplate
from .kernels import cpu_features, get_pool, physical_cores
from .options import LoadOptions, _is_int
from .sampling import Sampler, SamplingParams

log = logging.getLogger("pylut")


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
    bits : {1, 2, 3, 4, 5, 6, 8}, default 4
        Width that F16/BF16/F32 matrices are quantized to. Integer-grid blocks (Q4_0, Q2_K,
        TQ1_0, ...) keep their own codes and ignore it.
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
        exact. 'auto' takes the faster one on this CPU: b2 where the kernels are AVX2, t3
        elsewhere (:func:`pylut.kernels.ternary_layout`).
    precision : {'fast', 'high'}, default 'fast'
        'fast' multiplies weights with int8 activations (the tables' int8 entries, or int8
        per scale group on the prompt path), about 2^-8 of a group's largest value: a
        near-tie between two tokens can go either way, as in llama.cpp. 'high' reads every
        activation as two int8 parts, its value and the rounding residual (~2^-15), through
        the int8 GEMM in every step (ternary weights as b2, so 't3' is refused): logits
        then follow a float forward pass over the same weights and greedy text matches it,
        at about half the decode speed.

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
    N_SINK = 4  # first positions kept by a context shift (StreamingLLM's attention sinks)

    def __init__(self, loaded, tokenizer, options: Optional[LoadOptions] = None, **settings):
        """A model over packed weights (a LoadedModel) and their tokenizer; the run settings
        of `options` (LoadOptions, keywords replacing its fields) apply, the packing ones
        were the loader's."""
        options = LoadOptions.of(options, **settings)
        self.options = options
        n_ctx, n_threads, max_batch, precision = options.n_ctx, options.n_threads, options.max_batch, options.precision
        self.context_shift = bool(options.context_shift)
        self.n_shifts = 0
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
        modes = dict(batch_invariant=bool(options.batch_invariant), split_int8=precision == "high")
        if self.head_plan is None:
            self.session = _core.Session(self.weights, int(n_ctx), max_batch, kv_type, **modes)
        else:
            self.head_plan.check_model(self)
            p = self.head_plan
            if p.sink + 1 >= n_ctx or p.window > n_ctx:
                raise ValueError(f"head plan (sink={p.sink}, window={p.window}) does not fit n_ctx={n_ctx}")
            self.session = _core.Session(self.weights, int(n_ctx), max_batch, kv_type,
                                         streaming=p.streaming_mask(), sink=p.sink, window=p.window, **modes)
            log.info("head plan: %d of %d kv heads keep the whole cache; KV cache %.1f MiB",
                     p.n_retrieval, p.n_heads, self.session.kv_bytes / 2**20)
        self.n_ctx = int(n_ctx)
        self._cached: List[int] = []      # tokens whose keys/values are in the session
        self.stats = {"prompt_tokens": 0, "prompt_processed": 0, "prompt_s": 0.0, "gen_tokens": 0, "gen_s": 0.0,
                      "forward_s": 0.0}
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

    # ---------------------------------------------------------------- evaluation

    def reset(self):
        self.session.truncate(0)
        self._cached = []

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after `tokens`, reusing the longest prefix already in the cache."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("empty prompt")
        if len(tokens) > self.n_ctx:
            raise ValueError(f"prompt has {len(tokens)} tokens, over n_ctx={self.n_ctx}")
        common = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # at least one token must run to give logits
        if not self.session.can_truncate(common):
            common = 0  # streaming heads already dropped what going on from there would see
        self.session.truncate(common)
        self._cached = self._cached[:common]
        t0 = time.perf_counter()
        logits = self.session.forward(tokens[common:], self.pool)
        self.stats["prompt_s"] = time.perf_counter() - t0
        self.stats["prompt_tokens"] = len(tokens)
        self.stats["prompt_processed"] = len(tokens) - common
        self._cached = tokens
        return logits

    def step(self, token: int) -> np.ndarray:
        """Logits after appending one token to what is cached (the decode step, without
        sampling: a caller picks the next token itself, e.g. `pylut bench` greedily)."""
        if len(self._cached) >= self.n_ctx:
            raise ValueError(f"the context is full ({self.n_ctx} tokens); reset() or eval() a shorter prompt")
        t0 = time.perf_counter()
        logits = self.session.forward([token], self.pool)
        self.stats["forward_s"] += time.perf_counter() - t0  # C time, for the overhead share
        self._cached.append(token)
        return logits

    def _n_keep(self) -> int:
        """Positions a context shift keeps: the attention sinks (a head plan's, if more)."""
        sink = self.head_plan.sink if self.head_plan is not None else 0
        return min(max(self.N_SINK, sink), self.n_ctx - 2)

    def _shift(self):
        """Make room: keep the sinks, drop the older half of the rest (llama.cpp's default)."""
        keep = self._n_keep()
        drop = max(1, (len(self._cached) - keep) // 2)
        self.session.shift(keep, drop)
        self._cached = self._cached[:keep] + self._cached[keep + drop:]
        self.n_shifts += 1
        log.info("context full (%d): dropped %d positions after the first %d", self.n_ctx, drop, keep)

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
        """Write the cached tokens and their keys/values to `path` (pylut.session_file)."""
        session_file.save(self, path)

    def load_state(self, path) -> None:
        """Restore a session written by save_state; refuses files of another model/version,
        cache type or head plan.

        A session file is trusted data: its SHA-256 detects corruption, not forgery (anyone can
        recompute it), so load only files you wrote. What is verified: the checksum, the
        format version, the model fingerprint, kv type and head plan; every token id is an
        integer in the vocabulary, the count fits n_ctx, stream_base lies in 0..n_tokens,
        each kv head's row count and the data size match; every cached row is finite (fp16
        values, or q8/q4 scales) and not all zero bytes. Plausible but wrong keys/values
        cannot be told from real ones."""
        session_file.load(self, path)

    # ---------------------------------------------------------------- generation

    def _generate_tokens(self, prompt_tokens, max_tokens, stop_ids, params):
        sampler = Sampler(params)
        logits = self.eval(prompt_tokens)
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
                logits = self.step(tok)
            self.stats["gen_s"] = time.perf_counter() - t0
        yield None, "length"

    def _stream_text(self, prompt, max_tokens, stop, params, special=False, ignore_eos=False):
        """Yields (text_piece, finish_reason); stop strings are cut, never emitted."""
        if isinstance(prompt, str):
            ptoks = self.tokenize(prompt, special=special)
        else:
            ptoks = list(prompt)
            vocab = self.loaded.config["vocab"]
            if not all(_is_int(t) and 0 <= t < vocab for t in ptoks):
                raise ValueError(f"prompt token ids must be integers in 0..{vocab - 1}")
            ptoks = [int(t) for t in ptoks]
        if not ptoks:
            raise ValueError("empty prompt")
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of them")
        stop_ids = set() if ignore_eos else set(self.tokenizer.eot_ids)
        if self.tokenizer.eos_id is not None and not ignore_eos:
            stop_ids.add(self.tokenizer.eos_id)
        dec = self.tokenizer.stream_decoder()
        held = ""  # text that might be the start of a stop string
        keep = max((len(s) for s in stops), default=0)
        for tok, reason in self._generate_tokens(ptoks, int(max_tokens), stop_ids, params):
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
        it = self._stream_text(prompt, max_tokens, stop, params, ignore_eos=ignore_eos)
        if stream:
            return (piece for piece, _ in it if piece)
        return "".join(piece for piece, _ in it)

    # ---------------------------------------------------------------- OpenAI-shaped API

    def _usage(self):
        return {"prompt_tokens": self.stats["prompt_tokens"], "completion_tokens": self.stats["gen_tokens"],
                "total_tokens": self.stats["prompt_tokens"] + self.stats["gen_tokens"]}

    def create_completion(self, prompt: Union[str, Sequence[int]], max_tokens: int = 16, stream: bool = False,
                          stop=None, ignore_eos: bool = False, **sampling):
        params = SamplingParams.from_kwargs(**sampling)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        it = self._stream_text(prompt, max_tokens, stop, params, ignore_eos=ignore_eos)

        def chunk(text, reason):
            return {"id": cid, "object": "text_completion", "created": created, "model": self.name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}
        if stream:
            return (chunk(t, r) for t, r in it if t or r)
        text, reason = "", None
        for t, r in it:
            text += t
            reason = r or reason
        out = chunk(text, reason)
        out["usage"] = self._usage()
        return out

    def create_chat_completion(self, messages: List[Dict[str, str]], max_tokens: Optional[int] = None,
                               stream: bool = False, stop=None, **sampling):
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        params = SamplingParams.from_kwargs(**sampling)
        prompt = self.chat_template.render(messages, add_generation_prompt=True)
        add_bos = self.tokenizer.add_bos and not prompt.startswith(self.chat_template.bos or "\0")
        ptoks = self.tokenize(prompt, add_bos=add_bos, special=True)
        if max_tokens is None:
            max_tokens = max(1, self.n_ctx - len(ptoks))
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        it = self._stream_text(ptoks, max_tokens, stop, params)
        if stream:
            def chunks():
                yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
                for t, r in it:
                    if t or r:
                        yield {"id": cid, "object": "chat.completion.chunk", "created": created,
                               "model": self.name,
                               "choices": [{"index": 0, "delta": {"content": t} if t else {}, "finish_reason": r}]}
            return chunks()
        text, reason = "", None
        for t, r in it:
            text += t
            reason = r or reason
        return {"id": cid, "object": "chat.completion", "created": created, "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason}],
                "usage": self._usage()}

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
                "context": cfg["max_ctx"], "n_ctx": self.n_ctx, "isa": cpu_features()["isa"],
                "threads": self.n_threads, "chat_template": self.chat_template.name,
                "kv_type": self.session.kv_type, "kv_bytes": self.session.kv_bytes,
                "batch_invariant": self.session.batch_invariant, "precision": self.precision,
                "head_plan": self._plan_info()}

    def _plan_info(self) -> Optional[dict]:
        """The head plan and what it saves: allocated KV bytes against an all-full cache."""
        if self.head_plan is None:
            return None
        cfg = self.loaded.config
        full = 2 * cfg["n_layers"] * cfg["n_kv_heads"] * self.n_ctx * _core.kv_row_bytes(self.session.kv_type,
                                                                                          cfg["head_dim"])
        return dict(self.head_plan.summary(), kv_bytes=self.session.kv_bytes, kv_bytes_full=full,
                    kv_bytes_saved=full - self.session.kv_bytes)
