"""Chat templates: the model file's Jinja2 template rendered in a sandbox when Jinja2 is
installed, else (or when it fails) a built-in template picked from the template text or the
architecture, and the choice is logged.

A model file's template is untrusted code: it runs in Jinja2's immutable sandbox with a
render budget (RENDER_SECONDS of wall time, checked on every template line) and an output
cap (MAX_RENDER_CHARS, checked on every string operation that could build something large
and on the output); past either the render is refused with TemplateBudgetError."""
import logging
import sys
import time
from typing import Dict, List, Optional

log = logging.getLogger("pylut")

BUILTIN = ("chatml", "llama-2", "llama-3", "zephyr", "phi-3")
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
    for name, f in list(env.filters.items()):
        env.filters[name] = _guarded_filter(f, name)
    return env


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


def _zephyr(messages, add_generation_prompt):
    out = "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages)
    return out + ("<|assistant|>\n" if add_generation_prompt else "")


def _phi3(messages, add_generation_prompt):
    out = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return out + ("<|assistant|>\n" if add_generation_prompt else "")


_RENDER = {"chatml": _chatml, "llama-3": _llama3, "llama-2": _llama2, "zephyr": _zephyr, "phi-3": _phi3}


def guess_builtin(template: Optional[str], arch: str = "") -> str:
    """The built-in template that matches the file's template text (or architecture)."""
    t = template or ""
    if "<|im_start|>" in t:
        return "chatml"
    if "<|start_header_id|>" in t:
        return "llama-3"
    if "[INST]" in t:
        return "llama-2"
    if "<|assistant|>" in t and "<|end|>" in t:
        return "phi-3"
    if "<|assistant|>" in t:
        return "zephyr"
    return "chatml" if arch in ("qwen2", "bitnet") or not t else "llama-2"


class ChatTemplate:
    """render(messages, add_generation_prompt=True) -> prompt text (special tokens inline)."""

    def __init__(self, template: Optional[str], bos: str = "", eos: str = "", arch: str = "",
                 override: Optional[str] = None):
        self.bos, self.eos = bos, eos
        self.source = template
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
                self.name = "model file (jinja2)"
            except ImportError:
                self.name = guess_builtin(template, arch)
                log.info("jinja2 not installed: using the built-in %s chat template", self.name)
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
                fallback = guess_builtin(self.source)
                log.warning("chat template failed (%s): using built-in %s", e, fallback)
                return _RENDER[fallback](messages, add_generation_prompt)
        return _RENDER[self.name](messages, add_generation_prompt)
