"""The fixed-seed quick pass of tools/fuzz_formats.py: a few hundred mutated GGUF models,
vocab GGUFs, .pylut packs and session files, each in a forked child under a memory limit
and a timeout: no crash, hang, raw exception or silently loaded payload corruption."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pylut

ROOT = Path(pylut.__file__).resolve().parents[1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fuzzer forks a child per case")
def test_fuzz_formats_quick_pass(tmp_path):
    env = dict(os.environ, PYLUT_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz_formats.py"), "--cases", "240", "--seed", "7",
                        "--timeout", "20", "--out", str(tmp_path / "findings")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert "crashes 0, hangs 0, raw exceptions 0, silent payload corruptions 0" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    for target in ("gguf", "vocab", "pack", "session"):
        assert f"  {target} " in r.stdout
