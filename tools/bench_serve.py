"""Serving benchmark: `pylut serve --parallel N` against llama-server with `-np N` on the same
model file, N concurrent streaming clients each, for a fixed number of requests.

    python3 tools/bench_serve.py MODEL.gguf --clients 1,2,4,8 --json
    python3 tools/bench_serve.py MODEL.gguf --peer /path/to/llama-server     # or $PYLUT_LLAMA_SERVER

Every request: a distinct 128-token prompt (token ids, the same for both servers), 64
generated tokens (greedy, ignore_eos), streamed, so time to first token is measured.
Per client count and server: aggregate generated tok/s (all tokens over the wall time from
the first request sent to the last answer read), p50/p95 time to first token and per-request
latency, and pylut's ratios to llama-server. The servers run one at a time, both with
--threads; llama-server is a benchmark-only peer (build: tools/PEERS.md), skipped when not
found. --json prints one JSON object as the last line: agg_tps_cN, peer_agg_tps_cN,
ratio_agg_cN, ttft_p95_cN, peer_ttft_p95_cN (and more) per N, and scale_c4 (pylut's
aggregate at 4 clients over 1). --rounds R runs each client count R times, the servers
alternating, and keeps each server's best round (a loaded machine only slows rounds down);
pylut's rows add how its scheduler spent the run (steps, tokens a step, the share of the
wall time in steps and between steps while requests waited, from /metrics).

--bound also loads the model in this process (before any server starts) and times one
prompt alone, to print the most `scale_cN` any scheduler could give on this machine: the
1-client run's wall time over the time of all the run's tokens (prompts and generated) at
the prompt's own per-token cost, the cheapest a token gets (a prompt chunk is the biggest,
most compute-efficient step pylut runs; a decode token costs at least that, plus its share
of the output layer). JSON: prompt_ms, token_ms_min, scale_bound.
Standard library only (--bound imports pylut from this tree).
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
WORDS = ("the of and to in is was for on that with as by at from his her an which are were be this have "
         "had not but they one all their been has would there who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any "
         "my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people how too little "
         "state good very make world still own see men work long get here between both life being under "
         "never day same another know while last might us great old year off come since against go came "
         "right used take three river garden winter morning letter window mountain silver kitchen").split()


# ---------------------------------------------------------------- servers

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess on a free port, ready once GET /health answers 200."""

    def __init__(self, name, argv, port, log_dir, env=None, ready_timeout=900):
        self.name, self.port = name, port
        self.log_path = Path(log_dir) / f"{name}-{port}.log"
        self.log = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not answer /health in {ready_timeout} s:\n{self.tail()}")
            time.sleep(0.25)

    def tail(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)
        self.log.close()


def start_pylut(args, n, log_dir):
    port = free_port()
    argv = [sys.executable, "-m", "pylut", "serve", args.model, "--host", HOST, "--port", str(port),
            "--threads", str(args.threads), "--parallel", str(n), "--ctx", str(args.ctx),
            "--max-tokens-limit", str(max(args.gen_tokens, 16)), *args.pylut_arg]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return ServerProcess("pylut", argv, port, log_dir, env=env)


def start_peer(args, n, log_dir):
    port = free_port()
    argv = [args.peer, "-m", args.model, "--host", HOST, "--port", str(port), "-np", str(n),
            "-c", str(args.ctx * n), "-t", str(args.threads), "-tb", str(args.threads), *args.peer_arg]
    return ServerProcess("llama-server", argv, port, log_dir)


def find_peer(flag):
    for cand in (flag, os.environ.get("PYLUT_LLAMA_SERVER"), shutil.which("llama-server")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    if flag:
        sys.exit(f"bench_serve: --peer {flag} is not an executable file")
    return None


# ---------------------------------------------------------------- prompts and requests

def make_prompts(port, count, n_tokens):
    """count distinct prompts of exactly n_tokens token ids, tokenized by the pylut server
    (with the model's BOS): the varied words come first, so no two share a long prefix."""
    prompts = []
    for i in range(count):
        rng = random.Random(1000 + i)
        text = " ".join(rng.choice(WORDS) for _ in range(2 * n_tokens))
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        conn.request("POST", "/tokenize", json.dumps({"content": text, "add_special": True}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"/tokenize answered {r.status}: {body[:200]!r}")
        ids = json.loads(body)["tokens"]
        if len(ids) < n_tokens:
            raise RuntimeError(f"prompt {i} has only {len(ids)} tokens")
        prompts.append(ids[:n_tokens])
    return prompts


def one_request(port, prompt, gen_tokens):
    """(ttft_s, latency_s, generated tokens) of one streamed greedy completion."""
    body = json.dumps({"prompt": prompt, "max_tokens": gen_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    t0 = time.perf_counter()
    ttft, pieces, usage = None, 0, None
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"answered {r.status}: {r.read()[:300]!r}")
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if "error" in ev:
                raise RuntimeError(f"error in stream: {ev['error']}")
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                if ch.get("text"):
                    pieces += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    finally:
        conn.close()
    latency = time.perf_counter() - t0
    n = usage["completion_tokens"] if usage and usage.get("completion_tokens") else pieces
    return (ttft if ttft is not None else latency), latency, n


def run_clients(port, prompts, n_clients, gen_tokens):
    """Send every prompt once from n_clients threads (each takes the next unsent one)."""
    lock, results, errors = threading.Lock(), [], []
    todo = list(enumerate(prompts))

    def client():
        while True:
            with lock:
                if not todo or errors:
                    return
                _, prompt = todo.pop(0)
            try:
                res = one_request(port, prompt, gen_tokens)
            except Exception as e:  # reported after the run
                with lock:
                    errors.append(e)
                return
            with lock:
                results.append(res)
    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed; first: {errors[0]}")
    ttfts = sorted(r[0] for r in results)
    lats = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    return {"agg_tps": tokens / wall, "ttft_p50": pct(ttfts, 50), "ttft_p95": pct(ttfts, 95),
            "lat_p50": pct(lats, 50), "lat_p95": pct(lats, 95), "tokens": tokens, "wall_s": wall,
            "requests": len(results)}


def pct(sorted_values, p):
    """Nearest-rank percentile."""
    k = max(0, min(len(sorted_values) - 1, -(-p * len(sorted_values) // 100) - 1))
    return sorted_values[k]


def scrape_metrics(port):
    """pylut's /metrics as {name: value} (unlabelled samples only)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            out[parts[0]] = float(parts[1])
    return out


STEP_KEYS = ("pylut_steps_total", "pylut_step_tokens_total", "pylut_step_busy_seconds_total",
             "pylut_step_idle_seconds_total")


def measure(server, prompts, n, args):
    one_request(server.port, prompts[0][:8], 4)  # warm-up: pages mapped, threads started
    before = scrape_metrics(server.port) if server.name == "pylut" else None
    row = run_clients(server.port, prompts, n, args.gen_tokens)
    if before is not None:  # how the scheduler spent the run: steps, tokens a step, busy and idle time
        after = scrape_metrics(server.port)
        steps, tokens, busy, idle = (after.get(k, 0.0) - before.get(k, 0.0) for k in STEP_KEYS)
        row.update(steps=int(steps), tokens_per_step=tokens / max(1.0, steps),
                   busy_frac=busy / row["wall_s"], idle_frac=idle / row["wall_s"])
    return row


# ---------------------------------------------------------------- the bound

def prompt_cost(args, reps=3):
    """Best wall time (s) of one --prompt-tokens prompt alone in this process, pylut as the
    server runs it (same threads, context and chunking), on fixed token ids: the cost of a
    step does not depend on which ids it holds."""
    sys.path.insert(0, str(ROOT))
    import pylut
    m = pylut.load(args.model, n_threads=args.threads, n_ctx=args.ctx)
    ids = [100 + i % 1000 for i in range(args.prompt_tokens)]
    best = float("inf")
    for _ in range(reps + 1):  # the first pass maps the weights
        m.reset()
        t0 = time.perf_counter()
        m.eval(ids)
        best = min(best, time.perf_counter() - t0)
    del m
    return best


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a GGUF file both servers can load")
    ap.add_argument("--clients", default="1,2,4,8", help="client counts, comma-separated (default 1,2,4,8)")
    ap.add_argument("--requests", type=int, default=16,
                    help="requests per client count (at least the count; default 16)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads of both servers (default 2)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds per client count, pylut and llama-server alternating; each server's "
                         "best round is reported (default 1)")
    ap.add_argument("--ctx", type=int, default=512, help="context per slot (default 512)")
    ap.add_argument("--peer", default=None,
                    help="llama-server binary (default: $PYLUT_LLAMA_SERVER, else llama-server on PATH)")
    ap.add_argument("--no-peer", action="store_true", help="measure pylut only")
    ap.add_argument("--pylut-arg", action="append", default=[], help="extra argument for pylut serve")
    ap.add_argument("--peer-arg", action="append", default=[], help="extra argument for llama-server")
    ap.add_argument("--bound", action="store_true",
                    help="also print the most scale_cN any scheduler could reach here (see above)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not clients or min(clients) < 1:
        ap.error("--clients must list positive integers")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.prompt_tokens + args.gen_tokens > args.ctx:
        ap.error("--ctx must hold --prompt-tokens + --gen-tokens")
    args.peer = None if args.no_peer else find_peer(args.peer)
    n_requests = max(args.requests, max(clients))
    log_dir = tempfile.mkdtemp(prefix="bench_serve-")
    load_start = os.getloadavg()
    print(f"bench_serve: {args.model}; {n_requests} requests per client count, {args.prompt_tokens}-token "
          f"prompts, {args.gen_tokens} generated, {args.threads} threads; peer: {args.peer or 'none'}; "
          f"logs in {log_dir}; load average {load_start[0]:.2f}", file=sys.stderr, flush=True)

    prompts, out = None, {}
    if args.bound:
        prompt_s = prompt_cost(args)
        out.update(prompt_ms=round(1e3 * prompt_s, 3), token_ms_min=round(1e3 * prompt_s / args.prompt_tokens, 4))
        print(f"pylut alone: a {args.prompt_tokens}-token prompt {1e3 * prompt_s:.1f} ms, "
              f"{1e3 * prompt_s / args.prompt_tokens:.2f} ms a token", flush=True)
    for n in clients:
        rounds = {"pylut": [], "peer": []}
        for r in range(args.rounds):
            order = ("pylut", "peer") if r % 2 == 0 else ("peer", "pylut")  # alternated: drifting load hits both
            for who in order if args.peer else ("pylut",):
                server = (start_pylut if who == "pylut" else start_peer)(args, n, log_dir)
                try:
                    if prompts is None:
                        prompts = make_prompts(server.port, n_requests, args.prompt_tokens)
                    rounds[who].append(measure(server, prompts, n, args))
                except Exception:
                    print(f"--- {server.name} log:\n{server.tail()}", file=sys.stderr)
                    raise
                finally:
                    server.stop()
        # each server's best round: other jobs on the machine only ever slow a round down
        rows = {who: max(rs, key=lambda row: row["agg_tps"]) for who, rs in rounds.items() if rs}
        p, q = rows["pylut"], rows.get("peer")
        line = (f"clients {n:2d}  pylut: {p['agg_tps']:7.2f} tok/s, ttft p50/p95 {p['ttft_p50']:.2f}/"
                f"{p['ttft_p95']:.2f} s, latency p50/p95 {p['lat_p50']:.2f}/{p['lat_p95']:.2f} s")
        if "steps" in p:
            line += (f" ({p['steps']} steps, {p['tokens_per_step']:.1f} tokens a step, busy "
                     f"{100 * p['busy_frac']:.0f}%, idle with requests waiting {100 * p['idle_frac']:.1f}%)")
        if q:
            line += (f" | llama-server: {q['agg_tps']:7.2f} tok/s, ttft p50/p95 {q['ttft_p50']:.2f}/"
                     f"{q['ttft_p95']:.2f} s, latency p50/p95 {q['lat_p50']:.2f}/{q['lat_p95']:.2f} s"
                     f" | ratio agg {p['agg_tps'] / q['agg_tps']:.2f}x, ttft p95 "
                     f"{p['ttft_p95'] / q['ttft_p95']:.2f}x")
        print(line, flush=True)
        for key in ("agg_tps", "ttft_p50", "ttft_p95", "lat_p50", "lat_p95"):
            out[f"{key}_c{n}"] = round(p[key], 4)
            out[f"peer_{key}_c{n}"] = round(q[key], 4) if q else None
        out[f"wall_s_c{n}"] = round(p["wall_s"], 3)
        out[f"rounds_agg_tps_c{n}"] = [round(row["agg_tps"], 3) for row in rounds["pylut"]]
        out[f"peer_rounds_agg_tps_c{n}"] = [round(row["agg_tps"], 3) for row in rounds["peer"]]
        for key in ("steps", "tokens_per_step", "busy_frac", "idle_frac"):
            if key in p:
                out[f"{key}_c{n}"] = round(p[key], 4)
        out[f"ratio_agg_c{n}"] = round(p["agg_tps"] / q["agg_tps"], 4) if q else None
        out[f"ratio_ttft_p95_c{n}"] = round(p["ttft_p95"] / q["ttft_p95"], 4) if q else None
    out["scale_c4"] = (round(out["agg_tps_c4"] / out["agg_tps_c1"], 4)
                       if "agg_tps_c4" in out and "agg_tps_c1" in out else None)
    if out["scale_c4"] is not None:
        print(f"pylut scale: aggregate at 4 clients / at 1 = {out['scale_c4']:.2f}x")
    if args.bound and "wall_s_c1" in out:  # every token of the run at the prompt's per-token cost
        floor_s = n_requests * (args.prompt_tokens + args.gen_tokens) * out["token_ms_min"] / 1e3
        out["scale_bound"] = round(out["wall_s_c1"] / floor_s, 4)
        print(f"bound: the 1-client run took {out['wall_s_c1']:.2f} s; all {n_requests} requests' tokens at "
              f"{out['token_ms_min']:.2f} ms take {floor_s:.2f} s, so no client count can scale past "
              f"{out['scale_bound']:.2f}x here")
    load_end = os.getloadavg()
    out.update(model=os.path.basename(args.model), threads=args.threads, requests=n_requests,
               prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
               peer=os.path.abspath(args.peer) if args.peer else None,
               loadavg_start=round(load_start[0], 2), loadavg_end=round(load_end[0], 2))
    shutil.rmtree(log_dir, ignore_errors=True)  # kept when a server failed: its log is named above
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
