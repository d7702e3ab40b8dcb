"""Test-wide settings: two forced CPU devices so that sharding is exercised on one machine."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Runs a test body in float64 (THEORY.md §3.4: all expansion checks in double precision)."""
    with jax.enable_x64(True):
        yield
