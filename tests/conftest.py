"""Fixtures shared by the kernel and attention tests, and the sanitizer run's skips."""
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
