"""sad_loss: normalizations vs float64 references, masking, per-row weights, state threading,
entropy sign, gradient accumulation, shard_map exactness, regularizers, metrics."""
from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as divergences
from sad_jax.objective import _sad as objective
from sad_jax.losses import _regularizers as regularizers
from sad_jax.objective import _state as state_lib
from sad_jax.objective._spans import SpanType as S
from references import np_kl, np_softmax

P, R, A, O, X, PAD = S.PROMPT, S.REASONING, S.ACTION, S.OBSERVATION, S.OTHER, S.PAD
IDS = np.array([[P, P, R, R, A, O],
                [R, A, A, O, R, A],
                [P, R, R, R, R, PAD],
                [A, A, O, O, PAD, PAD]], np.int32)
V = 11


def np_entropy(p):
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def logits(seed, shape=(4, 6, V), scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def cfg_with(**overrides):
  return config_lib.resolve(overrides)


def run(student, teacher, ids, cfg, *, temperature=None, **kw):
  st = state_lib.init_state(cfg)
  if temperature is not None:
    st = st.replace(temperature=jnp.float32(temperature))
  return objective.sad_loss(student, teacher, ids, st, cfg, **kw)


def loss_and_grad(student, teacher, ids, cfg, **kw):
  def f(s):
    return run(s, teacher, ids, cfg, **kw)
  return jax.value_and_grad(f, has_aux=True)(student)


STUDENT, TEACHER = logits(0), logits(1)


# -- normalizations against float64 references --------------------------------------------


def test_tokens_uniform_is_masked_mean_of_divergence_times_t2():
  cfg = cfg_with(normalization="tokens")
  kl = np_kl(np_softmax(TEACHER, 2.0), np_softmax(STUDENT, 2.0))
  trained = np.isin(IDS, [R, A])
  loss, _ = run(STUDENT, TEACHER, IDS, cfg, temperature=2.0)
  np.testing.assert_allclose(loss, 4.0 * kl[trained].mean(), rtol=1e-5)
  cfg.scale_by_t2 = False
  loss, _ = run(STUDENT, TEACHER, IDS, cfg, temperature=2.0)
  np.testing.assert_allclose(loss, kl[trained].mean(), rtol=1e-5)


def test_span_mean_is_lambda_weighted_mean_per_span():
  cfg = cfg_with(normalization="span_mean", span_weights={"reasoning": 0.7, "action": 1.3})
  kl = np_kl(np_softmax(TEACHER), np_softmax(STUDENT))
  expected = 0.7 * kl[IDS == R].mean() + 1.3 * kl[IDS == A].mean()
  loss, (metrics, _) = run(STUDENT, TEACHER, IDS, cfg)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  out = objective.finalize_metrics(metrics)
  np.testing.assert_allclose(out["divergence/reasoning"], kl[IDS == R].mean(), rtol=1e-5)
  np.testing.assert_allclose(out["kl_t1/action"], kl[IDS == A].mean(), rtol=1e-5)
  assert out["tokens/reasoning"] == (IDS == R).sum() and "tokens/observation" not in out


def test_sequence_is_mean_of_row_means_over_rows_with_trained_tokens():
  ids = IDS.copy()
  ids[3] = [P, O, O, PAD, PAD, PAD]  # no trained token: not part of the denominator
  cfg = cfg_with(normalization="sequence")
  kl = np_kl(np_softmax(TEACHER), np_softmax(STUDENT))
  trained = np.isin(ids, [R, A])
  rows = [kl[b][trained[b]].mean() for b in range(3)]
  loss, _ = run(STUDENT, TEACHER, ids, cfg)
  np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-5)


# -- masking ------------------------------------------------------------------------------


GARBAGE_CFG = dict(normalization="tokens", weighting="confidence_based", hard_label_weight=0.5,
                   label_smoothing=0.1,
                   regularizers=dict(entropy=0.1, confidence_penalty=0.2, span_consistency=0.3))


@pytest.mark.parametrize("overrides", [
    {"normalization": "span_mean"},
    {"normalization": "sequence", "weighting": "difficulty_aware"},
    GARBAGE_CFG,
])
def test_garbage_teacher_on_masked_tokens_changes_neither_loss_nor_gradient(overrides):
  cfg = cfg_with(**overrides)
  masked = ~np.isin(IDS, [R, A])
  garbage = np.asarray(TEACHER).copy()
  garbage[masked] = np.random.default_rng(5).normal(size=garbage[masked].shape) * 1e4
  garbage[0, 0] = np.nan
  garbage[0, 5] = -np.inf
  garbage[2, 5] = np.inf
  labels = jnp.asarray(np.where(masked, -100, np.arange(IDS.size).reshape(IDS.shape) % V))
  (l1, (m1, _)), g1 = loss_and_grad(STUDENT, TEACHER, IDS, cfg, labels=labels)
  (l2, (m2, _)), g2 = loss_and_grad(STUDENT, jnp.asarray(garbage), IDS, cfg, labels=labels)
  assert np.isfinite(float(l1))
  np.testing.assert_array_equal(l1, l2)
  np.testing.assert_array_equal(g1, g2)
  np.testing.assert_array_equal(np.asarray(g1)[masked], 0.0)
  jax.tree.map(np.testing.assert_array_equal, m1, m2)


def test_all_masked_batch_gives_zero_loss_and_zero_gradient():
  ids = np.array([[P, O, PAD], [O, O, P]], np.int32)
  s, t = logits(2, (2, 3, V)), logits(3, (2, 3, V))
  for norm in config_lib.NORMALIZATIONS:
    cfg = cfg_with(normalization=norm, weighting="adaptive", regularizers=dict(entropy=1.0))
    (loss, (metrics, new)), g = loss_and_grad(s, t, ids, cfg)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(g, 0.0)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(metrics))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new.replace(best_loss=0.0)))
    assert int(new.step) == 1 and int(new.skipped_steps) == 0


def test_student_equal_teacher_gives_zero_without_nan():
  cfg = cfg_with(weighting="adaptive", normalization="span_mean")
  (loss, (metrics, new)), g = loss_and_grad(TEACHER, TEACHER, IDS, cfg)
  assert abs(float(loss)) < 1e-6
  np.testing.assert_allclose(g, 0.0, atol=1e-6)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(metrics))
  assert np.all(np.isfinite(new.span_losses)) and bool(new.span_seen[R])
  # Feeding the all-zero running losses back through the adaptive strategy stays finite.
  loss2, _ = objective.sad_loss(TEACHER, TEACHER, IDS, new, cfg)
  assert np.isfinite(float(loss2))


# -- per-row weights ----------------------------------------------------------------------


def test_rows_with_different_layouts_get_their_own_weights():
  cfg = cfg_with(normalization="tokens", weighting="action_heavy",
                 weighting_params=dict(heavy_factor=3.0))
  kl = np_kl(np_softmax(TEACHER), np_softmax(STUDENT))
  w = np.where(IDS == A, 3.0, np.where(IDS == R, 1.0, 0.0))  # each row from its own ids
  loss, _ = run(STUDENT, TEACHER, IDS, cfg)
  np.testing.assert_allclose(loss, (w * kl).sum() / (w > 0).sum(), rtol=1e-5)
  perm = np.array([2, 0, 3, 1])
  (l1, _), g1 = loss_and_grad(STUDENT, TEACHER, IDS, cfg)
  (l2, _), g2 = loss_and_grad(STUDENT[perm], TEACHER[perm], IDS[perm], cfg)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g1)[perm], g2, rtol=1e-5, atol=1e-8)


# -- state threading ------------------------------------------------------------------------


def test_scan_50_steps_with_state_stays_finite_and_in_bounds():
  cfg = config_lib.load_config(pathlib.Path(__file__).resolve().parents[1] / "configs" / "sad.py")
  cfg.adaptive_temperature.enabled = True
  cfg.temperature = 2.0
  cfg.weighting = "adaptive"
  cfg.regularizers.entropy = 0.01
  cfg.plateau.history_size = 8
  cfg.plateau.patience = 5
  teacher = logits(4)

  def step(carry, _):
    student, st = carry
    (loss, (_, st)), g = jax.value_and_grad(objective.sad_loss, has_aux=True)(
        student, teacher, IDS, st, cfg)
    return (student - 1.0 * g, st), (loss, st.temperature)

  (_, final), (losses, temps) = jax.jit(
      lambda s, st: jax.lax.scan(step, (s, st), None, length=50))(STUDENT, state_lib.init_state(cfg))
  assert np.all(np.isfinite(losses)) and float(losses[-1]) < float(losses[0])
  assert np.all((temps >= 1.0) & (temps <= 4.0))
  assert int(final.step) == 50 and int(final.history_count) == 50
  assert int(final.skipped_steps) == 0
  assert np.all(np.isfinite(final.span_losses)) and np.all(np.isfinite(final.loss_history))
  assert np.isfinite(float(final.best_loss))  # the 8-slot buffer filled, so a best exists
  np.testing.assert_allclose(final.curriculum_progress, 50 / cfg.curriculum.total_steps)


def test_update_state_false_leaves_state_and_config_untouched():
  cfg = config_lib.default_config()
  before = cfg.to_dict()
  st = state_lib.init_state(cfg)
  _, (_, new) = objective.sad_loss(STUDENT, TEACHER, IDS, st, cfg, update_state=False)
  assert new is st
  assert cfg.to_dict() == before


# -- entropy sign -----------------------------------------------------------------------------


@pytest.mark.parametrize("coef,direction", [(0.5, 1.0), (-0.5, -1.0)])
def test_entropy_sign_one_step(coef, direction):
  cfg = cfg_with(regularizers=dict(entropy=coef))
  _, g = loss_and_grad(STUDENT, STUDENT, IDS, cfg)  # teacher == student: only the entropy moves
  trained = np.isin(IDS, [R, A])
  h0 = np_entropy(np_softmax(STUDENT))[trained].mean()
  h1 = np_entropy(np_softmax(STUDENT - 0.5 * g))[trained].mean()
  assert direction * (h1 - h0) > 1e-3


# -- gradient accumulation ----------------------------------------------------------------


@pytest.mark.parametrize("norm", config_lib.NORMALIZATIONS)
def test_two_half_batches_equal_the_full_batch(norm):
  cfg = cfg_with(normalization=norm, span_weights=dict(reasoning=0.5, action=2.0),
                 hard_label_weight=0.3)
  labels = jnp.asarray(np.arange(IDS.size).reshape(IDS.shape) % V)
  full_norm = objective.loss_normalizer(IDS, cfg)
  (lf, (mf, sf)), gf = loss_and_grad(STUDENT, TEACHER, IDS, cfg, labels=labels)
  halves = []
  for rows in (slice(0, 2), slice(2, 4)):
    halves.append(loss_and_grad(STUDENT[rows], TEACHER[rows], IDS[rows], cfg,
                                labels=labels[rows], normalizer=full_norm, update_state=False))
  (la, (ma, _)), ga = halves[0]
  (lb, (mb, _)), gb = halves[1]
  np.testing.assert_allclose(la + lb, lf, rtol=1e-5)
  np.testing.assert_allclose(np.concatenate([ga, gb]), gf, rtol=1e-5, atol=1e-7)
  merged = objective.merge_metrics(ma, mb)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), merged, mf)
  stepped = state_lib.update_state(state_lib.init_state(cfg), merged, cfg)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), stepped, sf)


# -- shard_map ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["span_mean", "sequence"])
def test_shard_map_over_8_devices_gives_the_exact_global_loss(norm):
  assert jax.device_count() >= 8
  mesh = jax.make_mesh((8,), ("data",))
  ids = np.concatenate([IDS, IDS[::-1] * (IDS[::-1] != A)])  # 8 rows, varied layouts
  ids[7] = [P, O, O, PAD, PAD, PAD]
  s, t = logits(6, (8, 6, V)), logits(7, (8, 6, V))
  router = logits(8, (2, 8, 6, 4))
  experts = jnp.asarray(np.random.default_rng(9).integers(0, 4, (2, 8, 6, 2)), jnp.int32)
  cfg = cfg_with(normalization=norm, weighting="difficulty_aware",
                 regularizers=dict(moe_load_balance=0.1, entropy=0.05))
  st = state_lib.init_state(cfg)

  def local(s, t, ids, router, experts):
    (loss, (metrics, new)), g = jax.value_and_grad(objective.sad_loss, has_aux=True)(
        s, t, ids, st, cfg, axis_name="data", router_logits=router, expert_ids=experts)
    return loss, metrics, new, g

  sharded = jax.jit(jax.shard_map(
      local, mesh=mesh,
      in_specs=(PS("data"), PS("data"), PS("data"), PS(None, "data"), PS(None, "data")),
      out_specs=(PS(), PS(), PS(), PS("data"))))
  specs = (PS("data"), PS("data"), PS("data"), PS(None, "data"), PS(None, "data"))
  args = [jax.device_put(x, NamedSharding(mesh, spec))
          for x, spec in zip((s, t, jnp.asarray(ids), router, experts), specs)]
  loss, metrics, new, g = sharded(*args)
  (lf, (mf, nf)), gf = jax.value_and_grad(objective.sad_loss, has_aux=True)(
      s, t, jnp.asarray(ids), st, cfg, router_logits=router, expert_ids=experts)
  np.testing.assert_allclose(loss, lf, rtol=1e-5)
  np.testing.assert_allclose(g, gf, rtol=1e-4, atol=1e-7)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               (metrics, new), (mf, nf))


# -- hard labels and regularizers ---------------------------------------------------------


def test_hard_label_ce_with_smoothing_matches_reference_and_skips_impossible_tokens():
  s = np.asarray(STUDENT).copy()
  s[..., -1] = -np.inf
  labels = np.arange(IDS.size).reshape(IDS.shape) % (V - 1)
  ce = objective.hard_label_ce(jnp.asarray(s), labels, label_smoothing=0.2)
  logq = np.log(np_softmax(s[..., :-1]))
  ref = -0.8 * np.take_along_axis(logq, labels[..., None], -1)[..., 0] - 0.2 * logq.mean(-1)
  np.testing.assert_allclose(ce, ref, rtol=1e-5)
  cfg = cfg_with(normalization="tokens", hard_label_weight=2.0, label_smoothing=0.2)
  loss, _ = run(jnp.asarray(s), TEACHER, IDS, cfg, labels=labels)
  kl = np_kl(np_softmax(TEACHER), np_softmax(s))
  trained = np.isin(IDS, [R, A])
  np.testing.assert_allclose(loss, (kl + 2.0 * ref)[trained].mean(), rtol=1e-5)


def test_span_consistency_is_the_pairwise_objective_computed_linearly():
  c = np.asarray(regularizers.span_consistency(STUDENT, IDS))
  p = np_softmax(STUDENT)
  for b in range(IDS.shape[0]):
    for k in np.unique(IDS[b]):
      toks = p[b][IDS[b] == k]
      pairwise = ((toks[:, None] - toks[None]) ** 2).sum(-1).sum() / (2 * len(toks))
      np.testing.assert_allclose(c[b][IDS[b] == k].sum(), pairwise, rtol=1e-4, atol=1e-7)
  where = np.isin(IDS, [R, A])
  cw = np.asarray(regularizers.span_consistency(STUDENT, IDS, where=where))
  assert np.all(cw[~where] == 0)
  toks = p[1][IDS[1] == A]
  np.testing.assert_allclose(cw[1][IDS[1] == A], ((toks - toks.mean(0)) ** 2).sum(-1), rtol=1e-4)


def test_confidence_penalty_is_a_hinge_on_entropy():
  h = np_entropy(np_softmax(STUDENT))
  cp = regularizers.confidence_penalty(STUDENT, threshold=2.0)
  np.testing.assert_allclose(cp, np.maximum(0.0, 2.0 - h), rtol=1e-5, atol=1e-6)
  full = regularizers.confidence_penalty(STUDENT)  # tau = log V: KL(p || uniform)
  np.testing.assert_allclose(full, np.log(V) - h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(regularizers.entropy_regularizer(STUDENT), -h, rtol=1e-5)


def test_moe_load_balance_per_span():
  ids = np.array([[R, R, A, A]], np.int32)
  router = jnp.zeros((1, 4, 4))  # uniform router probabilities
  spread = jnp.asarray([[[0], [1], [2], [3]]], jnp.int32)
  loss, per_span, counts = regularizers.moe_load_balance(router, spread, ids)
  # Each span type sends its two tokens to two experts: f = (1/2, 1/2, 0, 0) -> L_k = 4 * 1/4.
  np.testing.assert_allclose(np.asarray(per_span)[[R, A]], [1.0, 1.0])
  collapsed = jnp.zeros((1, 4, 1), jnp.int32)
  loss_c, per_span_c, _ = regularizers.moe_load_balance(router, collapsed, ids)
  np.testing.assert_allclose(np.asarray(per_span_c)[[R, A]], [1.0, 1.0])  # P uniform: f*P sums to 1/E*E
  peaked = jnp.asarray(np.where(np.arange(4) == 0, 10.0, 0.0)[None, None].repeat(4, 1))
  loss_p, per_span_p, counts_p = regularizers.moe_load_balance(peaked, collapsed, ids)
  assert float(loss_p) > 3.9 and np.all(np.asarray(per_span_p)[[R, A]] > 3.9)
  np.testing.assert_array_equal(np.asarray(counts_p)[[R, A]], [2, 2])
  assert float(loss) == pytest.approx(1.0) and float(loss_c) == pytest.approx(1.0)
  g = jax.grad(lambda r: regularizers.moe_load_balance(r, collapsed, ids)[0])(peaked)
  assert float(g[0, 0, 0]) > 0  # gradient lowers the collapsed expert's probability


# -- every divergence, dtypes, errors ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(divergences.DIVERGENCES))
def test_every_divergence_runs_with_t2_applied_once(name):
  cfg = cfg_with(divergence=name, normalization="tokens")
  trained = np.isin(IDS, [R, A])
  loss, (metrics, _) = run(STUDENT, TEACHER, IDS, cfg, temperature=2.0)
  d = divergences.get_divergence(name)(STUDENT, TEACHER, temperature=2.0)
  np.testing.assert_allclose(loss, 4.0 * np.asarray(d)[trained].mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(objective.finalize_metrics(metrics)["divergence/all"],
                             np.asarray(d)[trained].mean(), rtol=1e-4, atol=1e-6)


def test_bfloat16_logits():
  cfg = config_lib.default_config()
  loss16, _ = run(STUDENT.astype(jnp.bfloat16), TEACHER.astype(jnp.bfloat16), IDS, cfg)
  loss32, _ = run(STUDENT.astype(jnp.bfloat16).astype(jnp.float32),
                  TEACHER.astype(jnp.bfloat16).astype(jnp.float32), IDS, cfg)
  assert loss16.dtype == jnp.float32
  np.testing.assert_allclose(loss16, loss32, rtol=1e-5)


def test_errors_name_the_argument():
  cfg = config_lib.default_config()
  st = state_lib.init_state(cfg)
  with pytest.raises(ValueError, match=r"span_ids shape \(4, 5\)"):
    objective.sad_loss(STUDENT, TEACHER, IDS[:, :5], st, cfg)
  with pytest.raises(TypeError, match="span_ids must be integers"):
    objective.sad_loss(STUDENT, TEACHER, IDS.astype(np.float32), st, cfg)
  with pytest.raises(ValueError, match=r"student_logits must be \[B, T, V\]"):
    objective.sad_loss(STUDENT[0], TEACHER[0], IDS[0], st, cfg)
  with pytest.raises(ValueError, match="student vocab size 11 != teacher vocab size 12"):
    objective.sad_loss(STUDENT, logits(1, (4, 6, 12)), IDS, st, cfg)
  with pytest.raises(ValueError, match=r"hard_label_weight = 0\.5 needs labels"):
    objective.sad_loss(STUDENT, TEACHER, IDS, st, cfg_with(hard_label_weight=0.5))
  with pytest.raises(ValueError, match="needs router_logits and expert_ids"):
    objective.sad_loss(STUDENT, TEACHER, IDS, st, cfg_with(regularizers=dict(moe_load_balance=1.)))
  with pytest.raises(ValueError, match=r"config\.normalisation is not a known field"):
    objective.sad_loss(STUDENT, TEACHER, IDS, st, {"normalisation": "tokens"})
  with pytest.raises(ValueError, match="generalized_jsd.*beta"):
    objective.sad_loss(STUDENT, TEACHER, IDS, st,
                       cfg_with(divergence="generalized_jsd", divergence_kwargs={"beta": 1.0}))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_metrics_carry_the_configured_statistics_and_nothing_else_changes(temperature):
  """The default computes ``kl_t1`` only; ``statistics='all'`` adds the others without
  changing loss, gradient, the shared metrics or the next state."""
  (loss, (metrics, st)), grad = loss_and_grad(STUDENT, TEACHER, IDS, cfg_with(),
                                              temperature=temperature)
  (loss_all, (metrics_all, st_all)), grad_all = loss_and_grad(
      STUDENT, TEACHER, IDS, cfg_with(statistics="all"), temperature=temperature)
  assert "kl_t1" in metrics and not {"teacher_entropy", "student_entropy", "agreement",
                                     "total_variation"} & set(metrics)
  assert set(metrics_all) == set(metrics) | set(divergences.STATISTICS)
  np.testing.assert_array_equal(loss, loss_all)
  np.testing.assert_array_equal(grad, grad_all)
  for k in metrics:
    np.testing.assert_array_equal(metrics[k][0], metrics_all[k][0], err_msg=k)
  jax.tree.map(np.testing.assert_array_equal, st, st_all)
  # The per-span teacher entropy of the trained tokens (reasoning, action) is the
  # float64 definition's.
  where = (IDS == R) | (IDS == A)
  h = np_entropy(np_softmax(np.asarray(TEACHER, np.float64)))
  sums = np.asarray(metrics_all["teacher_entropy"][0])
  np.testing.assert_allclose(sums[R] + sums[A], h[where].sum(), rtol=1e-5)
