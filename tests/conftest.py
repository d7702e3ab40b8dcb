"""Test-wide settings: two forced CPU devices so that sharding is exercised on one machine, and
JAX's persistent compilation cache.

Most of the suite's time is XLA compiling small programs, many of them compiled again by other
tests, other xdist workers and the CLI subprocesses. The cache (``GATEZOO_TEST_CACHE``, default
``~/.cache/gatezoo/jax-tests``; set it empty to turn it off) is shared by all of them through
the environment; a cached program is the same executable, so results do not change.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = os.environ.get("GATEZOO_TEST_CACHE", str(Path.home() / ".cache/gatezoo/jax-tests"))
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    # every program: the small ones are the many
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs a test body in float64 (theory §3.4: all expansion checks in double precision)."""
    with jax.enable_x64(True):
        yield
