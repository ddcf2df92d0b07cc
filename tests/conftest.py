import os

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty compile cache for tests that count compiles."""
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_configure(config):
    os.environ.setdefault("LANTERN_NUM_THREADS", "1")
    # Generated C must compile without warnings: every test compile treats them as errors.
    os.environ.setdefault("LANTERN_WERROR", "1")
    # Every compile also checks the trace cache: a recorded entry that differs from what tracing
    # produces fails the test (a stale hit would run the wrong code). Tests of hits set it to 1.
    os.environ.setdefault("LANTERN_TRACE_CACHE", "verify")
    # The memory plan frees buffers of every size (by default small ones go with their frame): the tests'
    # small programs then exercise every free, in place result and hole (and the sanitized run checks them).
    os.environ.setdefault("LANTERN_MIN_FREED_BYTES", "0")
