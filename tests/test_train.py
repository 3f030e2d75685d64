"""The train step: accumulation, online/offline teacher, mixed precision, guard, donation."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_lm
from sad_jax.training import _step as train


def record_grads() -> optax.GradientTransformation:
  """An 'optimizer' whose state is the last gradient and whose update is zero."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _batch():
  """A batch whose offline teacher logits are the teacher model's."""
  batch = tiny_lm.make_batch(jax.random.key(0))
  batch["teacher"] = tiny_lm.apply(_teacher_params(), batch)
  return batch


def _teacher_params():
  return jax.tree.map(lambda x: 2.0 * x, tiny_lm.init(jax.random.key(7)))


def _config(**overrides):
  # span_mean normalization: a mean of means would differ from it under accumulation.
  return train.resolve_config({"objective": {"normalization": "span_mean",
                                             "hard_label_weight": 0.1}, **overrides})


@functools.lru_cache(maxsize=None)
def _step(accumulation_steps=1, online=False, compute_dtype="float32"):
  tx = record_grads()
  cfg = _config(accumulation_steps=accumulation_steps, compute_dtype=compute_dtype)
  state = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
  step = jax.jit(train.make_train_step(tiny_lm.apply, tx, cfg,
                                       teacher_apply=tiny_lm.apply if online else None))
  if online:
    batch = {k: v for k, v in _batch().items() if k != "teacher"}
    return step(state, batch, _teacher_params())
  return step(state, _batch())


def _assert_close(a, b, rtol=1e-5):
  def check(x, y):
    scale = float(np.abs(np.asarray(y, np.float64)).max()) if np.size(y) else 0.0
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6 * scale)
  jax.tree.map(check, a, b)


@pytest.mark.parametrize("accumulation_steps", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_accumulation_equals_the_full_batch(accumulation_steps):
  full_state, full = _step()
  acc_state, acc = _step(accumulation_steps)
  assert float(full["loss"]) > 0
  np.testing.assert_allclose(acc["loss"], full["loss"], rtol=1e-5)
  _assert_close(acc_state.opt_state, full_state.opt_state)  # the gradients
  _assert_close(acc["spans"], full["spans"])                # (sum, count) metrics
  _assert_close(acc_state.sad_state, full_state.sad_state)  # advanced once, identically
  assert int(acc_state.sad_state.step) == 1 and int(acc_state.step) == 1


def test_accumulation_is_not_a_mean_of_micro_batch_means():
  # The two micro-batches (rows 0::2 and 1::2) have different trained-token counts,
  # so averaging their own means would give another loss than the full batch's.
  batch = _batch()
  cfg = _config()
  from sad_jax.objective import _sad as objective
  from sad_jax.objective import _state as state_lib
  logits = tiny_lm.apply(tiny_lm.init(jax.random.key(1)), batch)
  sad = state_lib.init_state(cfg.objective)
  halves = [jax.tree.map(lambda x, i=i: x[i::2], (logits, batch)) for i in range(2)]
  loss = jax.jit(lambda lg, b: objective.sad_loss(lg, b["teacher"], b["span_ids"], sad,
                                                  cfg.objective, labels=b["labels"])[0])
  means = [loss(lg, b) for lg, b in halves]
  _, full = _step()
  _, acc = _step(2)
  assert abs(float(np.mean(means)) - float(full["loss"])) > 1e-4
  np.testing.assert_allclose(acc["loss"], full["loss"], rtol=1e-5)


def test_online_teacher_equals_offline_teacher_logits():
  off_state, off = _step()
  on_state, on = _step(online=True)
  np.testing.assert_allclose(on["loss"], off["loss"], rtol=1e-5)
  _assert_close(on_state.opt_state, off_state.opt_state)


def test_mixed_precision_runs_the_model_in_bfloat16_and_keeps_fp32_params():
  seen = []

  def student_apply(params, batch, rng):
    seen.append((params["embed"].dtype, rng.shape))
    return tiny_lm.apply(params, batch)

  cfg = _config(compute_dtype="bfloat16")
  tx = record_grads()
  state = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
  new, metrics = jax.jit(train.make_train_step(student_apply, tx, cfg))(state, _batch())
  assert seen == [(jnp.bfloat16, ())]  # a fresh key per step was passed as `rng`
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(new.opt_state))
  assert metrics["loss"].dtype == jnp.float32
  _, full = _step()
  np.testing.assert_allclose(metrics["loss"], full["loss"], rtol=3e-2)
  assert not np.array_equal(new.rng, state.rng)


def test_nonfinite_guard_skips_the_update_and_counts_it():
  cfg = _config(optimizer={"name": "adamw", "learning_rate": 1e-2})
  tx = train.make_optimizer(cfg.optimizer)
  step = jax.jit(train.make_train_step(tiny_lm.apply, tx, cfg), donate_argnums=0)
  state = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
  snapshot = jax.tree.map(np.array, state)
  good = _batch()
  # NaN teacher logits on a trained token -> non-finite loss and gradients.
  trained = np.argwhere(np.isin(np.asarray(good["span_ids"]), (2, 3)))[0]
  bad = dict(good, teacher=good["teacher"].at[tuple(trained)].set(jnp.nan))

  new, metrics = step(state, bad)
  assert state.params["embed"].is_deleted()  # the input buffers were donated
  assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, new.params, snapshot.params)
  jax.tree.map(np.testing.assert_array_equal, new.opt_state, snapshot.opt_state)
  assert int(new.sad_state.skipped_steps) == 1 and int(new.sad_state.step) == 0
  assert int(new.step) == 1

  # NaN on a padding token is masked out: nothing is skipped, the update applies.
  pad = np.argwhere(np.asarray(good["span_ids"]) == 0)[0]
  masked = dict(good, teacher=good["teacher"].at[tuple(pad)].set(jnp.nan))
  newer, metrics = step(new, masked)
  assert not bool(metrics["skipped"]) and np.isfinite(float(metrics["loss"]))
  assert int(newer.sad_state.skipped_steps) == 1 and int(newer.sad_state.step) == 1
  assert not np.array_equal(newer.params["embed"], snapshot.params["embed"])
  assert int(newer.step) == 2
  assert train.summarize(metrics)["loss"] == pytest.approx(float(metrics["loss"]))


def test_optimizer_from_config_clips_the_global_norm():
  tx = train.make_optimizer({"name": "sgd", "learning_rate": 1.0, "b1": 0.0,
                             "grad_clip_norm": 0.5})
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 0.5, rtol=1e-6)
  assert isinstance(train.make_optimizer({"grad_clip_norm": 0.0}), optax.GradientTransformation)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"config.accumulation_steps = 0 is invalid"):
    train.resolve_config({"accumulation_steps": 0})
  with pytest.raises(ValueError, match=r"config.compute_dtype = 'int8' is invalid"):
    train.resolve_config({"compute_dtype": "int8"})
  with pytest.raises(ValueError, match=r"config.optimizer.lr is not a known field"):
    train.resolve_config({"optimizer": {"lr": 1.0}})
  with pytest.raises(ValueError, match=r"config.normalization = 'mean' is invalid"):
    train.resolve_config({"objective": {"normalization": "mean"}})
  with pytest.raises(ValueError, match=r"no 'objective' field"):
    from sad_jax.objective import _config as sad_config
    train.resolve_config(sad_config.default_config())
  step = train.make_train_step(tiny_lm.apply, record_grads(), _config(accumulation_steps=3))
  state = train.init_train_state(tiny_lm.init(jax.random.key(1)), record_grads(), _config())
  with pytest.raises(ValueError, match=r"accumulation_steps = 3 must divide the batch size"):
    jax.eval_shape(step, state, _batch())
  with pytest.raises(ValueError, match=r"batch has no field 'teacher'"):
    jax.eval_shape(train.make_train_step(tiny_lm.apply, record_grads(), _config()), state,
                   {k: v for k, v in _batch().items() if k != "teacher"})
