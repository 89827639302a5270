"""The sanitizer job (tools/sanitize.sh) cannot pass vacuously: the planted out-of-bounds read
of src/core/sanitize_selftest.c is reported wherever the sanitizer runtime is present.

* Under tools/sanitize.sh (PYLUT_SANITIZED=1) the planted read is in this very extension: a
  child process calls it and must die with AddressSanitizer's heap-buffer-overflow report.
* Elsewhere, with gcc's libasan present, the unit is compiled alone with sanitize.sh's flags
  (read from the script) and loaded under the preloaded runtime: the same report must appear,
  and the unit built without the selftest macro must read nothing.
* The shipped extension refuses: it has no planted read."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SANITIZED
from pylut import _core

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "src" / "core" / "sanitize_selftest.c"


def _runtime(name):
    """Path of gcc's sanitizer runtime libNAME.so, or None."""
    if shutil.which("gcc") is None:
        return None
    p = subprocess.run(["gcc", f"-print-file-name=lib{name}.so"], capture_output=True, text=True,
                       check=False).stdout.strip()
    return os.path.realpath(p) if os.path.isabs(p) and os.path.exists(p) else None


def _san_flags():
    m = re.search(r'^SAN_FLAGS="([^"]+)"', (ROOT / "tools" / "sanitize.sh").read_text(), re.MULTILINE)
    assert m, "tools/sanitize.sh lost its SAN_FLAGS line"
    return m.group(1).split()


def _run_planted(code, tmp_path, env=None):
    """Run python -c code with ASan's reports going to tmp_path; (exit code, report text)."""
    tmp_path.mkdir(exist_ok=True)
    env = dict(os.environ if env is None else env)
    env["ASAN_OPTIONS"] = f"detect_leaks=0:log_path={tmp_path / 'asan'}"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT),
                       timeout=120, check=False)
    return r.returncode, "".join(p.read_text() for p in tmp_path.glob("asan*")) + r.stderr


def _assert_reported(rc, report):
    assert rc != 0, report
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in report, report
    assert "READ of size 1" in report and "pylut_sanitize_selftest" in report, report


@pytest.mark.skipif(SANITIZED, reason="the sanitized build has the planted read (next test)")
def test_shipped_extension_has_no_planted_read():
    with pytest.raises(RuntimeError, match="no planted out-of-bounds read"):
        _core.sanitize_selftest()


@pytest.mark.skipif(not SANITIZED, reason="only tools/sanitize.sh's build has the planted read")
def test_sanitized_extension_reports_the_planted_read(tmp_path):
    rc, report = _run_planted("from pylut import _core; _core.sanitize_selftest()", tmp_path)
    _assert_reported(rc, report)


@pytest.mark.skipif(_runtime("asan") is None, reason="gcc's AddressSanitizer runtime (libasan) is not installed")
def test_planted_read_is_reported_with_sanitize_sh_flags(tmp_path):
    libs = {}
    for macro in ("-DPYLUT_SANITIZE_SELFTEST", "-UPYLUT_SANITIZE_SELFTEST"):
        so = tmp_path / f"selftest{macro[:2]}.so"
        subprocess.run(["gcc", "-O2", *_san_flags(), macro, "-shared", "-fPIC", f"-I{ROOT / 'include'}",
                        str(UNIT), "-o", str(so)], check=True, capture_output=True, timeout=120)
        libs[macro] = so
    env = dict(os.environ, LD_PRELOAD=" ".join(filter(None, [_runtime("asan"), _runtime("ubsan")])),
               ASAN_OPTIONS="detect_leaks=0")  # CPython keeps its objects to exit
    call = "import ctypes, sys; print(ctypes.CDLL(sys.argv[1]).pylut_sanitize_selftest(16))"
    rc, report = _run_planted(call.replace("sys.argv[1]", repr(str(libs["-DPYLUT_SANITIZE_SELFTEST"]))),
                              tmp_path / "planted", env)
    _assert_reported(rc, report)
    # without the macro the same unit reads nothing and says so (PYLUT_EINVAL)
    r = subprocess.run([sys.executable, "-c", call, str(libs["-UPYLUT_SANITIZE_SELFTEST"])], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "-1", r.stderr
