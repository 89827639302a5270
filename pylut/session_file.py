"""Session files: a model's cached tokens and their keys/values on disk (Model.save_state /
Model.load_state), so a long prompt is evaluated once and resumed later.

File layout (little-endian), version 4:
    b"PYLUTST\\0"  u32 version  u64 header bytes
    the JSON header: fingerprint, tokens, kv_type, row_bytes, head_rows, stream_base, head plan
    every kv head's slots in use, keys then values, layer by layer: head_rows[i] rows of
        row_bytes each, in the session's kv_type (a full head's slots are its positions; a
        streaming head's are its sinks and its recent window)
    sha256 of everything before it (32 bytes)
Versions 2 and 3 are still read: 2 stored the cache as one [2, n_layers, n_kv_heads, n, row]
block with no head plan; 3 had no sampled weight fingerprint (shapes only).
"""
import hashlib
import json
import os
import struct

from typing import List, NamedTuple, Optional

import numpy as np

from . import _core
from .options import _is_int

MAGIC = b"PYLUTST\0"
VERSION = 4  # 3: + the head plan, each kv head's used slots in turn; 4: weight-sampling fingerprint
READS = (2, 3, 4)
_PREFIX = struct.Struct("<8sIQ")  # magic, version, header bytes
_DIGEST = 32                      # sha256 trailer
FINGERPRINT_SAMPLE = 4096         # bytes hashed at each of three places in every buffer
_QMATRIX_BUFFERS = ("codes_buf", "scale_buf", "bias_buf", "sub_scale_buf", "sub_bias_buf")


def fingerprint(loaded, shapes_only: bool = False) -> str:
    """Identifies the weights a cache or head plan belongs to: config, every tensor's shape
    and type, and samples of every buffer's bytes (start, middle, end), so two checkpoints
    of one architecture differ without the whole model being read.
    shapes_only: without the samples (what session files before version 4 recorded)."""
    desc = {"config": loaded.config, "types": loaded.tensor_types, "params": int(loaded.n_params)}
    h = hashlib.sha256(json.dumps(desc, sort_keys=True).encode())
    if shapes_only:
        return h.hexdigest()
    for name in sorted(loaded.tensors):
        t = loaded.tensors[name]
        bufs = [getattr(t, f) for f in _QMATRIX_BUFFERS] if isinstance(t, _core.QMatrix) else [t]
        for b in bufs:
            if b is None:
                continue
            raw = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
            n, w = raw.size, FINGERPRINT_SAMPLE
            h.update(name.encode() + n.to_bytes(8, "little"))
            for at in sorted({0, max(0, n // 2 - w // 2), max(0, n - w)}):
                h.update(raw[at:at + w].tobytes())
    return h.hexdigest()


def _heads(config):
    """(kv, layer, kv head) in file order: keys then values, layer by layer."""
    return [(kv, l, h) for kv in (0, 1) for l in range(config["n_layers"]) for h in range(config["n_kv_heads"])]


# ---------------------------------------------------------------- writing

def _rope_key(model) -> Optional[str]:
    """The frequencies the cached keys were rotated with, where they depend on the session's
    context (LongRoPE's factor sets, rope.for_context) rather than on the weights alone."""
    if model.weights.config.get("rope_inv_freq") == model.loaded.config.get("rope_inv_freq"):
        return None
    return hashlib.sha256(json.dumps(model.weights.config["rope_inv_freq"]).encode()).hexdigest()[:16]


def save(sess, path) -> None:
    """Write a pylut.Session's cached tokens and every kv head's slots in use (written under
    a temporary name, renamed into place when complete)."""
    model, session = sess.model, sess.state
    cached = sess._cached
    rows = [session.head_kv(kv, l, h, session.head_used(l, h)) for kv, l, h in _heads(model.loaded.config)]
    plan = model.head_plan
    header = json.dumps({"fingerprint": model._fingerprint(), "n_tokens": len(cached), "tokens": cached,
                         "kv_type": session.kv_type, "row_bytes": int(rows[0].shape[1]),
                         "head_rows": [int(r.shape[0]) for r in rows], "stream_base": session.stream_base,
                         "head_plan": plan.key() if plan is not None else None,
                         "head_plan_summary": plan.summary() if plan is not None else None,
                         "rope_inv_freq": _rope_key(model),
                         "model": model.name}).encode()
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
    digest = hashlib.sha256(body)
    blob = b"".join(np.ascontiguousarray(r).tobytes() for r in rows)
    digest.update(blob)
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(body)
        f.write(blob)
        f.write(digest.digest())
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading

class _Header(NamedTuple):
    version: int
    data_at: int                # where the kv rows start
    json: dict
    tokens: List[int]
    row_bytes: int
    head_rows: List[int]        # rows stored per kv head, in _heads order
    stream_base: Optional[int]  # None: version 2 (the session's own sink)
    plan_key: Optional[str]


def _read_header(path, data: bytes, config) -> _Header:
    """The header, after every check that needs nothing of the model but its config: the
    checksum, the version, token ids (integers in the vocabulary), and integer sizes with
    stream_base in 0..n_tokens."""
    if len(data) < _PREFIX.size + _DIGEST:
        raise ValueError(f"{path}: not a pylut session file (too short)")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a pylut session file (bad magic)")
    if version not in READS:
        raise ValueError(f"{path}: session format version {version}, this pylut reads {', '.join(map(str, READS))}")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise ValueError(f"{path}: checksum mismatch (truncated or corrupted session file)")
    n_heads = len(_heads(config))
    vocab = config["vocab"]
    try:
        h = json.loads(data[_PREFIX.size:_PREFIX.size + hlen])
        n, tokens = h["n_tokens"], h["tokens"]
        if not _is_int(n) or not isinstance(tokens, list):
            raise ValueError("n_tokens / tokens")
        if not all(_is_int(t) and 0 <= t < vocab for t in tokens):
            raise ValueError(f"token ids must be integers in 0..{vocab - 1}")
        if len(tokens) != n:
            raise ValueError(f"{len(tokens)} tokens, n_tokens {n}")
        if version == 2:  # [2, n_layers, n_kv_heads, n, row_bytes], no head plan
            shape = tuple(h["kv_shape"])
            if (len(shape) != 5 or not all(map(_is_int, shape)) or shape[3] != n
                    or tuple(shape[:3]) != (2, config["n_layers"], config["n_kv_heads"])):
                raise ValueError(f"kv_shape {shape}")
            row_bytes, head_rows, base, plan_key = shape[4], [n] * n_heads, None, None
        else:
            row_bytes, head_rows, base = h["row_bytes"], h["head_rows"], h["stream_base"]
            plan_key = h["head_plan"]
            if not (_is_int(row_bytes) and isinstance(head_rows, list) and all(map(_is_int, head_rows))
                    and _is_int(base) and 0 <= base <= n):
                raise ValueError(f"row_bytes / head_rows / stream_base (must be in 0..{n})")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{path}: corrupt session header ({e})") from None
    return _Header(version, _PREFIX.size + hlen, h, tokens, row_bytes, head_rows, base, plan_key)


def load(sess, path) -> None:
    """Restore a session written by `save` into a pylut.Session; refuses files of another model or
    version, cache type or head plan, sizes that do not fit, and rows no forward pass writes
    (see Model.load_state for what a session file is trusted with)."""
    with open(path, "rb") as f:
        data = f.read()
    model, session = sess.model, sess.state
    config = model.loaded.config
    head = _read_header(path, data, config)
    h, n, row_bytes, head_rows = head.json, len(head.tokens), head.row_bytes, head.head_rows
    if h.get("fingerprint") != model._fingerprint(shapes_only=head.version < 4):
        raise ValueError(f"{path}: the session was saved from another model ({h.get('model')!r}); "
                         f"load it with the same model file")
    if h.get("kv_type") != session.kv_type:
        raise ValueError(f"{path}: the session's KV cache is {h.get('kv_type')!r}, this model was "
                         f"loaded with kv_type={session.kv_type!r}")
    plan = model.head_plan
    mine = plan.key() if plan is not None else None
    if head.plan_key != mine:
        said = lambda k, summ: "no head plan (every head full)" if k is None else f"head plan {summ}"  # noqa: E731
        raise ValueError(f"{path}: the session was saved with {said(head.plan_key, h.get('head_plan_summary'))}, "
                         f"this model runs with {said(mine, plan.summary() if mine else None)}; "
                         "load the model with the same head plan")
    if n > sess.n_ctx:
        raise ValueError(f"{path}: the session holds {n} tokens, over this model's n_ctx={sess.n_ctx}")
    if h.get("rope_inv_freq") != _rope_key(model):
        raise ValueError(f"{path}: the session's keys were rotated with other RoPE frequencies (LongRoPE's "
                         f"factor set follows n_ctx); load the model with the n_ctx it was saved at")
    heads = _heads(config)
    slots = [session.head_slots(l, hh) for kv, l, hh in heads]
    base = session.sink if head.stream_base is None else head.stream_base
    mask, sink = session.streaming, session.sink
    used = [n if mask is None or not mask[l, hh] or n <= sink else sink + n - base for kv, l, hh in heads]
    if (head_rows != used or row_bytes != session.row_bytes
            or any(r > v or r < 0 for r, v in zip(head_rows, slots))):
        raise ValueError(f"{path}: session sizes do not fit this model")
    at = head.data_at
    if sum(head_rows) * row_bytes != len(data) - at - _DIGEST:
        raise ValueError(f"{path}: session data has the wrong size")
    blocks = []  # every block checked before the session is touched
    for r in head_rows:
        block = np.frombuffer(data, dtype=np.uint8, count=r * row_bytes, offset=at).reshape(r, row_bytes)
        _check_kv_rows(path, block, config["head_dim"], session.kv_type)
        blocks.append(block)
        at += r * row_bytes
    session.set_stream(n, base)
    for (kv, l, hh), block in zip(heads, blocks):
        session.set_head_kv(kv, l, hh, block)
    sess._cached = head.tokens


def _check_kv_rows(path, rows: np.ndarray, head_dim: int, kv_type: str) -> None:
    """Refuse cached rows no forward pass writes: a non-finite fp16 value (the f16 cache)
    or scale (q8/q4), or a row of zero bytes (a zero key and value).
    rows: [n, row_bytes] of one kv head, in kv_type's layout (q8: head_dim int8 codes then
    fp16 scales; q4: head_dim / 2 bytes of nibbles then fp16 scales)."""
    halves = rows if kv_type == "f16" else rows[:, head_dim if kv_type == "q8" else head_dim // 2:]
    halves = np.ascontiguousarray(halves).view(np.float16)
    if halves.size and not np.isfinite(halves).all():
        raise ValueError(f"{path}: the session's KV cache holds NaN or infinite values")
    if rows.size and not rows.any(axis=1).all():
        raise ValueError(f"{path}: the session's KV cache holds zeroed rows")
