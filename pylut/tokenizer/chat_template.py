"""Chat templates: the model file's Jinja2 template rendered in a sandbox when Jinja2 is
installed, else (or when it fails) a built-in template picked from the template text or the
architecture, and the choice is logged."""
import logging
from typing import Dict, List, Optional

log = logging.getLogger("pylut")

BUILTIN = ("chatml", "llama-2", "llama-3", "zephyr", "phi-3")


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
                from jinja2.sandbox import ImmutableSandboxedEnvironment
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

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
                return self._jinja.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          bos_token=self.bos, eos_token=self.eos)
            except Exception as e:
                fallback = guess_builtin(self.source)
                log.warning("chat template failed (%s): using built-in %s", e, fallback)
                return _RENDER[fallback](messages, add_generation_prompt)
        return _RENDER[self.name](messages, add_generation_prompt)
