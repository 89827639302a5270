"""Chat templates: the model file's Jinja2 template rendered in a sandbox when Jinja2 is
installed, else (or when it fails) a built-in template picked from the template text or the
architecture, and the choice is logged.

A model file's template is untrusted code: it runs in Jinja2's immutable sandbox with a
render budget (RENDER_SECONDS of wall time, checked on every template line) and an output
cap (MAX_RENDER_CHARS, checked on every string operation that could build something large
and on the output); past either the render is refused with TemplateBudgetError."""
import json
import logging
import sys
import time
from typing import Dict, List, Optional

log = logging.getLogger("pylut")

BUILTIN = ("chatml", "llama-2", "llama-3", "zephyr", "phi-3", "phi-4", "gemma", "mistral", "falcon3")
RENDER_SECONDS = 2.0
MAX_RENDER_CHARS = 8 << 20


class TemplateBudgetError(ValueError):
    """A chat template ran past its time budget or its output cap."""


# ---------------------------------------------------------------- the bounded sandbox

def _too_big(n: int, what: str) -> TemplateBudgetError:
    return TemplateBudgetError(f"chat template refused: {what} would be {n} long, over the "
                               f"{MAX_RENDER_CHARS}-character limit")


def _check_size(value, what: str):
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_RENDER_CHARS:
        raise _too_big(len(value), what)
    return value


def _guarded_binop(op, name):
    def run(a, b):
        if name == "*":
            for seq, k in ((a, b), (b, a)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(k, int):
                    if len(seq) * max(k, 0) > MAX_RENDER_CHARS:
                        raise _too_big(len(seq) * k, "a repeated string")
        if name == "+" and isinstance(a, (str, bytes, list, tuple)) and isinstance(b, (str, bytes, list, tuple)):
            if len(a) + len(b) > MAX_RENDER_CHARS:
                raise _too_big(len(a) + len(b), "the result of '+'")
        if name == "**" and isinstance(b, int) and isinstance(a, int) and abs(b) > 1024 and abs(a) > 1:
            raise TemplateBudgetError(f"chat template refused: {a} ** {b} is too large")
        return _check_size(op(a, b), f"the result of {name!r}")
    return run


def _guard_args(args, kwargs, what):
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_RENDER_CHARS:
            raise TemplateBudgetError(f"chat template refused: {what} called with {v}, over the "
                                      f"{MAX_RENDER_CHARS} limit")


def _bounded_environment():
    """An ImmutableSandboxedEnvironment whose '+', '*', '**', calls and filters are size-
    checked (one expression must not allocate gigabytes before any output is seen)."""
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedCodeGenerator(CodeGenerator):
        def visit_Concat(self, node, frame):  # '~' joins through the size check below
            self.write("environment.bounded_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "**"})
        code_generator_class = BoundedCodeGenerator

        @staticmethod
        def bounded_join(parts):
            parts = [p if isinstance(p, str) else str(p) for p in parts]
            n = sum(map(len, parts))
            if n > MAX_RENDER_CHARS:
                raise _too_big(n, "a '~' concatenation")
            return "".join(parts)

        def call_binop(self, context, operator_name, left, right):
            return _guarded_binop(self.binop_table[operator_name], operator_name)(left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja2's signature)
            _guard_args(args, kwargs, getattr(__obj, "__name__", "a function"))
            return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    # as transformers renders them: tojson keeps non-ASCII text and '<' as they are
    env.filters["tojson"] = _tojson
    env.globals["strftime_now"] = lambda fmt: time.strftime(str(fmt))
    for name, f in list(env.filters.items()):
        env.filters[name] = _guarded_filter(f, name)
    return env


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _guarded_filter(f, name):
    def run(*args, **kwargs):
        _guard_args(args[1:] if args and not isinstance(args[0], int) else args, kwargs, f"filter {name!r}")
        return _check_size(f(*args, **kwargs), f"filter {name!r}'s result")
    for attr in ("jinja_pass_arg",):  # Jinja2 passes the context/environment by this mark
        if hasattr(f, attr):
            setattr(run, attr, getattr(f, attr))
    return run


def render_bounded(template, seconds: float = RENDER_SECONDS, **context) -> str:
    """template.generate(**context) joined, refused past `seconds` or MAX_RENDER_CHARS. The
    clock is checked on every line the template's own code runs (a trace function set only
    for frames of compiled template code), so loops that output nothing are bounded too."""
    deadline = time.monotonic() + seconds
    filename = template.filename or "<template>"

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateBudgetError(f"chat template refused: rendering took over {seconds:g} s")
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == filename else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        out, n = [], 0
        for chunk in template.generate(**context):
            n += len(chunk)
            if n > MAX_RENDER_CHARS:
                raise _too_big(n, "the rendered prompt")
            out.append(chunk)
        return "".join(out)
    finally:
        sys.settrace(previous)


# ---------------------------------------------------------------- built-in templates
# Each is llama.cpp's rendering of that family (llama-chat.cpp), for files without a
# template or machines without Jinja2.

def _chatml(messages, add_generation_prompt):
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _llama3(messages, add_generation_prompt):
    out = "<|begin_of_text|>"
    for m in messages:
        out += f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def _llama2(messages, add_generation_prompt):
    system, out, pending = "", "", None
    for m in messages:
        if m["role"] == "system":
            system = f"<<SYS>>\n{m['content']}\n<</SYS>>\n\n"
        elif m["role"] == "user":
            pending = system + m["content"]
            system = ""
            out += f"<s>[INST] {pending.strip()} [/INST]"
        else:
            out += f" {m['content'].strip()} </s>"
    return out


def _role_tags(end: str):
    """Zephyr, Phi-3 and Falcon3: "<|role|>\ncontent" + end + "\n" per message; they differ
    only in the end-of-turn text."""
    def render(messages, add_generation_prompt):
        out = "".join(f"<|{m['role']}|>\n{m['content']}{end}\n" for m in messages)
        return out + ("<|assistant|>\n" if add_generation_prompt else "")
    return render


_zephyr, _phi3, _falcon3 = _role_tags("</s>"), _role_tags("<|end|>"), _role_tags("")


def _phi4(messages, add_generation_prompt):
    out = "".join(f"<|im_start|>{m['role']}<|im_sep|>{m['content']}<|im_end|>" for m in messages)
    return out + ("<|im_start|>assistant<|im_sep|>" if add_generation_prompt else "")


def _gemma(messages, add_generation_prompt):
    # no system role: the system text opens the first user turn; the assistant is "model"
    out, system = "<bos>", ""
    for m in messages:
        if m["role"] == "system":
            system += m["content"].strip()
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out += f"<start_of_turn>{role}\n"
        if system and role != "model":
            out += system + "\n\n"
            system = ""
        out += m["content"].strip() + "<end_of_turn>\n"
    return out + ("<start_of_turn>model\n" if add_generation_prompt else "")


def _mistral(messages, add_generation_prompt):
    # Mistral's v7-Tekken layout (Nemo, Small 3.x): the answer follows [/INST] directly
    out = "<s>"
    for m in messages:
        if m["role"] == "system":
            out += f"[SYSTEM_PROMPT]{m['content']}[/SYSTEM_PROMPT]"
        elif m["role"] == "user":
            out += f"[INST]{m['content']}[/INST]"
        else:
            out += f"{m['content']}</s>"
    return out


_RENDER = {"chatml": _chatml, "llama-3": _llama3, "llama-2": _llama2, "zephyr": _zephyr, "phi-3": _phi3,
           "phi-4": _phi4, "gemma": _gemma, "mistral": _mistral, "falcon3": _falcon3}

# The built-in for an architecture whose file has no template.
_ARCH_BUILTIN = {"qwen2": "chatml", "qwen3": "chatml", "bitnet": "chatml", "gemma": "gemma",
                 "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi-3"}


def guess_builtin(template: Optional[str], arch: str = "") -> str:
    """The built-in template of the family whose markers the file's template text holds
    (llama.cpp's order of tests), else the architecture's."""
    t = template or ""
    if "<|im_start|>" in t:
        return "phi-4" if "<|im_sep|>" in t else "chatml"
    if "[INST]" in t:
        mistral = ("[SYSTEM_PROMPT]" in t or "[AVAILABLE_TOOLS]" in t or '"[INST]"' in t)
        return "mistral" if mistral else "llama-2"
    if "<|assistant|>" in t and "<|end|>" in t:
        return "phi-3"
    if "<|assistant|>" in t and "<|user|>" in t and "<|endoftext|>" not in t:
        return "falcon3"
    if "<|assistant|>" in t:
        return "zephyr"
    if "<start_of_turn>" in t:
        return "gemma"
    if "<|start_header_id|>" in t:
        return "llama-3"
    if not t:
        return _ARCH_BUILTIN.get(arch, "chatml")
    return _ARCH_BUILTIN.get(arch, "llama-2")


_said_no_jinja = False


def _no_jinja(builtin: str) -> None:
    global _said_no_jinja
    if not _said_no_jinja:
        _said_no_jinja = True
        log.warning("jinja2 is not installed (pip install jinja2), so the model's own chat "
                    "template cannot run: using the built-in %s template", builtin)
    else:
        log.info("jinja2 not installed: using the built-in %s chat template", builtin)


class ChatTemplate:
    """render(messages, add_generation_prompt=True) -> prompt text (special tokens inline)."""

    def __init__(self, template: Optional[str], bos: str = "", eos: str = "", arch: str = "",
                 override: Optional[str] = None):
        self.bos, self.eos = bos, eos
        self.source = template
        self._arch = arch
        self.name = None
        self._jinja = None
        if override is not None:
            if override not in BUILTIN:
                raise ValueError(f"unknown chat template {override!r}; built-in: {', '.join(BUILTIN)}")
            self.name = override
        elif template:
            try:
                env = _bounded_environment()

                def raise_exception(msg):
                    raise ValueError(msg)

                env.globals["raise_exception"] = raise_exception
                self._jinja = env.from_string(template)
                self.name = f"model file (jinja2, {guess_builtin(template, arch)}-like)"
            except ImportError:
                self.name = guess_builtin(template, arch)
                _no_jinja(self.name)
            except Exception as e:  # a template Jinja2 cannot parse
                self.name = guess_builtin(template, arch)
                log.warning("model chat template does not parse (%s): using built-in %s", e, self.name)
        else:
            self.name = guess_builtin(None, arch)
            log.info("model has no chat template: using the built-in %s template", self.name)

    def render(self, messages: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError("each message must be a dict with string 'role' and 'content'")
        if self._jinja is not None:
            try:
                return render_bounded(self._jinja, messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=self.bos, eos_token=self.eos)
            except TemplateBudgetError:
                raise
            except Exception as e:
                fallback = guess_builtin(self.source, self._arch)
                log.warning("chat template failed (%s): using built-in %s", e, fallback)
                return _RENDER[fallback](messages, add_generation_prompt)
        return _RENDER[self.name](messages, add_generation_prompt)
