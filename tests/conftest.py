import sys
from pathlib import Path

import pytest

from snnl.train import one_thread

# Tests run with --import-mode=importlib: make tests/ importable for `from reference import ...`.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny problems: on a shared 2-core machine
    intra-op threads only add contention (and spin against scipy loops)."""
    with one_thread():
        yield
