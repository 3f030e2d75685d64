"""Checkpointing: kill-and-resume exactness, retention, checksums, non-blocking saves,
configs, params-only restores, clear errors."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

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



def _flip_one_bit(step_dir: pathlib.Path) -> pathlib.Path:
  """Flips one bit in the middle of the largest array file of a step (size unchanged)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
  target = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x10
  target.write_bytes(bytes(data))
  return target


# After a failed read, orbax's restore thread may report to a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_flipped_bit_is_an_error_and_restore_or_falls_back_to_the_intact_step(tmp_path):
  state, saved = _state(), {}
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    for step in (1, 2):
      state = state.replace(step=jnp.asarray(step, jnp.int32),
                            params=jax.tree.map(lambda x: x + 1.0, state.params))
      saved[step] = state.params
      assert ckpt.save(state, {"position": step})
  assert (tmp_path / "2" / checkpoint.CHECKSUMS).is_file()
  damaged = _flip_one_bit(tmp_path / "2")
  ckpt = checkpoint.Checkpointer(tmp_path)
  with pytest.raises(checkpoint.CheckpointError,
                     match=rf"checkpoint {tmp_path / '2'}: state/.*{damaged.name} fails its "
                           r"checksum .* the file is damaged"):
    ckpt.restore(_state(), step=2)
  with pytest.warns(RuntimeWarning, match=r"skipping damaged checkpoint.*/2: state/"):
    restored, data_state = ckpt.restore_or(_state(), {"position": 0})
  assert int(restored.step) == 1 and data_state == {"position": 1}
  jax.tree.map(np.testing.assert_array_equal, restored.params, saved[1])
  _flip_one_bit(tmp_path / "1")
  with pytest.warns(RuntimeWarning), pytest.raises(
      checkpoint.CheckpointError, match=r"no intact checkpoint in .*\n.*/2: .*\n.*/1: "):
    ckpt.restore_or(_state(), {"position": 0})
  ckpt.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(_state(), {"position": 3})
  for p in (tmp_path / "0" / "state").rglob("*"):
    if p.is_file() and p.stat().st_size > 100:
      p.write_bytes(b"\x00garbage" * 3)
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.warns(RuntimeWarning), pytest.raises(
      checkpoint.CheckpointError, match=rf"no intact checkpoint in {tmp_path}:\n  checkpoint "
                                        rf"{tmp_path / '0'}: state/.* bytes"):
    ckpt.restore_or(_state(), {"position": 0})


def test_missing_checksums_refuse_unless_verify_is_off(tmp_path):
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(_state(), {"position": 0})
  (tmp_path / "0" / checkpoint.CHECKSUMS).unlink()
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.raises(
      checkpoint.CheckpointError, match="has no sad_checksums.json: it cannot be verified"):
    ckpt.restore(_state())
  with checkpoint.Checkpointer(tmp_path, verify=False) as ckpt:
    assert int(ckpt.restore(_state())[0].step) == 0


class _UnreadableStep:
  """A step that fails the test if the host ever reads it (it would block on the device)."""

  def __int__(self):
    raise AssertionError("save() read the device step")

  __index__ = __array__ = __int__


def test_save_uses_a_host_step_counter_and_every_steps_exactly(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path, every_steps=100) as ckpt:
    restored, _ = ckpt.restore_or(state, {})  # fresh: the first save reads the step once
    assert ckpt.save(restored.replace(step=jnp.asarray(0, jnp.int32))) is True  # 0 % 100
    blind = state.replace(step=_UnreadableStep())
    for _ in range(1, 100):  # steps 1 .. 99: no save, no device read
      assert ckpt.save(blind, {"position": 0}) is False
    assert ckpt.save(state.replace(step=jnp.asarray(100, jnp.int32))) is True
    ckpt.wait()
    assert ckpt.all_steps() == [0, 100]
    with pytest.raises(checkpoint.CheckpointError,
                       match="save at host step 200, but train_state.step is 150"):
      ckpt.save(state.replace(step=jnp.asarray(150, jnp.int32)), step=200)
  with checkpoint.Checkpointer(tmp_path, every_steps=100) as ckpt:
    ckpt.restore(state)  # the counter resumes after the restored step 100
    assert ckpt.save(state.replace(step=_UnreadableStep())) is False  # 101
    for step in range(102, 108):
      assert ckpt.save(state.replace(step=_UnreadableStep()), step=step) is False
    assert ckpt.all_steps() == [0, 100]  # step 7 (or 107) is not saved with every_steps=100


def test_save_returns_while_the_device_is_still_computing(tmp_path):
  @jax.jit
  def slow(x):  # a train step whose new step number depends on the slow result
    y = jax.lax.fori_loop(0, 400, lambda _, y: jnp.tanh(y @ y) * 0.5, x)
    return y, 1 + (y[0, 0] * 0).astype(jnp.int32)

  state = _state()
  x = jnp.full((384, 384), 0.01)
  with checkpoint.Checkpointer(tmp_path, every_steps=10) as ckpt:
    jax.block_until_ready(slow(x))  # compiled
    ckpt.save(state.replace(step=jnp.asarray(0, jnp.int32)), step=0)
    t0 = time.perf_counter()
    y, step = slow(x)
    pending = state.replace(step=step, rng=y)
    assert ckpt.save(pending) is False
    returned_after = time.perf_counter() - t0
    still_running = not pending.step.is_ready()
    pending.step.block_until_ready()
    computed_after = time.perf_counter() - t0
  assert still_running, (returned_after, computed_after)
  assert returned_after < computed_after


def test_final_forced_save_is_idempotent(tmp_path):
  state = _state().replace(step=jnp.asarray(4, jnp.int32))
  with checkpoint.Checkpointer(tmp_path, every_steps=2) as ckpt:
    assert ckpt.save(state, {"position": 4}, step=4) is True
    assert ckpt.save(state, {"position": 4}, force=True) is False  # already saved
  with checkpoint.Checkpointer(tmp_path, every_steps=2) as ckpt:  # a new process
    assert ckpt.save(state, {"position": 4}, force=True) is False
    assert ckpt.save(state.replace(step=jnp.asarray(5, jnp.int32)), force=True) is True
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5]


def test_config_is_saved_and_differences_are_refused_or_listed(tmp_path):
  cfg = train.resolve_config({"optimizer": {"learning_rate": 1e-3}})
  with checkpoint.Checkpointer(tmp_path, every_steps=1, config=cfg) as ckpt:
    ckpt.save(_state(), {"position": 0})
  assert (tmp_path / "0" / "config").is_dir()
  other = train.resolve_config({"optimizer": {"learning_rate": 1e-2},
                                "objective": {"temperature": 2.0}})
  diff = checkpoint.config_differences(cfg, other)
  assert "optimizer.learning_rate: 0.001 -> 0.01" in diff
  assert any(d.startswith("objective.temperature: 1.0 -> 2.0") for d in diff), diff
  with checkpoint.Checkpointer(tmp_path, config=other) as ckpt, pytest.raises(
      checkpoint.CheckpointError,
      match=r"saved with another config \(saved -> now\):\n(.|\n)*optimizer.learning_rate: "
            r"0.001 -> 0.01"):
    ckpt.restore_or(_state(), {})
  with checkpoint.Checkpointer(tmp_path, config=other, config_mismatch="warn") as ckpt:
    with pytest.warns(RuntimeWarning, match="optimizer.learning_rate: 0.001 -> 0.01"):
      restored, _ = ckpt.restore(_state())
    assert "optimizer.learning_rate: 0.001 -> 0.01" in ckpt.config_differences
  with checkpoint.Checkpointer(tmp_path, config=cfg) as ckpt, warnings.catch_warnings():
    warnings.simplefilter("error")
    ckpt.restore(_state())
    assert ckpt.config_differences == []


def test_params_only_restore(tmp_path):
  state = _state()
  state = state.replace(params=jax.tree.map(lambda x: x * 3.0, state.params))
  with checkpoint.Checkpointer(tmp_path, every_steps=1) as ckpt:
    ckpt.save(state, {"position": 0})
  fresh = tiny_lm.init(jax.random.key(7))
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    params = ckpt.restore_params(fresh)
    assert jax.tree.structure(params) == jax.tree.structure(fresh)
    jax.tree.map(np.testing.assert_array_equal, params, state.params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    bad = dict(fresh, dense={"kernel": jnp.zeros((8, 8))})
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"params/dense/kernel has shape \(16, 16\) but the train state "
                             r"expects \(8, 8\)"):
      ckpt.restore_params(bad)
  _flip_one_bit(tmp_path / "0")
  with checkpoint.Checkpointer(tmp_path) as ckpt, pytest.raises(
      checkpoint.CheckpointError, match="fails its checksum"):
    ckpt.restore_params(fresh)
