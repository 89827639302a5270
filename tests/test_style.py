"""Habits the test suite enforces: ruff's checks (pyproject.toml [tool.ruff]) over the Python
tree, and documentation that names only files which exist."""
import glob
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "DEVELOP.md"] + sorted((ROOT / "docs").glob("*.md"))

# a repo path: starts at one of these folders, not inside a longer path or word
# (`include/pylut/pylut.h` is one path, not a `pylut/` one; `~/.cache/pylut` is none)
PATH_RE = re.compile(r"(?<![\w./~$-])((?:src|pylut|tools|tests|include|docs)/[\w./*-]*)")


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "pylut", "tests", "tools"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"ruff check failed:\n{r.stdout}{r.stderr}"


def named_paths(text):
    """Every repo path a document names, trailing punctuation of the sentence removed."""
    for m in PATH_RE.finditer(text):
        yield m.group(1).rstrip(".,;:")


def test_named_paths_match():
    assert list(named_paths("see `src/lut/lut_avx2.c`, and include/pylut/pylut.h.")) == ["src/lut/lut_avx2.c",
                                                                                          "include/pylut/pylut.h"]
    assert list(named_paths("~/.cache/pylut and $HOME/src/x and a/tools/y")) == []


def test_docs_name_only_existing_paths():
    """README.md, DEVELOP.md and docs/*.md: every `src/`, `pylut/`, `tools/`, `tests/`,
    `include/` and `docs/` path they name exists (a glob must match something), so a file move
    cannot leave the docs pointing at nothing. CHANGELOG.md describes the tree as it was at
    each release and is not checked."""
    assert (ROOT / "README.md").exists()
    missing = []
    for doc in DOCS:
        if not doc.exists():
            continue
        for path in named_paths(doc.read_text()):
            found = glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()
            if not found:
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, "documents name paths that do not exist:\n" + "\n".join(missing)
