"""Chat templates: the real templates of Qwen3, Gemma, Phi-3.5/4, Llama 3.x, Mistral and
Falcon3 render as the model's own format; which template is used is named; without Jinja2 a
built-in of the same family is named once and renders the same text.

The .jinja files under tests/fixtures/templates are the models' own templates as llama.cpp's
source keeps them (models/templates, MIT); Phi-4's and Falcon3's are llama.cpp's test strings
and llama.cpp's format."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from pylut.tokenizer import chat_template as ct
from pylut.tokenizer.chat_template import BUILTIN, ChatTemplate, guess_builtin

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "templates"

CHAT = [{"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"}]
SYSTEM = [{"role": "system", "content": "You are a helpful assistant"}]

PHI4 = ("{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' "
        "+ message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' "
        "+ message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}{{'<|im_start|>assistant"
        "<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")

# family -> (template file or text, bos, eos, messages, the model's own rendering, built-in)
CASES = {
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>", SYSTEM + CHAT,
              "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
              "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
              "<|im_start|>assistant\n", "chatml"),
    "gemma": ("google-gemma-2-2b-it.jinja", "<bos>", "<eos>", CHAT,
              "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
              "<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\n", "gemma"),
    "phi-3.5": ("microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>", SYSTEM + CHAT,
                "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n"
                "Hi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n", "phi-3"),
    "phi-4": (PHI4, "<|endoftext|>", "<|im_end|>", SYSTEM + CHAT,
              "<|im_start|>system<|im_sep|>You are a helpful assistant<|im_end|><|im_start|>user<|im_sep|>Hello"
              "<|im_end|><|im_start|>assistant<|im_sep|>Hi there<|im_end|><|im_start|>user<|im_sep|>Who are you"
              "<|im_end|><|im_start|>assistant<|im_sep|>", "phi-4"),
    "llama-3.2": ("meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", SYSTEM + CHAT,
                  None, "llama-3"),
    "llama-3.1": ("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", SYSTEM + CHAT,
                  None, "llama-3"),
    "mistral-nemo": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>", CHAT,
                     "<s>[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]", "mistral"),
    "mistral-small-3.2": ("Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>", SYSTEM + CHAT,
                          "<s>[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]"
                          "Hi there</s>[INST]Who are you[/INST]", "mistral"),
}

LLAMA3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
          "Today Date: {date}\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
          "Hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")


def template_text(source: str) -> str:
    return (TEMPLATES / source).read_text(encoding="utf-8") if source.endswith(".jinja") else source


@pytest.mark.parametrize("family", sorted(CASES))
def test_real_templates_render_the_models_own_format(family):
    pytest.importorskip("jinja2")
    source, bos, eos, messages, want, builtin = CASES[family]
    t = ChatTemplate(template_text(source), bos=bos, eos=eos)
    assert t.name == f"model file (jinja2, {builtin}-like)"
    got = t.render(messages, add_generation_prompt=True)
    if want is None:  # Llama 3.x: a dated system header, today's through strftime_now (3.2)
        want = LLAMA3.format(date="26 Jul 2024" if family == "llama-3.1" else time.strftime("%d %b %Y"))
    assert got == want


@pytest.mark.parametrize("family", sorted(CASES))
def test_builtins_match_the_real_templates(family):
    """The built-in a file's template is recognised as renders the same text (Llama 3.x's
    dated system header and Phi-3.5's trailing EOS aside)."""
    pytest.importorskip("jinja2")
    source, bos, eos, messages, want, builtin = CASES[family]
    assert guess_builtin(template_text(source)) == builtin
    got = ChatTemplate(None, override=builtin).render(messages, add_generation_prompt=True)
    real = ChatTemplate(template_text(source), bos=bos, eos=eos).render(messages, add_generation_prompt=True)
    if family.startswith("llama-3"):
        real = real.replace(real[real.index("Cutting"):real.index("You are")], "")
    assert got == real


def test_gemma4_template_from_the_vocab_file():
    pytest.importorskip("jinja2")
    t = ChatTemplate(template_text("google-gemma-4-31B-it.jinja"), bos="<bos>", eos="<eos>")
    out = t.render(SYSTEM + CHAT, add_generation_prompt=True)
    assert out.startswith("<bos>") and "Hello" in out and "Who are you" in out
    assert "You are a helpful assistant" in out


def test_falcon3_builtin_is_llama_cpps_format():
    out = ChatTemplate(None, override="falcon3").render(SYSTEM + CHAT)
    assert out == ("<|system|>\nYou are a helpful assistant\n<|user|>\nHello\n<|assistant|>\nHi there\n"
                   "<|user|>\nWho are you\n<|assistant|>\n")
    # Falcon3's own template: <|user|>/<|assistant|> turns closed by a newline, no <|end|>
    assert guess_builtin("{{ '<|user|>\\n' + m }}{{ '<|assistant|>\\n' }}") == "falcon3"


def test_gemma_builtin_folds_the_system_prompt_into_the_first_turn():
    out = ChatTemplate(None, override="gemma").render(SYSTEM + CHAT)
    assert out.startswith("<bos><start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n")
    assert out.endswith("<start_of_turn>model\n")


def test_every_builtin_renders():
    for name in BUILTIN:
        out = ChatTemplate(None, override=name).render(SYSTEM + CHAT)
        assert "Who are you" in out, name


def test_no_template_picks_the_architectures_builtin():
    assert ChatTemplate(None, arch="gemma3").name == "gemma"
    assert ChatTemplate(None, arch="qwen3").name == "chatml"
    assert ChatTemplate(None, arch="phi3").name == "phi-3"


def test_without_jinja2_the_builtin_is_named_once(monkeypatch, caplog):
    def no_jinja():
        raise ImportError("No module named 'jinja2'")
    monkeypatch.setattr(ct, "_bounded_environment", no_jinja)
    monkeypatch.setattr(ct, "_said_no_jinja", False)
    source, bos, eos, messages, want, builtin = CASES["qwen3"]
    with caplog.at_level(logging.INFO, logger="pylut"):
        first = ChatTemplate(template_text(source), bos=bos, eos=eos)
        second = ChatTemplate(template_text(CASES["gemma"][0]))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "jinja2 is not installed" in warnings[0].getMessage()
    assert "chatml" in warnings[0].getMessage()
    assert (first.name, second.name) == ("chatml", "gemma")
    assert first.render(messages) == want
