"""Test setup: 8 host CPU devices for sharding tests, float32 default, fixtures.

XLA_FLAGS must be set before jax is imported anywhere, so it happens at the top
of this file, which pytest imports before any test module.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """The read-only `../shared` folder next to the project root."""
  if not SHARED.is_dir():
    pytest.fail(f"expected the shared fixtures folder at {SHARED}")
  return SHARED


def pytest_report_header(config):
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
