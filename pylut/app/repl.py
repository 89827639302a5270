"""The `pylut chat` terminal REPL, with the habits users bring from ollama and llama-cli:
a `>>> ` prompt, streamed answers, triple quotes for multi-line input, slash commands,
Ctrl-C to stop an answer, Ctrl-D to leave. With stdin not a terminal it answers once and
exits, without colours, so `echo "question" | pylut chat model.gguf` works in scripts.
"""
import json
import os
import sys

from ..sampling import SamplingParams

HELP = """Commands:
  /help                  this help
  /clear                 forget the conversation (keeps the system prompt)
  /system [TEXT]         set the system prompt (no TEXT: show it; /system - : remove it)
  /set                   show the settings
  /set KEY VALUE         temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                         seed, max_tokens (0 = until the context is full); VALUE 'default' resets
  /save FILE             save the conversation and settings as JSON
  /load FILE             load a conversation saved with /save
  /stats                 speed of the last answer and context use
  /bye                   exit (also Ctrl-D)
Input: \"\"\" starts and ends multi-line text. Ctrl-C stops an answer (what was shown is kept)."""

INT_KNOBS = ("top_k", "repeat_last_n", "seed", "max_tokens")
FLOAT_KNOBS = ("temperature", "top_p", "min_p", "repeat_penalty")
ALIASES = {"temp": "temperature", "num_predict": "max_tokens", "n_predict": "max_tokens",
           "topk": "top_k", "topp": "top_p", "minp": "min_p", "repeat-penalty": "repeat_penalty"}
SESSION_VERSION = 1
_EXIT = object()


class Repl:
    def __init__(self, model, sampling=None, system=None, max_tokens=None, color=True,
                 stdin=None, stdout=None):
        self.model = model
        self.sampling = dict(sampling or {})
        self.system = system
        self.max_tokens = max_tokens
        self.messages = []            # user/assistant turns; the system prompt is kept apart
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.color = color and self.out.isatty() and os.environ.get("NO_COLOR") is None
        self.err = self.out           # piped mode moves errors to stderr, off the answer
        self.last_stats = None
        self._readline = None

    # ---------------------------------------------------------------- output helpers

    def _write(self, text):
        self.out.write(text)
        self.out.flush()

    def _dim(self, text):
        self._write(f"\x1b[2m{text}\x1b[0m\n" if self.color else text + "\n")

    def _error(self, text):
        self.err.write(f"\x1b[31m{text}\x1b[0m\n" if self.color else text.strip("\n") + "\n")
        self.err.flush()

    # ---------------------------------------------------------------- main loops

    def run(self) -> int:
        try:  # model text can hold characters the terminal's encoding lacks
            self.out.reconfigure(errors="replace")
        except (AttributeError, ValueError):
            pass
        if not self.stdin.isatty():
            self.color = False  # scripts get plain text
            self.err = sys.stderr
            return self._run_piped()
        self._setup_readline()
        info = self.model.info()
        self._dim(f"pylut chat: {self.model.name} ({info['arch']}, context {self.model.n_ctx}, "
                  f"template {info['chat_template']}). /help for commands, Ctrl-D or /bye to exit.")
        try:
            while True:
                try:
                    text = self._read()
                except EOFError:
                    self._write("\n")
                    return 0
                except KeyboardInterrupt:
                    # Ctrl-C on a half-typed line just drops it; on an empty one, users
                    # are usually trying to leave, so say how
                    pending = self._readline.get_line_buffer() if self._readline else ""
                    self._write("\n")
                    if not pending.strip():
                        self._dim("(Use Ctrl-D or /bye to exit.)")
                    continue
                if text is None or not text.strip():
                    continue
                if text.lstrip().startswith("/"):
                    if self.command(text.strip()) is _EXIT:
                        return 0
                    continue
                self.answer(text)
        finally:
            self._save_history()

    def _run_piped(self) -> int:
        text = self.stdin.read().strip()
        if not text:
            return 0
        return 0 if self.answer(text, show_stats=False) else 1

    def _read(self):
        line = input(">>> ")
        stripped = line.strip()
        if not stripped.startswith('"""'):
            return line
        # multi-line: from the opening """ to a line ending with """
        rest = stripped[3:]
        if rest.endswith('"""'):
            return rest[:-3]
        lines = [rest] if rest else []
        while True:
            more = input("... ")
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                return "\n".join(lines)
            lines.append(more)

    def _setup_readline(self):
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input() still works
            return
        self._readline = readline
        from ..formats.packcache import cache_dir
        self._history = os.path.join(cache_dir(), "chat_history")
        try:
            readline.read_history_file(self._history)
        except (OSError, ValueError):
            pass
        readline.set_history_length(1000)

    def _save_history(self):
        if self._readline is None:
            return
        try:
            os.makedirs(os.path.dirname(self._history), exist_ok=True)
            self._readline.write_history_file(self._history)
        except OSError:
            pass

    # ---------------------------------------------------------------- answering

    def _conversation(self):
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + self.messages

    def _fit_context(self):
        """Drop the oldest turns until the prompt leaves room to answer; False when even the
        last message alone does not fit."""
        m = self.model
        reserve = min(self.max_tokens or 256, max(1, m.n_ctx // 4))
        dropped = 0
        while True:
            prompt = m.chat_template.render(self._conversation(), add_generation_prompt=True)
            n = len(m.tokenize(prompt, special=True))
            if n + reserve <= m.n_ctx:
                break
            if len(self.messages) <= 1:
                if n < m.n_ctx:
                    break
                self._error(f"That message is {n} tokens; the context holds {m.n_ctx}. Shorten it.")
                return False
            self.messages.pop(0)
            dropped += 1
        if dropped:
            self._dim(f"[dropped the {dropped} oldest message(s) to fit the context]")
        return True

    def answer(self, text, show_stats=True) -> bool:
        self.messages.append({"role": "user", "content": text})
        try:
            if not self._fit_context():
                self.messages.pop()
                return False
        except ValueError as e:  # a chat template that refuses this conversation
            self.messages.pop()
            self._error(f"error: {e}")
            return False
        shown, interrupted, chunks = [], False, None
        try:
            chunks = self.model.create_chat_completion(self._conversation(), max_tokens=self.max_tokens,
                                                       stream=True, **self.sampling)
            for c in chunks:
                piece = c["choices"][0]["delta"].get("content")
                if piece:
                    shown.append(piece)
                    self._write(piece)
        except KeyboardInterrupt:
            interrupted = True
        except (TypeError, ValueError) as e:
            self.messages.pop()
            self._error(f"\nerror: {e}")
            return False
        finally:
            if chunks is not None:
                chunks.close()
        self._write("\n")
        # the conversation keeps what the user saw, so the next turn continues from it
        self.messages.append({"role": "assistant", "content": "".join(shown)})
        self.last_stats = dict(self.model.stats)
        if interrupted:
            self._dim("[stopped]")
        if show_stats:
            self._dim(stats_line(self.last_stats))
        return True

    # ---------------------------------------------------------------- commands

    def command(self, line):
        name, _, arg = line.partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/bye", "/exit", "/quit"):
            return _EXIT
        handler = {"/help": self._help, "/?": self._help, "/clear": self._clear, "/system": self._system,
                   "/set": self._set, "/show": self._set, "/save": self._save, "/load": self._load,
                   "/stats": self._stats}.get(name)
        if handler is None:
            self._error(f"Unknown command '{name}'. Type /help for the list.")
            return None
        handler(arg)
        return None

    def _help(self, arg):
        self._write(HELP + "\n")

    def _clear(self, arg):
        self.messages = []
        self.model.reset()
        self._dim("[conversation cleared]")

    def _system(self, arg):
        if not arg:
            self._write(f"system prompt: {self.system!r}\n" if self.system else "no system prompt\n")
            return
        self.system = None if arg == "-" else arg
        self._dim("[system prompt removed]" if self.system is None else "[system prompt set]")

    def settings(self):
        shown = SamplingParams.from_kwargs(**self.sampling).__dict__
        return dict(shown, max_tokens=self.max_tokens or 0)

    def _set(self, arg):
        if not arg:
            for k, v in self.settings().items():
                self._write(f"  {k} = {v}\n")
            if self.system:
                self._write(f"  system = {self.system!r}\n")
            return
        key, _, value = arg.partition(" ")
        key, value = ALIASES.get(key.lower(), key.lower()), value.strip()
        if key == "system":
            return self._system(value)
        if key not in INT_KNOBS + FLOAT_KNOBS:
            self._error(f"unknown setting {key!r}; known: {', '.join(FLOAT_KNOBS + INT_KNOBS)}, system")
            return
        if not value:
            self._error(f"usage: /set {key} VALUE")
            return
        if value.lower() in ("default", "none"):
            parsed = None
        else:
            try:
                parsed = int(value) if key in INT_KNOBS else float(value)
            except ValueError:
                self._error(f"{key} needs {'an integer' if key in INT_KNOBS else 'a number'}, got {value!r}")
                return
        if key == "max_tokens":
            self.max_tokens = parsed if parsed and parsed > 0 else None
        else:
            trial = dict(self.sampling)
            trial.pop(key, None)
            if parsed is not None:
                trial[key] = parsed
            try:
                SamplingParams.from_kwargs(**trial)
            except (TypeError, ValueError) as e:
                self._error(str(e))
                return
            self.sampling = trial
        self._dim(f"[set {key} = {self.settings()[key]}]")

    def _save(self, arg):
        if not arg:
            self._error("usage: /save FILE")
            return
        data = {"pylut_session": SESSION_VERSION, "model": self.model.name, "system": self.system,
                "messages": self.messages, "sampling": self.sampling, "max_tokens": self.max_tokens}
        path = os.path.expanduser(arg)
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=1)
        except OSError as e:
            self._error(f"cannot write {path}: {e.strerror}")
            return
        self._dim(f"[saved {len(self.messages)} messages to {path}]")

    def _load(self, arg):
        if not arg:
            self._error("usage: /load FILE")
            return
        path = os.path.expanduser(arg)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            messages, sampling, system, max_tokens = _check_session(data)
        except OSError as e:
            self._error(f"cannot read {path}: {e.strerror}")
            return
        except ValueError as e:
            self._error(f"{path}: not a pylut session ({e})")
            return
        self.messages, self.sampling, self.system, self.max_tokens = messages, sampling, system, max_tokens
        # the keys/values are rebuilt on the next turn (prefix reuse makes later turns cheap)
        self.model.reset()
        self._dim(f"[loaded {len(messages)} messages from {path}]")
        for m in messages[-2:]:
            self._dim(f"{m['role']}: {m['content'][:200]}")

    def _stats(self, arg):
        m = self.model
        if self.last_stats:
            self._write(stats_line(self.last_stats) + "\n")
        self._write(f"context: {len(m._cached)}/{m.n_ctx} tokens in the cache, {len(self.messages)} messages, "
                    f"{m.n_threads} threads\n")


def _check_session(data):
    if not isinstance(data, dict) or data.get("pylut_session") != SESSION_VERSION:
        raise ValueError(f"expected a JSON object with pylut_session={SESSION_VERSION}")
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError("messages must be a list of {role: user|assistant, content: str}")
    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise ValueError("sampling must be an object")  # noqa: TRY004 - callers report ValueError as a bad file
    try:
        SamplingParams.from_kwargs(**sampling)
    except TypeError as e:
        raise ValueError(str(e)) from None
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("system must be a string")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError("max_tokens must be a positive integer")
    return [{"role": m["role"], "content": m["content"]} for m in messages], sampling, system, max_tokens


def stats_line(s):
    pt = s["prompt_processed"] / s["prompt_s"] if s["prompt_s"] > 0 else 0.0
    gt = s["gen_tokens"] / s["gen_s"] if s["gen_s"] > 0 else 0.0
    return f"[prompt {s['prompt_processed']} tok, {pt:.1f} t/s | gen {s['gen_tokens']} tok, {gt:.1f} t/s]"
