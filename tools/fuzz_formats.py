"""Fuzz pylut's file readers: GGUF models, vocab-only GGUFs, .pylut packs and session files.

    python tools/fuzz_formats.py --cases 400 --seed 1            # the quick pass CI runs
    nice -n 19 python tools/fuzz_formats.py --cases 10000 --timeout 10 --out /tmp/fuzz

Each case mutates a small valid seed file (made here with tests/model_builder.py, or a vocab
GGUF from ../shared/testdata/vocab): structured mutations that know the format (every field
set to extreme values, truncation at every field boundary, bad UTF-8 in strings, forged pack
headers and session files with their checksums recomputed) and random ones (bit flips, byte
splats). The case runs in a forked child under a memory limit (RLIMIT_AS) and a timeout, and
its outcome is counted:

    clean-error       the reader refused the file with its documented error
    loaded-identical  it loaded and computed exactly what the seed computes
    loaded-different  it loaded and computed something else (a header value changed; for
                      packs' and sessions' payload bytes this is a silent corruption)
    raw-exception     any other exception (pylut.load must raise only ModelFileError)
    hang / crash      past the timeout (CPU seconds, so a starved child on a busy machine is
                      not one; 6x that in wall time catches a blocked one) / killed by a signal
A case whose outcome is crash, hang, raw-exception or a silent payload corruption is saved
under --out with a line in findings.txt. Exit status 1 when any such case was found.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

import pylut  # noqa: E402
from pylut.formats import packcache  # noqa: E402
from pylut.errors import ModelFileError  # noqa: E402

VOCAB_DIR = ROOT.parent / "shared" / "testdata" / "vocab"
TARGETS = ("gguf", "vocab", "pack", "session")
BAD = ("crash", "hang", "raw-exception", "silent-payload")
PROMPT = [5, 6, 7, 8]
WALL_FACTOR = 6   # wall-clock backstop per case, in units of --timeout (which is CPU time)
TEXT = "Hello world! Ünïcödé text, numbers 12345 and\ttabs   spaces <s> </s>"

# ---------------------------------------------------------------- GGUF field map


def gguf_fields(data: bytes):
    """[(offset, size, kind)] of every header field of a valid GGUF (kind: 'u32', 'u64',
    'count', 'len', 'str', 'vtype', 'scalar', 'dim', 'ttype', 'offset')."""
    fields, pos = [], 0

    def take(size, kind):
        nonlocal pos
        fields.append((pos, size, kind))
        pos += size
        return data[pos - size:pos]

    def string():
        n = struct.unpack("<Q", take(8, "len"))[0]
        take(n, "str")

    scalar_sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(vt):
        if vt in scalar_sizes:
            take(scalar_sizes[vt], "scalar")
        elif vt == 8:
            string()
        elif vt == 9:
            et = struct.unpack("<I", take(4, "vtype"))[0]
            n = struct.unpack("<Q", take(8, "count"))[0]
            if et in scalar_sizes:
                take(scalar_sizes[et] * n, "array")
            else:
                for _ in range(n):
                    value(et)

    take(4, "magic")
    take(4, "u32")
    n_tensors = struct.unpack("<Q", take(8, "count"))[0]
    n_kv = struct.unpack("<Q", take(8, "count"))[0]
    for _ in range(n_kv):
        string()
        value(struct.unpack("<I", take(4, "vtype"))[0])
    for _ in range(n_tensors):
        string()
        n_dims = struct.unpack("<I", take(4, "u32"))[0]
        for _ in range(n_dims):
            take(8, "dim")
        take(4, "ttype")
        take(8, "offset")
    return fields


EXTREMES = [0, 1, 2, 3, 7, 255, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53,
            2**63 - 1, 2**63, 2**64 - 1]


def put_int(buf: bytearray, off: int, size: int, value: int) -> None:
    buf[off:off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")


def mutate_gguf(seed: bytes, fields, rng: random.Random):
    """(mutated bytes, description)."""
    buf = bytearray(seed)
    header_end = max(o + s for o, s, _ in fields)
    kind = rng.choice(["flip", "flip", "truncate", "extreme", "extreme", "utf8", "splat", "float", "array"])
    floats = [f for f in fields if f[2] == "scalar" and f[1] in (4, 8)]
    arrays = [f for f in fields if f[2] == "array" and f[1] >= 4]
    if (kind == "float" and not floats) or (kind == "array" and not arrays):
        kind = "flip"
    if kind == "array":  # an element of a numeric array (token types, scores): extreme value
        off, size, _ = rng.choice(arrays)
        at = off + rng.randrange(size // 4) * 4
        v = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x07\x00\x00\x00",
                        b"\x00\x00\x00\x80"])
        buf[at:at + 4] = v
        return bytes(buf), f"array element at {at} = {v!r}"
    if kind == "flip":
        at = rng.randrange(header_end if rng.random() < 0.8 else len(buf))
        bit = rng.randrange(8)
        buf[at] ^= 1 << bit
        return bytes(buf), f"flip byte {at} bit {bit}"
    if kind == "truncate":
        off, size, _ = rng.choice(fields)
        at = off + rng.randrange(size + 1) if rng.random() < 0.3 else off
        return bytes(buf[:at]), f"truncate at {at}"
    if kind == "extreme":
        ints = [f for f in fields if f[2] in ("u32", "count", "len", "vtype", "scalar", "dim", "ttype", "offset")
                and f[1] in (1, 2, 4, 8)]
        off, size, k = rng.choice(ints)
        small = [rng.randrange(64)] if k in ("vtype", "ttype") else []
        v = rng.choice(EXTREMES + [rng.randrange(1 << (8 * size))] + small)
        put_int(buf, off, size, v)
        return bytes(buf), f"set {k} at {off} ({size} bytes) to {v}"
    if kind == "utf8":
        strs = [f for f in fields if f[2] == "str" and f[1] > 0]
        off, size, _ = rng.choice(strs)
        bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x00", b"\xc0\xaf"])
        at = off + rng.randrange(size)
        buf[at:at + len(bad)] = bad[:max(0, off + size - at)] or bad[:1]
        return bytes(buf), f"bad utf-8 {bad!r} at {at}"
    if kind == "float":
        off, size, _ = rng.choice(floats)
        v = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e-45, 3.4e38]
                       + ([1e300, 5e-324] if size == 8 else []))
        buf[off:off + size] = struct.pack("<f" if size == 4 else "<d", v)
        return bytes(buf), f"set float at {off} to {v}"
    n = rng.randrange(1, 32)
    at = rng.randrange(len(buf) - n)
    buf[at:at + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(buf), f"splat {n} bytes at {at}"


# ---------------------------------------------------------------- packs and sessions


def _spans(h):
    return [s for e in h["tensors"].values() for k in ("codes", "scale", "bias", "sub_scale", "sub_bias", "data")
            if isinstance(e, dict) and (s := e.get(k)) is not None]


def _jitter_json(obj, rng: random.Random):
    """Replace one random leaf of a JSON tree with an extreme or wrong-typed value."""
    path, node = [], obj
    while isinstance(node, (dict, list)) and node:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        if not isinstance(node[key], (dict, list)) or rng.random() < 0.15:
            break
        node = node[key]
    if not path:
        return "nothing"
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    old = parent[path[-1]]
    new = rng.choice([0, -1, 1, 2**31, 2**63, 2**70, 1.5, 1e300, -1e-300, True, None, "x", [], {},
                      (old + 64) if isinstance(old, int) and not isinstance(old, bool) else 3])
    parent[path[-1]] = new
    return f"{'/'.join(map(str, path))}: {old!r} -> {new!r}"


def mutate_pack(seed: bytes, rng: random.Random):
    """(bytes, description, touches_payload)."""
    magic, version, z, hoff, hlen, crc, z2 = packcache._PREFIX.unpack_from(seed)
    h = json.loads(seed[hoff:hoff + hlen])
    spans = _spans(h)
    buf = bytearray(seed)
    kind = rng.choice(["payload", "payload", "flip", "truncate", "prefix", "forge", "forge", "swap"])
    if kind == "payload":
        off, n, _ = rng.choice([s for s in spans if s[1]])
        at = off + rng.randrange(n)
        buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), f"payload flip at {at}", True
    if kind == "flip":
        at = rng.randrange(len(buf))
        buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip at {at}", any(o <= at < o + n for o, n, _ in spans)
    if kind == "truncate":
        at = rng.choice([rng.randrange(len(buf)), rng.randrange(packcache._PREFIX.size), hoff, len(buf) - 1])
        return bytes(buf[:at]), f"truncate at {at}", False
    if kind == "prefix":
        offs = [(8, 4), (12, 4), (16, 8), (24, 8), (32, 4), (36, 4)]
        off, size = rng.choice(offs)
        v = rng.choice(EXTREMES)
        put_int(buf, off, size, v)
        return bytes(buf), f"prefix field at {off} = {v}", False
    if kind == "swap" and len(spans) > 1:
        names = [n for n, e in h["tensors"].items() if e.get("kind") == "q"]
        a, b = rng.sample(names, 2)
        h["tensors"][a]["codes"], h["tensors"][b]["codes"] = h["tensors"][b]["codes"], h["tensors"][a]["codes"]
        desc = f"forged: codes of {a} <-> {b}"
    else:
        desc = "forged: " + _jitter_json(h, rng)
    raw = json.dumps(h).encode()
    prefix = packcache._PREFIX.pack(magic, version, z, hoff, len(raw), zlib.crc32(raw), z2)
    return prefix + seed[len(prefix):hoff] + raw, desc, False


def mutate_session(seed: bytes, rng: random.Random):
    """(bytes, description, payload): payload is False only for forged headers (a recomputed
    SHA-256 over other header values, which may load as a different but valid session)."""
    pre = struct.calcsize("<8sIQ")
    magic, version, hlen = struct.unpack_from("<8sIQ", seed)
    kind = rng.choice(["flip", "flip", "truncate", "forge-header", "forge-header", "forge-rows"])
    buf = bytearray(seed)
    if kind == "flip":
        at = rng.randrange(len(buf))
        buf[at] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip at {at}", True
    if kind == "truncate":
        at = rng.randrange(len(buf))
        return bytes(buf[:at]), f"truncate at {at}", True
    h = json.loads(seed[pre:pre + hlen])
    rows = bytearray(seed[pre + hlen:-32])
    if kind == "forge-header":
        desc = "forged header: " + _jitter_json(h, rng)
    else:
        at = rng.randrange(0, len(rows) - 2, 2)
        what = rng.choice(["nan", "inf", "zero-row"])
        if what == "zero-row":
            rows[:32] = bytes(32)
        else:
            rows[at:at + 2] = np.array([np.nan if what == "nan" else np.inf], np.float16).tobytes()
        desc = f"forged rows: {what} at {at}"
    hb = json.dumps(h).encode()
    body = struct.pack("<8sIQ", magic, version, len(hb)) + hb + bytes(rows)
    return body + hashlib.sha256(body).digest(), desc, kind == "forge-rows"


# ---------------------------------------------------------------- running one case


def run_case(target: str, path: str, ctx) -> tuple:
    """In the child: (outcome, detail)."""
    try:
        if target == "gguf":
            m = pylut.load(path, n_ctx=64, n_threads=1, cache=False)
            got = m.eval(PROMPT)
            m.detokenize(m.tokenize(TEXT))
        elif target == "vocab":
            from pylut.formats.model_file import read_tokenizer
            tok = read_tokenizer(path)
            ids = tok.encode(TEXT, add_bos=True, parse_special=True)
            got = np.asarray(ids + list(tok.decode(ids).encode()), np.int64)
        elif target == "pack":
            loaded = packcache.load(path)
            from pylut.model import Model
            got = Model(loaded, ctx["model"].tokenizer, n_ctx=64, n_threads=1).eval(PROMPT)
        else:
            m = ctx["model"]
            m.load_state(path)
            got = m.eval(m._cached + [9])
    except ModelFileError as e:
        return "clean-error", str(e)[:200]
    except ValueError as e:
        # a session file is refused with ValueError by contract; a mutated context_length
        # below the fuzzer's own n_ctx=64 makes load() refuse that argument, rightly
        if target == "session" or "over the model's context length" in str(e):
            return "clean-error", str(e)[:200]
        return "raw-exception", f"{type(e).__name__}: {e}"[:300]
    except BaseException as e:  # noqa: BLE001 - every other exception is a finding
        return "raw-exception", f"{type(e).__name__}: {e}"[:300]
    want = ctx["want"].get(ctx.get("key"))
    if want is None:
        return "reference", got
    same = got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
    return ("loaded-identical" if same else "loaded-different"), ""


def fork_case(target, data, ctx, timeout, mem_bytes, workdir):
    """Run one case in a forked child; (outcome, detail, seconds)."""
    path = os.path.join(workdir, {"gguf": "m.gguf", "vocab": "v.gguf", "pack": "m.pylut", "session": "s.bin"}[target])
    with open(path, "wb") as f:
        f.write(data)
    for stale in (path + ".verified",):
        if os.path.exists(stale):
            os.unlink(stale)
    r, w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: limits, run, report, leave without cleanup handlers
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            # the timeout is CPU time (SIGXCPU past it): on a shared machine a starved child
            # must not pass for a hang; the parent's wall clock (x6) catches blocked ones
            cpu_s = max(1, math.ceil(timeout))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
            out = run_case(target, path, ctx)
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    chunks, status = [], None
    os.set_blocking(r, False)
    while True:
        try:
            part = os.read(r, 1 << 16)
            if part:
                chunks.append(part)
        except BlockingIOError:
            pass
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > WALL_FACTOR * timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", f"over {WALL_FACTOR * timeout} s of wall time", time.monotonic() - t0
        time.sleep(0.002)
    os.set_blocking(r, True)
    while True:
        part = os.read(r, 1 << 16)
        if not part:
            break
        chunks.append(part)
    os.close(r)
    secs = time.monotonic() - t0
    if os.WIFSIGNALED(status):
        cpu = usage.ru_utime + usage.ru_stime
        if os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL) and cpu >= math.ceil(timeout):
            return "hang", f"over {timeout} s of CPU time", secs   # RLIMIT_CPU: soft, hard
        return "crash", f"signal {os.WTERMSIG(status)}", secs
    try:
        outcome, detail = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - a child that died before reporting
        return "crash", f"no report (exit status {status})", secs
    return outcome, detail, secs


# ---------------------------------------------------------------- seeds


def small_vocab(src: Path, dst: str, n_tokens: int = 3000, n_merges: int = 2000) -> bytes:
    """A real vocabulary cut to its first n_tokens (byte tokens included: GPT-2 and SPM keep
    them first) and n_merges merges: the same structures, a tokenizer built in milliseconds."""
    import gguf
    from pylut.formats.gguf_reader import GGUFFile
    with GGUFFile(src) as f:
        meta = dict(f.metadata)
    w = gguf.GGUFWriter(dst, "llama")
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in meta:
        w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list([t.encode("utf-8", "surrogateescape") for t in meta["tokenizer.ggml.tokens"][:n_tokens]])
    w.add_token_types([int(t) for t in meta["tokenizer.ggml.token_type"][:n_tokens]])
    if "tokenizer.ggml.scores" in meta:
        w.add_token_scores([float(v) for v in meta["tokenizer.ggml.scores"][:n_tokens]])
    if "tokenizer.ggml.merges" in meta:
        w.add_token_merges(meta["tokenizer.ggml.merges"][:n_merges])
    for key, add in (("tokenizer.ggml.bos_token_id", w.add_bos_token_id),
                     ("tokenizer.ggml.eos_token_id", w.add_eos_token_id),
                     ("tokenizer.ggml.unknown_token_id", w.add_unk_token_id)):
        if key in meta and int(meta[key]) < n_tokens:
            add(int(meta[key]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return Path(dst).read_bytes()


def warm_up(seeds, model) -> None:
    """Build what every child would build again (pre-tokenizer regexes, lazy imports) once,
    in the parent, so forked cases start warm. Nothing here starts a thread."""
    from pylut.formats.model_file import read_tokenizer
    model.detokenize(model.tokenize(TEXT))
    with tempfile.TemporaryDirectory() as d:
        for i, seed in enumerate(seeds["vocab"]):
            path = os.path.join(d, f"v{i}.gguf")
            Path(path).write_bytes(seed)
            tok = read_tokenizer(path)
            tok.decode(tok.encode(TEXT, add_bos=True, parse_special=True))


def make_seeds(workdir: str):
    from model_builder import build_gguf
    gguf_path = os.path.join(workdir, "seed.gguf")
    build_gguf(gguf_path, "llama", "Q4_0", vocab=300, n_layers=2, dim=64, context_length=128)
    seeds = {"gguf": Path(gguf_path).read_bytes()}
    seeds["vocab"] = [small_vocab(VOCAB_DIR / f"ggml-vocab-{name}.gguf", os.path.join(workdir, f"{name}.gguf"))
                      for name in ("gpt-2", "llama-spm") if (VOCAB_DIR / f"ggml-vocab-{name}.gguf").exists()]
    seeds["vocab"] = seeds["vocab"] or [seeds["gguf"]]
    pack_path = os.path.join(workdir, "seed.pylut")
    from pylut.formats.gguf_model import load_gguf
    packcache.convert(gguf_path, pack_path, lambda sink: load_gguf(gguf_path, sink=sink))
    seeds["pack"] = Path(pack_path).read_bytes()
    model = pylut.load(gguf_path, n_ctx=64, n_threads=1, cache=False)
    model.eval(list(range(3, 15)))
    state = os.path.join(workdir, "seed.bin")
    model.save_state(state)
    seeds["session"] = Path(state).read_bytes()
    return seeds, model, gguf_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per case (wall clock: 6x)")
    ap.add_argument("--mem-mb", type=int, default=3072, help="address-space limit per case (MiB)")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default=None, help="where findings are saved (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the counts as JSON at the end")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYLUT_CACHE_DIR", tempfile.mkdtemp(prefix="pylut-fuzz-cache-"))
    out = Path(args.out or tempfile.mkdtemp(prefix="pylut-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    targets = args.targets.split(",")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="pylut-fuzz-work-") as work:
        seeds, model, _ = make_seeds(work)
        warm_up(seeds, model)
        ctx = {"model": model, "want": {}}
        # reference outputs, computed in a child the same way as every case
        for target in targets:
            for j, seed in enumerate(seeds[target] if target == "vocab" else [seeds[target]]):
                ctx["key"] = (target, j)
                outcome, got, _ = fork_case(target, seed, ctx, 120, args.mem_mb << 20, work)
                if outcome != "reference":
                    raise SystemExit(f"the {target} seed #{j} does not load: {outcome} {got}")
                ctx["want"][(target, j)] = got
        fields = {"gguf": gguf_fields(seeds["gguf"]), "vocab": [gguf_fields(v) for v in seeds["vocab"]]}
        counts = {t: Counter() for t in targets}
        findings = open(out / "findings.txt", "a")  # noqa: SIM115 - closed below
        t_start = time.monotonic()
        for i in range(args.cases):
            target = targets[i % len(targets)]
            payload, j = False, 0
            if target == "gguf":
                data, desc = mutate_gguf(seeds["gguf"], fields["gguf"], rng)
            elif target == "vocab":
                j = rng.randrange(len(seeds["vocab"]))
                data, desc = mutate_gguf(seeds["vocab"][j], fields["vocab"][j], rng)
            elif target == "pack":
                data, desc, payload = mutate_pack(seeds["pack"], rng)
            else:
                data, desc, payload = mutate_session(seeds["session"], rng)
            ctx["key"] = (target, j)
            outcome, detail, secs = fork_case(target, data, ctx, args.timeout, args.mem_mb << 20, work)
            counts[target][outcome] += 1
            bad = outcome in BAD or (outcome == "loaded-different" and payload and target in ("pack", "session"))
            if bad:
                kind = "silent-payload" if outcome == "loaded-different" else outcome
                counts[target]["silent-payload"] += outcome == "loaded-different"
                name = f"{target}-{i:06d}-{kind}"
                (out / name).write_bytes(data)
                findings.write(f"{name}\t{desc}\t{detail}\n")
                findings.flush()
            if (i + 1) % 500 == 0:
                print(f"{i + 1} cases, {time.monotonic() - t_start:.0f} s: "
                      + "; ".join(f"{t} {dict(c)}" for t, c in counts.items()), flush=True)
        findings.close()
    total = Counter()
    for c in counts.values():
        total.update(c)
    took = time.monotonic() - t_start
    print(f"fuzz_formats: {args.cases} cases (seed {args.seed}) in {took:.0f} s; findings in {out}")
    for t, c in counts.items():
        print(f"  {t:<8} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    n_bad = sum(total[k] for k in BAD)
    print(f"  crashes {total['crash']}, hangs {total['hang']}, raw exceptions {total['raw-exception']}, "
          f"silent payload corruptions {total['silent-payload']}")
    if args.json:
        print(json.dumps({t: dict(c) for t, c in counts.items()}))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
