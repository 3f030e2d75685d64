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


def test_donated_step_leaves_the_callers_parameters_intact():
  cfg = _config()
  tx = train.make_optimizer(cfg.optimizer)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tiny_lm.init(jax.random.key(1)))
  state = train.init_train_state(params, tx, cfg)
  step = jax.jit(train.make_train_step(tiny_lm.apply, tx, cfg), donate_argnums=0)
  step(state, _batch())
  assert state.params["embed"].is_deleted()
  assert not any(x.is_deleted() for x in jax.tree.leaves(params))
  np.testing.assert_array_equal(params["embed"], tiny_lm.init(jax.random.key(1))["embed"])


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


# ---------------------------------------------------------------------------
# The generic step: loss objects, model outputs, NNX, online sparse teachers.
# ---------------------------------------------------------------------------

from flax import nnx  # noqa: E402

from sad_jax import losses, training  # noqa: E402
from sad_jax.objective import _sad as objective_lib  # noqa: E402


def _one_step(loss, apply_fn=tiny_lm.apply, batch=None, **kwargs):
  tx = record_grads()
  state = training.init_train_state(tiny_lm.init(jax.random.key(1)), tx, loss)
  step = jax.jit(training.make_train_step(loss, tx, apply_fn=apply_fn, **kwargs))
  return step(state, _batch() if batch is None else batch)


def test_sft_and_token_kd_are_the_composition_through_one_step():
  batch = _batch()
  logits = tiny_lm.apply(tiny_lm.init(jax.random.key(1)), batch)
  agent = np.isin(np.asarray(batch["span_ids"]), (2, 3))
  ce = objective_lib.hard_label_ce(logits, batch["labels"])
  _, sft = _one_step(training.cross_entropy_loss(), batch={k: v for k, v in batch.items()
                                                            if k != "teacher"})
  np.testing.assert_allclose(sft["loss"], np.asarray(ce)[agent].mean(), rtol=1e-5)
  assert "divergence" not in sft["spans"] and "hard_label_ce" in sft["spans"]

  kd_state, kd = _one_step(training.token_kd_loss(temperature=2.0))
  d = losses.forward_kl(logits, batch["teacher"], temperature=2.0)
  np.testing.assert_allclose(kd["loss"], 4.0 * np.asarray(d)[agent].mean(), rtol=1e-5)
  assert int(kd_state.sad_state.step) == 1


class _HFOutput:
  """An object with ``.logits`` and MoE router outputs, as HF Flax models return."""

  def __init__(self, logits, router_logits, expert_ids):
    self.logits, self.router_logits, self.expert_ids = logits, router_logits, expert_ids


def test_model_output_objects_feed_the_moe_term():
  def apply(params, batch):
    logits = tiny_lm.apply(params, batch)
    router = logits[..., :4][None]                         # [L=1, B, T, E=4]
    return _HFOutput(logits, router, jnp.argmax(router, -1)[..., None])

  loss = training.SADLoss({"regularizers": {"moe_load_balance": 0.5}})
  _, with_moe = _one_step(loss, apply)
  _, without = _one_step(training.SADLoss(), apply)
  assert "moe_load_balance" in with_moe["spans"]
  assert float(with_moe["loss"]) > float(without["loss"])
  with pytest.raises(TypeError, match=r"student_apply returned a mapping with keys \['x'\]"):
    _one_step(training.SADLoss(), lambda p, b: {"x": tiny_lm.apply(p, b)})
  with pytest.raises(TypeError, match="loss must be a loss object"):
    training.make_train_step("sad", record_grads(), apply_fn=tiny_lm.apply)


def test_online_top_k_teacher_with_k_equal_v_is_the_dense_teacher():
  loss = training.SADLoss({"normalization": "tokens"})
  tx = record_grads()
  state = training.init_train_state(tiny_lm.init(jax.random.key(1)), tx, loss)
  batch = {k: v for k, v in _batch().items() if k != "teacher"}
  out = {}
  for name, teacher_apply in {
      "dense": tiny_lm.apply,
      "sparse": lambda p, b: losses.top_k_teacher(tiny_lm.apply(p, b), tiny_lm.VOCAB)}.items():
    step = jax.jit(training.make_train_step(loss, tx, apply_fn=tiny_lm.apply,
                                            teacher_apply=teacher_apply))
    out[name] = step(state, batch, _teacher_params())
  np.testing.assert_allclose(out["sparse"][1]["loss"], out["dense"][1]["loss"], rtol=1e-5)
  _assert_close(out["sparse"][0].opt_state, out["dense"][0].opt_state, rtol=1e-4)


class _DropoutLM(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(tiny_lm.VOCAB, tiny_lm.DIM, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(tiny_lm.DIM, tiny_lm.VOCAB, rngs=rngs)

  def __call__(self, tokens):
    return self.head(self.drop(self.embed(tokens)))


def test_nnx_module_with_its_own_rngs_and_an_nnx_optimizer():
  model = _DropoutLM(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  loss = training.token_kd_loss()
  state = training.init_train_state(model, optimizer, loss)
  step = jax.jit(training.make_train_step(loss, optimizer, {"accumulation_steps": 2}))
  new, metrics = step(state, _batch())
  newer, again = step(new, _batch())
  assert not bool(metrics["skipped"]) and np.isfinite(float(metrics["loss"]))
  assert int(new.model_state["drop"]["rngs"]["count"][...]) == 2  # one draw per micro-batch
  assert int(newer.model_state["drop"]["rngs"]["count"][...]) == 4
  assert float(again["loss"]) != float(metrics["loss"])  # params moved, new dropout masks
  assert not np.array_equal(new.params["head"]["kernel"][...],
                            state.params["head"]["kernel"][...])
  optimizer.step[...] += 1
  with pytest.raises(ValueError, match="the nnx.Optimizer has taken 1 steps"):
    training.init_train_state(model, optimizer, loss)


# ---------------------------------------------------------------------------
# Non-finite values, float16 loss scaling, micro-batches vs the mesh.
# ---------------------------------------------------------------------------


def _trained_token(batch):
  return tuple(np.argwhere(np.isin(np.asarray(batch["span_ids"]), (2, 3)))[0])


def _guarded_step(loss, batch, apply_fn=tiny_lm.apply):
  tx = optax.sgd(0.1)
  state = training.init_train_state(tiny_lm.init(jax.random.key(1)), tx, loss)
  new, metrics = jax.jit(training.make_train_step(loss, tx, apply_fn=apply_fn))(state, batch)
  return state, new, metrics


@pytest.mark.parametrize("case", ["sparse_forward_kl", "confidence_based", "difficulty_aware"])
def test_nonfinite_teacher_or_student_on_a_trained_token_skips_and_counts(case):
  batch = _batch()
  where = _trained_token(batch)
  apply_fn = tiny_lm.apply
  if case == "sparse_forward_kl":  # NaN teacher prob: `a > 0` masks would drop it
    sparse = losses.top_k_teacher(batch["teacher"], 8)
    batch = dict(batch, teacher=sparse.replace(logprobs=sparse.logprobs.at[where + (1,)].set(
        jnp.nan)))
    loss = training.SADLoss()
  elif case == "confidence_based":  # NaN teacher -> NaN teacher entropy -> NaN weight
    batch = dict(batch, teacher=batch["teacher"].at[where + (3,)].set(jnp.nan))
    loss = training.SADLoss({"weighting": "confidence_based"})
  else:  # NaN student logit -> NaN disagreement -> NaN weight
    apply_fn = lambda p, b: tiny_lm.apply(p, b).at[where + (5,)].set(jnp.nan)  # noqa: E731
    loss = training.SADLoss({"weighting": "difficulty_aware"})
  state, new, metrics = _guarded_step(loss, batch, apply_fn)
  assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["loss"]))
  assert int(new.sad_state.skipped_steps) == 1 and int(new.sad_state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)


def test_float16_dynamic_loss_scaling():
  batch = _batch()
  # The teacher 1e-5 away from the float16 student: unscaled gradients underflow to 0.
  params = tiny_lm.init(jax.random.key(1))
  student16 = tiny_lm.apply(jax.tree.map(lambda x: x.astype(jnp.float16), params), batch)
  batch["teacher"] = student16.astype(jnp.float32) + 1e-5 * batch["teacher"]
  loss = training.token_kd_loss()
  tx = record_grads()

  def run(**loss_scale):
    cfg = {"compute_dtype": "float16", "loss_scale": dict({"period": 1}, **loss_scale)}
    state = training.init_train_state(params, tx, loss, config=cfg)
    return jax.jit(training.make_train_step(loss, tx, cfg, apply_fn=tiny_lm.apply))(state, batch)

  scaled, metrics = run()
  unscaled, _ = run(initial=1.0)
  zeros = lambda s: float(np.mean(np.asarray(s.opt_state["lm_head"]["kernel"]) == 0))  # noqa: E731
  assert zeros(unscaled) > 0.5 and zeros(scaled) < 0.05
  assert not bool(metrics["skipped"]) and float(metrics["loss_scale"]) == 2.0 ** 15
  assert float(scaled.loss_scale.scale) == 2.0 ** 16  # period 1: doubled after a good step
  overflow, metrics = run(initial=2.0 ** 100)  # the scaled gradients overflow float16
  assert bool(metrics["skipped"]) and float(overflow.loss_scale.scale) == 2.0 ** 99
  assert int(overflow.sad_state.skipped_steps) == 1
  with pytest.raises(ValueError, match="'float16' needs config.skip_nonfinite = True"):
    training.make_train_step(loss, tx, {"compute_dtype": "float16", "skip_nonfinite": False})


def test_micro_batches_that_do_not_split_over_the_mesh_name_accumulation_steps():
  from sad_jax import parallel
  mesh = parallel.make_mesh({"data": 8})
  loss = training.SADLoss()
  step = training.make_train_step(loss, record_grads(), {"accumulation_steps": 2},
                                  apply_fn=tiny_lm.apply, mesh=mesh)
  state = training.init_train_state(tiny_lm.init(jax.random.key(1)), record_grads(), loss)
  with pytest.raises(ValueError, match=r"accumulation_steps = 2 splits the batch of 8 rows "
                                       r"into micro-batches of 4 rows, which do not divide "
                                       r"evenly over the 8 devices .*'data': 8"):
    jax.eval_shape(step, state, _batch())


def test_float32_params_accumulate_the_embedding_gradient_in_float32():
  def apply(params, batch):  # activations in the compute dtype, as flax `dtype=` modules do
    h = params["embed"][batch["tokens"]].astype(params["dense"]["kernel"].dtype)
    return jnp.tanh(h @ params["dense"]["kernel"]) @ params["lm_head"]["kernel"]

  k = jax.random.split(jax.random.key(3), 2)
  batch = {"tokens": jnp.zeros((64, 16), jnp.int32),  # 1024 updates of one embedding row
           "span_ids": jnp.full((64, 16), 2, jnp.int32),
           "teacher": jax.random.normal(k[0], (64, 16, tiny_lm.VOCAB)) * 2}
  loss = training.token_kd_loss()
  tx = record_grads()
  state = training.init_train_state(tiny_lm.init(k[1]), tx, loss)

  def embed_grad(**cfg):
    step = jax.jit(training.make_train_step(loss, tx, cfg, apply_fn=apply))
    return np.asarray(step(state, batch)[0].opt_state["embed"][0], np.float64)

  ref = embed_grad()
  error = {name: np.abs(embed_grad(compute_dtype="bfloat16", **kw) - ref).max() / np.abs(ref).max()
           for name, kw in {"bf16": {}, "kept": {"float32_params": ("embed",)}}.items()}
  assert error["kept"] < 0.5 * error["bf16"], error
