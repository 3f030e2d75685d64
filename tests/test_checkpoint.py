"""Checkpointing: kill-and-resume exactness, retention, clear errors."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_lm
from sad_jax.training import checkpoint
from sad_jax.training import _step as train

WORKER = pathlib.Path(__file__).resolve().parent / "resume_worker.py"
STEPS = 8  # saves every 3 steps: 3 and 6


def _worker(tmp_path, ckpt_dir, *args) -> subprocess.Popen:
  env = dict(os.environ)
  # A shared compilation cache: the two runs compile the same step once.
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return subprocess.Popen(
      [sys.executable, str(WORKER), "--dir", str(ckpt_dir), "--steps", str(STEPS), *args],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> str:
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{out}\n{err[-3000:]}"
  return out


def test_sigkill_and_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
  run_dir = tmp_path / "run"
  victim = _worker(tmp_path, run_dir, "--pause-after", "7")
  lines = []
  for line in victim.stdout:  # wait until it is mid-run, then kill it hard
    lines.append(line.strip())
    if line.strip() == "paused":
      break
  victim.send_signal(signal.SIGKILL)
  victim.communicate(timeout=60)
  assert victim.returncode == -signal.SIGKILL, (lines, victim.returncode)
  assert lines[-2:] == ["step 7", "paused"]

  # The resumed process then also trains from scratch without interruption (same
  # compiled step) for the reference.
  out = _finish(_worker(tmp_path, run_dir, "--out", str(tmp_path / "resumed.npz"),
                        "--reference-out", str(tmp_path / "reference.npz")))
  # The save of step 6 may still have been in flight when the kill landed.
  resumed_at = out.splitlines()[0]
  assert resumed_at in ("resumed 6 position 6", "resumed 3 position 3"), resumed_at
  reference, resumed = np.load(tmp_path / "reference.npz"), np.load(tmp_path / "resumed.npz")
  assert sorted(reference.files) == sorted(resumed.files)
  assert any("sad_state" in k for k in reference.files)
  for key in reference.files:
    assert reference[key].dtype == resumed[key].dtype, key
    assert reference[key].tobytes() == resumed[key].tobytes(), key


def _state(dim=tiny_lm.DIM, tx=None):
  params = tiny_lm.init(jax.random.key(0))
  if dim != tiny_lm.DIM:
    params["dense"]["kernel"] = jnp.zeros((dim, dim))
  return train.init_train_state(params, tx or optax.adam(1e-3), {})


def test_saves_every_n_steps_keeps_k_and_restores_everything(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, every_steps=2, keep=2, async_save=True) as ckpt:
    for step in range(1, 8):
      state = state.replace(step=jnp.asarray(step, jnp.int32),
                            sad_state=state.sad_state.replace(
                                temperature=jnp.asarray(1.0 + step, jnp.float32)))
      ckpt.save(state, {"position": 10 * step, "epoch": 0})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 6]
  fresh = _state()
  restored, data_state = checkpoint.Checkpointer(tmp_path).restore(fresh)
  assert data_state == {"position": 60, "epoch": 0}
  assert int(restored.step) == 6 and float(restored.sad_state.temperature) == 7.0
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  assert jax.tree.structure(restored) == jax.tree.structure(fresh)
  again, _ = checkpoint.Checkpointer(tmp_path).restore(fresh, step=4)
  assert int(again.step) == 4


def test_restore_or_starts_fresh_only_without_any_checkpoint(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "empty")
  state = _state()
  assert ckpt.restore_or(state, {"position": 0}) == (state, {"position": 0})
  with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint in .*empty"):
    ckpt.restore(state)


def test_incompatible_checkpoint_names_path_and_mismatch(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(_state(), {"position": 0})
  ckpt = checkpoint.Checkpointer(tmp_path)
  path = os.path.join(str(tmp_path), "0")
  with pytest.raises(checkpoint.CheckpointError,
                     match=rf"checkpoint {path}: params/dense/kernel has shape \(16, 16\) but "
                           r"the train state expects \(8, 8\)"):
    ckpt.restore(_state(dim=8))
  with pytest.raises(checkpoint.CheckpointError,
                     match=rf"checkpoint {path} does not match the train state: fields missing "
                           r"from the checkpoint \[\], fields not in the train state "
                           r"\['opt_state/0/count', 'opt_state/0/mu/dense/kernel'"):  # sgd keeps no Adam moments
    ckpt.restore(_state(tx=optax.sgd(0.1)))
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint for step 5 .* \[0\]"):
    ckpt.restore(_state(), step=5)


# After the failed read, orbax's restore thread reports to a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(_state(), {"position": 3})
  step_dir = tmp_path / "0" / "state"
  data_files = [p for p in step_dir.rglob("*") if p.is_file()
                and ("ocdbt" in str(p.relative_to(step_dir)) or p.parent.name == "d")]
  assert data_files
  for p in data_files:
    p.write_bytes(b"\x00garbage" * 3)
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.raises(
      checkpoint.CheckpointError, match=rf"checkpoint {tmp_path / '0'} is corrupt or unreadable"):
    ckpt.restore_or(_state(), {"position": 0})
