"""Fixtures shared by several test files: the active ISA, a per-test packed-model cache,
the tiny chat model (a real Qwen2 vocabulary over random weights), and the sanitizer run's
skips."""
import os

import pytest

from pylut import _core

# set by tools/sanitize.sh, whose build runs under AddressSanitizer + UBSan
SANITIZED = os.environ.get("PYLUT_SANITIZED") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "memory_peak: measures peak memory; skipped under tools/sanitize.sh")


def pytest_collection_modifyitems(config, items):
    if not SANITIZED:
        return
    skip = pytest.mark.skip(reason="PYLUT_SANITIZED=1: ASan's shadow memory and quarantine inflate peak memory")
    for item in items:
        if "memory_peak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def restore_isa():
    """Tests switch the active ISA (isa_set); put back what the process had."""
    before = _core.isa_active()
    yield
    _core.isa_set(before)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A packed-model cache of this test's own ($PYLUT_CACHE_DIR); its path."""
    monkeypatch.setenv("PYLUT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def build_chat_model(tmp_path_factory, context_length: int):
    """A one-layer Qwen2 GGUF with the real Qwen2 vocabulary (chat template included);
    skips the test where the shared vocabularies are missing. model_builder (and its gguf
    import) loads here, not at collection: the aarch64 kernel run under qemu has no gguf."""
    from model_builder import VOCAB_DIR, build_gguf
    if not (VOCAB_DIR / "ggml-vocab-qwen2.gguf").exists():
        pytest.skip(f"real vocabularies not found at {VOCAB_DIR} (../shared/testdata/vocab)")
    path = tmp_path_factory.mktemp("chat") / "tiny-qwen2-q8_0.gguf"
    build_gguf(path, "qwen2", "Q8_0", vocab_from="ggml-vocab-qwen2.gguf", n_layers=1, dim=64,
               context_length=context_length)
    return path


@pytest.fixture(scope="module")
def chat_model_file(tmp_path_factory):
    return build_chat_model(tmp_path_factory, 256)
