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

import json  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# The optional `../shared` folder next to the project root (or $SAD_JAX_SHARED): extra checks only.
SHARED = pathlib.Path(os.environ.get("SAD_JAX_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """The read-only `../shared` folder; tests that use it are skipped where it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"optional extra check: no shared fixtures folder at {SHARED}")
  return SHARED


def load_trajectory_fixtures() -> list[dict]:
  """Every record of `tests/data/trajectories/*.jsonl` (each with `name`, `format`, `expect`)."""
  records = []
  for path in sorted((DATA / "trajectories").glob("*.jsonl")):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, start=1):
        if line.strip():
          rec = json.loads(line)
          rec["_source"] = f"{path.name}:{n}"
          records.append(rec)
  return records


@pytest.fixture(scope="session")
def conventions_path() -> pathlib.Path:
  """`tests/data/trajectories/conventions.jsonl`: one record per agent-data convention."""
  return DATA / "trajectories" / "conventions.jsonl"


@pytest.fixture(scope="session")
def trajectory_fixtures() -> list[dict]:
  """The in-repository trajectory fixtures, one dict per record."""
  return load_trajectory_fixtures()


def pytest_report_header(config):
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
