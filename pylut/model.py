"""The embeddable API: load a model file, generate text, OpenAI-shaped completions.

    model = pylut.load("model.gguf", n_ctx=2048)
    print(model.generate("Once upon a time", max_tokens=32, temperature=0))
    for piece in model.generate("Hi", stream=True): print(piece, end="")
    model.create_chat_completion([{"role": "user", "content": "Hello"}])
"""
import hashlib
import json
import logging
import os
import struct
import time
import uuid
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core, rope, streaming
from .arch import TERNARY_ARCHS
from .tokenizer.chat_template import ChatTemplate
from .kernels import cpu_features, get_pool, physical_cores, ternary_layout
from .sampling import Sampler, SamplingParams

log = logging.getLogger("pylut")


def load(path, n_ctx: Optional[int] = None, n_threads: Optional[int] = None, bits: int = 4,
         max_batch: int = 64, chat_template: Optional[str] = None, cache: bool = True,
         context_shift: bool = True, requant: Optional[str] = None, kv_type: str = "f16",
         head_plan=None, batch_invariant: bool = False, ternary: str = "auto",
         precision: str = "fast") -> "Model":
    """Load a model and return a :class:`Model` ready to generate.

    Parameters
    ----------
    path : str or os.PathLike
        A GGUF file (v2/v3; llama, qwen2 or bitnet architecture) or a Hugging Face folder
        (``config.json`` + ``*.safetensors`` + ``tokenizer.json``; float weights are
        quantized on load, GPTQ checkpoints keep their codes).
    n_ctx : int or None, default None
        Context length in tokens, 1 to the model's own; None takes min(4096, the model's).
    n_threads : int or None, default None
        Threads of the kernel pool; None takes the number of physical cores.
    bits : {1, 2, 3, 4, 5, 6, 8}, default 4
        Width that F16/BF16/F32 matrices are quantized to. Integer-grid blocks (Q4_0, Q2_K,
        TQ1_0, ...) keep their own codes and ignore it.
    max_batch : int, default 64
        Most tokens one forward step takes; longer prompts run in chunks of this size.
    chat_template : {None, 'chatml', 'llama-2', 'llama-3', 'zephyr', 'phi-3'}, default None
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
    ValueError
        An option outside the values above, or ``n_ctx`` over the model's context.
    pylut.errors.ModelFileError
        The file is not a model pylut can read (the message says why).
    """
    from .formats import packcache
    from .formats.hf_loader import is_hf_folder, load_hf
    from .formats.gguf_model import load_gguf
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if bits not in (1, 2, 3, 4, 5, 6, 8):
        raise ValueError(f"bits must be one of 1, 2, 3, 4, 5, 6, 8; got {bits!r}")
    if ternary not in ("auto", "t3", "b2"):
        raise ValueError(f"ternary must be 'auto', 't3' or 'b2'; got {ternary!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fast' or 'high'; got {precision!r}")
    if precision == "high" and ternary == "t3":
        raise ValueError("precision='high' needs ternary weights as b2 (t3 has no int8 path); "
                         "pass ternary='b2' or 'auto'")
    if precision == "high":
        ternary = "b2"
    t0 = time.perf_counter()
    options = dict(bits=bits, requant=requant)
    if is_hf_folder(path):
        build = lambda sink: load_hf(path, bits=bits, requant=requant, sink=sink)  # noqa: E731
    else:
        layout = ternary_layout() if ternary == "auto" else ternary
        # the layout is in the cache key only where it can change the pack; a pack cached
        # without it says the file has no ternary matrices (and spares a header parse)
        if not (cache and os.path.exists(packcache.cache_path(path, **options))) and _may_hold_ternary(path):
            options["ternary"] = layout
        build = lambda sink: load_gguf(path, sink=sink, **dict(options, ternary=layout))  # noqa: E731
    _check_load_args(n_ctx, n_threads, max_batch)
    loaded = packcache.load_or_build(path, build, use_cache=cache, **options)
    tokenizer = _read_tokenizer(path)
    log.info("loaded %s in %.2f s", path, time.perf_counter() - t0)
    return Model(loaded, tokenizer, n_ctx=n_ctx, n_threads=n_threads, max_batch=max_batch,
                 chat_template=chat_template, context_shift=context_shift, kv_type=kv_type, head_plan=head_plan,
                 batch_invariant=batch_invariant, precision=precision)


PRECISIONS = ("fast", "high")
MAX_THREADS = 1024


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_load_args(n_ctx, n_threads, max_batch) -> None:
    """Sizes given by the caller: integers (never bools) in range, as ValueError."""
    if n_ctx is not None and (not _is_int(n_ctx) or not 1 <= n_ctx < 2**31):
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    if n_threads is not None and (not _is_int(n_threads) or not 1 <= n_threads <= MAX_THREADS):
        raise ValueError(f"n_threads must be an integer in 1..{MAX_THREADS}, got {n_threads!r}")
    if not _is_int(max_batch) or not 1 <= max_batch <= 4096:
        raise ValueError(f"max_batch must be an integer in 1..4096, got {max_batch!r}")


def _read_tokenizer(path: str):
    """The model's tokenizer; whatever is wrong with its metadata is a ModelFileError."""
    from .errors import ModelFileError
    from .tokenizer import Tokenizer
    try:
        return Tokenizer.from_file(path)
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError,
            UnicodeError, RecursionError) as e:
        raise ModelFileError(f"{path}: the tokenizer metadata cannot be used: {e}") from None


def _may_hold_ternary(path) -> bool:
    """Whether a GGUF file can hold matrices the loader packs as ternary: TQ1_0/TQ2_0
    tensors, or a BitNet file (its converter writes ternary weights as floats). Reads the
    header only; a file it cannot read says yes and fails properly in the loader."""
    from .formats.gguf_reader import GGUFFile
    try:
        with GGUFFile(path) as f:
            return f.architecture in TERNARY_ARCHS or any(t.type_name in ("TQ1_0", "TQ2_0")
                                                      for t in f.tensors.values())
    except Exception:
        return True


class Model:
    N_SINK = 4  # first positions kept by a context shift (StreamingLLM's attention sinks)

    def __init__(self, loaded, tokenizer, n_ctx=None, n_threads=None, max_batch=64, chat_template=None,
                 context_shift=True, kv_type="f16", head_plan=None, batch_invariant=False, precision="fast"):
        self.context_shift = bool(context_shift)
        self.n_shifts = 0
        self._fingerprint_hex = None
        self.loaded = loaded
        self.tokenizer = tokenizer
        cfg = loaded.config
        _check_load_args(n_ctx, n_threads, max_batch)
        if n_ctx is None:
            n_ctx = min(4096, cfg["max_ctx"])
        if n_ctx > cfg["max_ctx"]:
            raise ValueError(f"n_ctx={n_ctx} is over the model's context length {cfg['max_ctx']}")
        if tokenizer.n_vocab > cfg["vocab"]:  # (checkpoints may pad the vocabulary: fewer is fine)
            raise ValueError(f"tokenizer has {tokenizer.n_vocab} tokens but the model's vocabulary is {cfg['vocab']}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be 'fast' or 'high'; got {precision!r}")
        if precision == "high":
            t3 = next((name for name, t in loaded.tensors.items()
                       if isinstance(t, _core.QMatrix) and t.type == _core.TYPE_T3), None)
            if t3 is not None:
                raise ValueError(f"precision='high' needs every matrix on the int8 path, but {t3} is packed "
                                 "as T3 (dense ternary); load the GGUF with ternary='b2'")
        self.precision = precision
        self.n_threads = physical_cores() if n_threads is None else int(n_threads)
        self.pool = get_pool(self.n_threads)
        self.weights = _core.Model(cfg, loaded.tensors)
        self.name = os.path.basename(loaded.path)
        self.max_batch = int(max_batch)
        self.head_plan = streaming.resolve(head_plan)
        modes = dict(batch_invariant=bool(batch_invariant), split_int8=precision == "high")
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
                                          arch=loaded.arch, override=chat_template)

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

    def _step(self, token: int) -> np.ndarray:
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

    _STATE_MAGIC = b"PYLUTST\0"
    _STATE_VERSION = 4  # 3: + the head plan, each kv head's used slots in turn; 4: weight-sampling fingerprint
    _FINGERPRINT_SAMPLE = 4096  # bytes hashed at each of three places in every buffer
    _STATE_READS = (2, 3, 4)  # 2: the cache stored per kv head, in the session's kv_type

    def _fingerprint(self, shapes_only: bool = False) -> str:
        """Identifies the weights a cache or head plan belongs to: config, every tensor's
        shape and type, and samples of every buffer's bytes (start, middle, end), so two
        checkpoints of one architecture differ without the whole model being read.
        shapes_only: without the samples (what session files before version 4 recorded)."""
        desc = {"config": self.loaded.config, "types": self.loaded.tensor_types,
                "params": int(self.loaded.n_params)}
        h = hashlib.sha256(json.dumps(desc, sort_keys=True).encode())
        if shapes_only:
            return h.hexdigest()
        if self._fingerprint_hex is None:
            for name in sorted(self.loaded.tensors):
                t = self.loaded.tensors[name]
                bufs = ([getattr(t, f) for f in ("codes_buf", "scale_buf", "bias_buf", "sub_scale_buf", "sub_bias_buf")]
                        if isinstance(t, _core.QMatrix) else [t])
                for b in bufs:
                    if b is None:
                        continue
                    raw = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
                    n, w = raw.size, self._FINGERPRINT_SAMPLE
                    h.update(name.encode() + n.to_bytes(8, "little"))
                    for at in sorted({0, max(0, n // 2 - w // 2), max(0, n - w)}):
                        h.update(raw[at:at + w].tobytes())
            self._fingerprint_hex = h.hexdigest()
        return self._fingerprint_hex

    def _heads(self):
        cfg = self.loaded.config
        return [(kv, l, h) for kv in (0, 1) for l in range(cfg["n_layers"]) for h in range(cfg["n_kv_heads"])]

    def save_state(self, path) -> None:
        """Write the cached tokens and their keys/values (versioned, checksummed): every kv
        head's slots in use, keys then values, layer by layer (a full head's slots are its
        positions; a streaming head's are its sinks and its recent window)."""
        n = len(self._cached)
        rows = [self.session.head_kv(kv, l, h)[:self.session.head_used(l, h)] for kv, l, h in self._heads()]
        plan = self.head_plan
        header = json.dumps({"fingerprint": self._fingerprint(), "n_tokens": n, "tokens": self._cached,
                             "kv_type": self.session.kv_type, "row_bytes": int(rows[0].shape[1]),
                             "head_rows": [int(r.shape[0]) for r in rows], "stream_base": self.session.stream_base,
                             "head_plan": plan.key() if plan is not None else None,
                             "head_plan_summary": plan.summary() if plan is not None else None,
                             "model": self.name}).encode()
        body = struct.pack("<8sIQ", self._STATE_MAGIC, self._STATE_VERSION, len(header)) + header
        digest = hashlib.sha256(body)
        blob = b"".join(np.ascontiguousarray(r).tobytes() for r in rows)
        digest.update(blob)
        tmp = os.fspath(path) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(blob)
            f.write(digest.digest())
        os.replace(tmp, path)

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
        with open(path, "rb") as f:
            data = f.read()
        pre = struct.calcsize("<8sIQ")
        if len(data) < pre + 32:
            raise ValueError(f"{path}: not a pylut session file (too short)")
        magic, version, hlen = struct.unpack_from("<8sIQ", data)
        if magic != self._STATE_MAGIC:
            raise ValueError(f"{path}: not a pylut session file (bad magic)")
        if version not in self._STATE_READS:
            raise ValueError(f"{path}: session format version {version}, this pylut reads "
                             f"{', '.join(map(str, self._STATE_READS))}")
        if hashlib.sha256(data[:-32]).digest() != data[-32:]:
            raise ValueError(f"{path}: checksum mismatch (truncated or corrupted session file)")
        heads = self._heads()
        try:
            h = json.loads(data[pre:pre + hlen])
            n, tokens = h["n_tokens"], h["tokens"]
            vocab = self.loaded.config["vocab"]
            if not _is_int(n) or not isinstance(tokens, list):
                raise ValueError("n_tokens / tokens")
            if not all(_is_int(t) and 0 <= t < vocab for t in tokens):
                raise ValueError(f"token ids must be integers in 0..{vocab - 1}")
            if version == 2:  # [2, n_layers, n_kv_heads, n, row_bytes], no head plan
                shape = tuple(h["kv_shape"])
                if len(shape) != 5 or shape[3] != n:
                    raise ValueError(f"kv_shape {shape}")
                row_bytes, head_rows, base, plan_key = shape[4], [n] * len(heads), None, None
                cfg = self.loaded.config
                if tuple(shape[:3]) != (2, cfg["n_layers"], cfg["n_kv_heads"]):
                    raise ValueError(f"kv_shape {shape}")
            else:
                row_bytes, head_rows, base = h["row_bytes"], h["head_rows"], h["stream_base"]
                plan_key = h["head_plan"]
                if not (_is_int(row_bytes) and isinstance(head_rows, list) and all(map(_is_int, head_rows))
                        and _is_int(base) and 0 <= base <= n):
                    raise ValueError(f"row_bytes / head_rows / stream_base (must be in 0..{n})")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: corrupt session header ({e})") from None
        if h.get("fingerprint") != self._fingerprint(shapes_only=version < 4):
            raise ValueError(f"{path}: the session was saved from another model ({h.get('model')!r}); "
                             f"load it with the same model file")
        if h.get("kv_type") != self.session.kv_type:
            raise ValueError(f"{path}: the session's KV cache is {h.get('kv_type')!r}, this model was "
                             f"loaded with kv_type={self.session.kv_type!r}")
        mine = self.head_plan.key() if self.head_plan is not None else None
        if plan_key != mine:
            said = lambda k, summ: "no head plan (every head full)" if k is None else f"head plan {summ}"  # noqa: E731
            raise ValueError(f"{path}: the session was saved with {said(plan_key, h.get('head_plan_summary'))}, "
                             f"this model runs with {said(mine, self.head_plan.summary() if mine else None)}; "
                             "load the model with the same head plan")
        if n > self.n_ctx:
            raise ValueError(f"{path}: the session holds {n} tokens, over this model's n_ctx={self.n_ctx}")
        views = [self.session.head_kv(kv, l, hh) for kv, l, hh in heads]
        base = self.session.sink if base is None else base
        mask, sink = self.session.streaming, self.session.sink
        used = [n if mask is None or not mask[l, hh] or n <= sink else sink + n - base for kv, l, hh in heads]
        if (len(tokens) != n or head_rows != used or row_bytes != views[0].shape[1]
                or any(r > v.shape[0] or r < 0 for r, v in zip(head_rows, views))):
            raise ValueError(f"{path}: session sizes do not fit this model")
        if sum(head_rows) * row_bytes != len(data) - pre - hlen - 32:
            raise ValueError(f"{path}: session data has the wrong size")
        at, blocks = pre + hlen, []
        for r in head_rows:
            block = np.frombuffer(data, dtype=np.uint8, count=r * row_bytes, offset=at).reshape(r, row_bytes)
            self._check_kv_rows(path, block)
            blocks.append(block)
            at += r * row_bytes
        self.session.set_stream(n, base)
        for r, v, block in zip(head_rows, views, blocks):
            v[:r] = block
        self._cached = tokens

    def _check_kv_rows(self, path, rows: np.ndarray) -> None:
        """Refuse cached rows no forward pass writes: a non-finite fp16 value (the f16 cache)
        or scale (q8/q4), or a row of zero bytes (a zero key and value)."""
        hd = self.loaded.config["head_dim"]
        kv = self.session.kv_type
        halves = rows if kv == "f16" else rows[:, hd if kv == "q8" else hd // 2:]
        halves = np.ascontiguousarray(halves).view(np.float16)
        if halves.size and not np.isfinite(halves).all():
            raise ValueError(f"{path}: the session's KV cache holds NaN or infinite values")
        if rows.size and not rows.any(axis=1).all():
            raise ValueError(f"{path}: the session's KV cache holds zeroed rows")

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
                logits = self._step(tok)
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
                "n_heads": cfg["n_heads"], "n_kv_heads": cfg["n_kv_heads"], "head_dim": cfg["head_dim"],
                "ffn_dim": cfg["ffn_dim"], "norm_eps": cfg["norm_eps"],
                "rope": {"theta": cfg["rope_theta"], "neox": bool(cfg["rope_neox"]),
                         "scaling": cfg.get("rope_scaling") or {"type": "default"},
                         "attn_factor": cfg.get("rope_attn_factor", 1.0), "summary": rope.describe(cfg)},
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
