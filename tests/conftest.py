"""Fixtures shared by the kernel and attention tests."""
import pytest

from pylut import _core


@pytest.fixture
def restore_isa():
    """Tests switch the active ISA (isa_set); put back what the process had."""
    before = _core.isa_active()
    yield
    _core.isa_set(before)
