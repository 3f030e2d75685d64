"""Parity with other distillation libraries, against float64 ports of their formulas.

Each ``*_port`` below is written from the peer's published formula (the source files
are named in each docstring and in docs/parity.md) in float64 ``jax.numpy``, so that
its value is exact to rounding and its gradient is the autodiff gradient of the
peer's formula. ``sad_jax`` runs in float64 too (``jax.enable_x64``), so agreement is
checked to 1e-12 where the peer is finite; where a peer returns NaN (``-inf``
logits, masked rows) the tests pin that, and what sad_jax returns instead.

PyTorch's ``F.kl_div(input, target, log_target=True)`` is, elementwise,
``exp(target) * (target - input)`` (PyTorch documentation of ``torch.nn.KLDivLoss``);
the ports use that identity.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sad_jax import losses

TOL = 1e-12


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _rng_logits(seed, shape, scale=2.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float64)


def _mask(seed, shape):
  m = np.random.default_rng(seed).random(shape) < 0.7
  m.flat[0] = True
  return jnp.asarray(m)


def _close(a, b, tol=TOL):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _log_softmax(x):
  return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def _torch_kl_div_log_target(inp, target):
  """Elementwise ``F.kl_div(inp, target, reduction="none", log_target=True)``."""
  return jnp.exp(target) * (target - inp)


def _top_k(t, k, tail):
  """A float64 SparseTeacher (``losses.top_k_teacher`` stores float32 log-probs)."""
  logprobs, indices = jax.lax.top_k(_log_softmax(t), k)
  return losses.SparseTeacher(indices=indices.astype(jnp.int32), logprobs=logprobs,
                              tail=tail, vocab_size=t.shape[-1])


def _ours_tokens_mean(fn, s, teacher, where, **kw):
  """sad_jax's ``tokens`` reduction: sum over trained tokens / their count."""
  per_token = fn(s, teacher, where=where, **kw)
  return per_token.sum() / jnp.maximum(where.sum(), 1)


# ---------------------------------------------------------------------------
# TRL: GKDTrainer.generalized_jsd_loss (trl/experimental/gkd/gkd_trainer.py).
# ---------------------------------------------------------------------------


def trl_generalized_jsd_port(s, t, labels=None, beta=0.5, temperature=1.0,
                             reduction="batchmean"):
  """TRL's generalized JSD: beta = 0 forward KL, 1 reverse KL, else the GKD mixture.

  Elementwise over the vocab, masked by ``labels != -100`` (rows dropped), then
  ``batchmean``: the sum over kept rows and vocab / number of kept rows (without
  labels: / the size of the first axis).
  """
  log_s = _log_softmax(s / temperature)
  log_t = _log_softmax(t / temperature)
  if beta == 0:
    jsd = _torch_kl_div_log_target(log_s, log_t)
  elif beta == 1:
    jsd = _torch_kl_div_log_target(log_t, log_s)
  else:
    log_m = jnp.logaddexp(log_s + math.log1p(-beta), log_t + math.log(beta))
    jsd = (beta * _torch_kl_div_log_target(log_m, log_t)
           + (1 - beta) * _torch_kl_div_log_target(log_m, log_s))
  if labels is None:
    assert reduction == "batchmean"
    return jsd.sum() / jsd.shape[0]
  mask = labels != -100
  kept = jnp.where(mask[..., None], jsd, 0.0)   # jsd[mask]: dropped rows add nothing
  return kept.sum() / jnp.maximum(mask.sum(), 1)


TRL_ROWS = [
    pytest.param(0.0, "forward_kl", {}, id="beta0=forward_kl"),
    pytest.param(1.0, "reverse_kl", {}, id="beta1=reverse_kl"),
    pytest.param(0.1, "generalized_jsd", {"beta": 0.1}, id="beta0.1"),
    pytest.param(0.5, "generalized_jsd", {"beta": 0.5}, id="beta0.5"),
    pytest.param(0.9, "generalized_jsd", {"beta": 0.9}, id="beta0.9"),
]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("beta,name,kw", TRL_ROWS)
def test_trl_generalized_jsd(beta, name, kw, temperature):
  s, t = _rng_logits(0, (2, 5, 13)), _rng_logits(1, (2, 5, 13))
  where = _mask(2, (2, 5))
  labels = jnp.where(where, 7, -100)
  fn = getattr(losses, name)

  def ours(s):
    return _ours_tokens_mean(fn, s, t, where, temperature=temperature, **kw)

  def peer(s):
    return trl_generalized_jsd_port(s, t, labels, beta=beta, temperature=temperature)

  _close(ours(s), peer(s))
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


def test_trl_batchmean_without_labels_divides_by_the_first_axis():
  """Without labels TRL's ``batchmean`` is the sum over [B, T] / B, not a token mean."""
  s, t = _rng_logits(3, (3, 4, 9)), _rng_logits(4, (3, 4, 9))
  ours = losses.generalized_jsd(s, t, beta=0.5)
  _close(trl_generalized_jsd_port(s, t, None, beta=0.5), ours.sum() / 3)
  _close(trl_generalized_jsd_port(s, t, None, beta=0.5), ours.mean() * 4)


# ---------------------------------------------------------------------------
# Liger-Kernel: LigerFusedLinearJSDFunction (src/liger_kernel/chunked_loss/jsd_loss.py,
# fused_linear_distillation.py): logits / T, per-token JSD summed over the vocab,
# masked_fill(~mask, 0), summed, / number of valid tokens of the whole batch.
# ---------------------------------------------------------------------------


def liger_jsd_port(s, t, target, beta=0.5, temperature=1.0, ignore_index=-100):
  log_s = _log_softmax(s / temperature)
  log_t = _log_softmax(t / temperature)
  if beta == 0:
    per = _torch_kl_div_log_target(log_s, log_t).sum(-1)
  elif beta == 1:
    per = _torch_kl_div_log_target(log_t, log_s).sum(-1)
  else:
    log_m = jnp.logaddexp(log_s + math.log(1 - beta), log_t + math.log(beta))
    per = (beta * _torch_kl_div_log_target(log_m, log_t)
           + (1 - beta) * _torch_kl_div_log_target(log_m, log_s)).sum(-1)
  mask = target != ignore_index
  per = jnp.where(mask, per, 0.0)                # masked_fill(~mask, 0.0)
  return per.sum() / jnp.maximum(mask.sum(), 1)


@pytest.mark.parametrize("beta,name,kw", TRL_ROWS)
def test_liger_chunked_jsd(beta, name, kw):
  s, t = _rng_logits(5, (12, 17)), _rng_logits(6, (12, 17))   # [B*T, V] like Liger
  where = _mask(7, (12,))
  target = jnp.where(where, 3, -100)
  fn = getattr(losses, name)

  def ours(s):
    return _ours_tokens_mean(fn, s, t, where, temperature=1.5, **kw)

  def peer(s):
    return liger_jsd_port(s, t, target, beta=beta, temperature=1.5)

  _close(ours(s), peer(s))
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


# ---------------------------------------------------------------------------
# MaxText offline distillation (src/maxtext/trainers/post_train/distillation/
# distillation_utils.py): stored top-k teacher logits; teacher and the student's
# logits gathered at the same ids both softmax-normalized over the top-k at T;
# sum(KL * mask) * T^2 / max(count, 1).
# ---------------------------------------------------------------------------


def maxtext_offline_port(s, top_k_logits, top_k_indices, mask, temperature):
  mask = mask.astype(jnp.float64)   # MaxText's mask is a float array
  log_t = _log_softmax(top_k_logits / temperature)
  s_top = jnp.take_along_axis(s, top_k_indices, axis=-1)
  log_s = _log_softmax(s_top / temperature)
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
  return jnp.sum(kl * mask) * temperature**2 / jnp.maximum(mask.sum(), 1.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_maxtext_offline_top_k_equals_renormalize_both(temperature):
  s, t = _rng_logits(8, (2, 6, 40)), _rng_logits(9, (2, 6, 40))
  where = _mask(10, (2, 6))
  top_k_logits, top_k_indices = jax.lax.top_k(t, 8)
  teacher = _top_k(t, 8, "renormalize_both")

  def ours(s):
    return temperature**2 * _ours_tokens_mean(losses.forward_kl, s, teacher, where,
                                               temperature=temperature)

  def peer(s):
    return maxtext_offline_port(s, top_k_logits, top_k_indices, where, temperature)

  _close(ours(s), peer(s))
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


# ---------------------------------------------------------------------------
# DistillKit sparse KL (distillkit/lossfuncs/kl.py, lossfuncs/common.py): teacher
# top-k log-probs re-tempered by alpha = T0 / T; "zero" renormalizes them on the
# top-k, "symmetric_uniform" keeps a (K+1)-th bucket 1 - sum p (clamped to [0, 1]);
# the student's missing mass is log(1 - exp(min(lse_S log q, -eps))), eps = 1e-6,
# and the bucket term counts only where the teacher's missing mass > eps;
# sum * T^2 / number of valid tokens.
# ---------------------------------------------------------------------------

DK_EPS = 1e-6


def _log1mexp(x):
  return jnp.where(x > -1, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _dk_log_missing(logprobs):
  lse = jnp.minimum(jax.scipy.special.logsumexp(logprobs, axis=-1), -DK_EPS)
  return _log1mexp(lse)


def distillkit_sparse_kl_port(s, ids, logprobs, mask, missing, temperature, stored_t):
  alpha = stored_t / temperature
  mask = mask.astype(jnp.float64)   # a float multiply, as torch's `inner_sum *= mask`
  if missing == "symmetric_uniform" and math.isclose(alpha, 1.0):
    log_p = logprobs
  else:
    lse = jax.scipy.special.logsumexp(logprobs, axis=-1, keepdims=True)
    leftover = jnp.clip(1.0 - jnp.exp(lse), 0.0, 1.0)
    alpha_lse = jax.scipy.special.logsumexp(alpha * logprobs, axis=-1, keepdims=True)
    if missing == "symmetric_uniform":
      final = jnp.log(jnp.exp(alpha_lse) + leftover**alpha)
    else:
      final = alpha_lse
    log_p = alpha * logprobs - final
  a = s / temperature
  log_q = jnp.take_along_axis(a, ids, axis=-1) - jax.scipy.special.logsumexp(
      a, axis=-1, keepdims=True)
  p = jnp.exp(log_p)
  inner = jnp.sum(p * (log_p - log_q), axis=-1) * mask
  if missing == "symmetric_uniform":
    log_tm, log_sm = _dk_log_missing(log_p), _dk_log_missing(log_q)
    tm = jnp.exp(log_tm)
    inner = inner + jnp.where(tm > DK_EPS, tm * (log_tm - log_sm), 0.0) * mask
  return inner.sum() * temperature**2 / mask.sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("missing,tail", [("zero", "renormalize_teacher"),
                                          ("symmetric_uniform", "tail_bucket")])
def test_distillkit_sparse_kl(missing, tail, temperature):
  s, t = _rng_logits(11, (2, 5, 30), 1.0), _rng_logits(12, (2, 5, 30), 1.0)
  where = _mask(13, (2, 5))
  teacher = _top_k(t, 6, tail)     # ~half the mass in the tail

  def ours(s):
    return temperature**2 * _ours_tokens_mean(losses.forward_kl, s, teacher, where,
                                               temperature=temperature)

  def peer(s):
    return distillkit_sparse_kl_port(s, teacher.indices, teacher.logprobs, where, missing,
                                     temperature, 1.0)

  _close(ours(s), peer(s))
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


def _one_token_teacher(log_tail_mass, top=(0.5, 0.25, 0.15, 0.1), vocab=12):
  """A SparseTeacher whose stored top-k mass is exactly 1 - exp(log_tail_mass)."""
  logprobs = jnp.log(jnp.array(top, jnp.float64)) + jnp.log(-jnp.expm1(log_tail_mass))
  return losses.SparseTeacher(indices=jnp.arange(len(top), dtype=jnp.int32)[None],
                              logprobs=logprobs[None], temperature=1.0, tail="tail_bucket",
                              vocab_size=vocab)


def test_distillkit_clamps_the_student_tail_we_do_not():
  """A student tail of 1e-9: DistillKit floors it at ~1e-6, sad_jax keeps it exact."""
  teacher = _one_token_teacher(math.log(1e-3))
  s = jnp.concatenate([jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1 - 1e-9])),
                       jnp.full((8,), math.log(1e-9 / 8))])[None]
  log_q = _log_softmax(s)
  log_q_tail = jax.scipy.special.logsumexp(log_q[:, 4:], axis=-1)
  log_p = jnp.concatenate([teacher.logprobs, jnp.log(jnp.array([[1e-3]]))], axis=-1)
  exact = jnp.sum(jnp.exp(log_p) * (log_p - jnp.concatenate(
      [log_q[:, :4], log_q_tail[:, None]], axis=-1)), axis=-1)
  ours = losses.forward_kl(s, teacher)
  peer = distillkit_sparse_kl_port(s, teacher.indices, teacher.logprobs,
                                   jnp.ones((1,)), "symmetric_uniform", 1.0, 1.0)
  _close(ours, exact)
  # DistillKit reads the student tail as ~1e-6: its bucket term is 1e-3 * log(1e3) smaller.
  np.testing.assert_allclose(float(exact[0]) - float(peer), 1e-3 * math.log(1e3), rtol=1e-3)


def test_tail_bucket_floor_is_amplified_by_retempering():
  """Stored top-1 mass 1 - 1e-13: the tail bucket is ~3.2e-4 at T = 2 (exact: ~3.2e-7).

  The teacher's tail is floored at ``TAIL_FLOOR`` = 1e-7 *before* re-tempering with
  r = T0 / T, and re-tempering treats the tail as one token, so the floor is raised
  to the power r: (1e-7)^(1/2) ~ 3.2e-4, where the exact tempered bucket of the
  stored mass is (1e-13)^(1/2) ~ 3.2e-7. At T = T0 the floor stays 1e-7.
  """
  teacher = _one_token_teacher(math.log(1e-13), top=(1.0,))
  s = _rng_logits(14, (1, 12))
  _, log_p = losses.tail_bucket(s, teacher, temperature=2.0)
  tail = float(jnp.exp(log_p[0, -1]))
  floor = losses._sparse.TAIL_FLOOR
  _close(tail, math.sqrt(floor) / (math.sqrt(1 - 1e-13) + math.sqrt(floor)))
  assert 3.1e-4 < tail < 3.2e-4
  exact = math.sqrt(1e-13) / (math.sqrt(1 - 1e-13) + math.sqrt(1e-13))
  assert 3.1e-7 < exact < 3.2e-7
  _, log_p1 = losses.tail_bucket(s, teacher, temperature=1.0)
  _close(jnp.exp(log_p1[0, -1]), floor / (1 - 1e-13 + floor))


# ---------------------------------------------------------------------------
# verl top-k losses (verl/trainer/distillation/losses.py): full-vocabulary log-probs
# of student and teacher gathered at shared ids, both clamped at log(1e-8), the
# KL / JSD summed over those ids only (no renormalization, no tail term), then
# clamp_min(0).
# ---------------------------------------------------------------------------

VERL_MIN = math.log(1e-8)


def verl_topk_port(log_q, log_p, mode, beta=0.5, clamp=True):
  log_p, log_q = jnp.maximum(log_p, VERL_MIN), jnp.maximum(log_q, VERL_MIN)
  if mode == "forward_kl_topk":
    value = _torch_kl_div_log_target(log_q, log_p).sum(-1)
  elif mode == "reverse_kl_topk":
    value = _torch_kl_div_log_target(log_p, log_q).sum(-1)
  else:
    log_m = jnp.log(beta * jnp.exp(log_p) + (1 - beta) * jnp.exp(log_q))
    value = (beta * _torch_kl_div_log_target(log_m, log_p).sum(-1)
             + (1 - beta) * _torch_kl_div_log_target(log_m, log_q).sum(-1))
  return jnp.maximum(value, 0.0) if clamp else value


@pytest.mark.parametrize("mode,name,kw", [
    ("forward_kl_topk", "forward_kl", {}), ("reverse_kl_topk", "reverse_kl", {}),
    ("jsd_topk", "generalized_jsd", {"beta": 0.3})])
def test_verl_topk_with_every_id_equals_dense(mode, name, kw):
  """With the ids covering the vocabulary verl's top-k losses are the dense ones."""
  s, t = _rng_logits(15, (3, 4, 10), 1.0), _rng_logits(16, (3, 4, 10), 1.0)
  beta = kw.get("beta", 0.5)
  fn = getattr(losses, name)
  ours = lambda s: fn(s, t, **kw).sum()
  peer = lambda s: verl_topk_port(_log_softmax(s), _log_softmax(t), mode, beta).sum()
  _close(ours(s), peer(s))
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


def test_verl_truncated_forward_kl_is_tail_bucket_minus_the_tail_term():
  """With K < V verl sums over the top-k only: our tail_bucket KL minus its tail term.

  The truncated sum is not a divergence: it is negative where the student puts more
  mass on the top-k than the teacher (verl then clamps it to 0, with zero gradient);
  the tail-bucket KL is >= 0 and its gradient also moves the student's tail mass.
  """
  s, t = _rng_logits(17, (4, 20), 1.0), _rng_logits(18, (4, 20), 1.0)
  teacher = _top_k(t, 5, "tail_bucket")
  log_q, log_p = losses.tail_bucket(s, teacher)
  truncated = verl_topk_port(log_q[:, :-1], log_p[:, :-1], "forward_kl_topk", clamp=False)
  tail_term = jnp.exp(log_p[:, -1]) * (log_p[:, -1] - log_q[:, -1])
  _close(truncated + tail_term, losses.forward_kl(s, teacher))
  # A student that puts more mass than the teacher on every top-k id (its logits
  # there raised by 2): the truncated sum is negative, the KL positive.
  one = teacher.replace(indices=teacher.indices[:1], logprobs=teacher.logprobs[:1])
  on_top = jnp.isin(jnp.arange(20), one.indices[0])
  sharp = jnp.where(on_top, t[:1] + 2.0, t[:1])
  lq, lp = losses.tail_bucket(sharp, one)
  assert float(verl_topk_port(lq[:, :-1], lp[:, :-1], "forward_kl_topk", clamp=False)[0]) < 0
  assert float(verl_topk_port(lq[:, :-1], lp[:, :-1], "forward_kl_topk")[0]) == 0
  assert float(losses.forward_kl(sharp, one)[0]) > 0


def test_verl_clamp_stops_the_gradient_of_a_student_far_below_the_teacher():
  """A top-k id where the student's probability is below 1e-8: verl's clamp of log q at
  log 1e-8 leaves that logit almost no gradient; the KL's gradient there is q - p."""
  t = jnp.array([[3.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
  s = jnp.array([[-25.0, 2.0, 1.0, 0.0, 0.0, 0.0]])       # q_0 ~ 1e-12, p_0 ~ 0.6
  ids = jnp.array([[0, 1, 2]])
  peer = lambda s: verl_topk_port(jnp.take_along_axis(_log_softmax(s), ids, -1),
                                  jnp.take_along_axis(_log_softmax(t), ids, -1),
                                  "forward_kl_topk").sum()
  ours = lambda s: losses.forward_kl(s, t).sum()
  g_peer, g_ours = jax.grad(peer)(s), jax.grad(ours)(s)
  p, q = jax.nn.softmax(t), jax.nn.softmax(s)
  _close(g_ours, q - p)
  assert abs(float(g_peer[0, 0])) < 1e-10 and float(g_ours[0, 0]) < -0.5


# ---------------------------------------------------------------------------
# optax.kl_divergence(log_predictions, targets) = sum targets * (log targets - log_pred),
# with log(0) replaced by 0 (optax/losses/_classification.py).
# ---------------------------------------------------------------------------


def optax_kl_port(log_predictions, targets):
  return jnp.sum(targets * (jnp.where(targets == 0, 0.0, jnp.log(targets))
                            - log_predictions), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_optax_kl_divergence(temperature):
  s, t = _rng_logits(19, (2, 3, 11)), _rng_logits(20, (2, 3, 11))

  def peer(s, kl=optax_kl_port):
    return kl(jax.nn.log_softmax(s / temperature), jax.nn.softmax(t / temperature)).sum()

  ours = lambda s: losses.forward_kl(s, t, temperature=temperature).sum()
  _close(ours(s), peer(s))
  _close(ours(s), peer(s, optax.kl_divergence))      # the installed optax itself
  _close(jax.grad(ours)(s), jax.grad(peer)(s))


# ---------------------------------------------------------------------------
# -inf logits (impossible tokens, e.g. a padded vocabulary) and masked rows.
# ---------------------------------------------------------------------------


def _padded():
  """Student and teacher on 9 real tokens plus 3 padded with -inf on both sides."""
  s, t = _rng_logits(21, (2, 9)), _rng_logits(22, (2, 9))
  return s, t, losses.pad_vocab(s, 12), losses.pad_vocab(t, 12)


def test_minus_inf_logits_peers_nan_ours_unchanged():
  s, t, sp, tp = _padded()
  labels = jnp.zeros((2,), jnp.int32)
  with np.errstate(invalid="ignore"):
    assert np.isnan(trl_generalized_jsd_port(sp, tp, labels[None], beta=0.0))
    assert np.isnan(trl_generalized_jsd_port(sp, tp, labels[None], beta=0.5))
    assert np.isnan(liger_jsd_port(sp, tp, labels, beta=0.5))
    assert np.isnan(optax.kl_divergence(jax.nn.log_softmax(sp), jax.nn.softmax(tp)).sum())
    lq, lp = _log_softmax(sp), _log_softmax(tp)
    assert np.isfinite(verl_topk_port(lq, lp, "forward_kl_topk").sum())   # clamped
  for name, kw in [("forward_kl", {}), ("reverse_kl", {}), ("generalized_jsd", {})]:
    fn = getattr(losses, name)
    _close(fn(sp, tp, **kw), fn(s, t, **kw))
    g = jax.grad(lambda x: fn(x, tp, **kw).sum())(sp)
    _close(g[:, :9], jax.grad(lambda x: fn(x, t, **kw).sum())(s))
    assert np.all(np.asarray(g[:, 9:]) == 0)


def test_masked_rows_with_nan_logits():
  """A masked row holding NaN (e.g. uninitialized padding positions).

  TRL drops masked rows (finite value, NaN gradient through them), Liger zeroes
  their value (same), MaxText and DistillKit multiply by the mask (NaN value);
  sad_jax's ``where`` gives exactly 0 and a zero gradient on masked rows.
  """
  s, t = _rng_logits(23, (4, 10)), _rng_logits(24, (4, 10))
  s = s.at[3].set(jnp.nan)
  where = jnp.array([True, True, True, False])
  labels = jnp.where(where, 1, -100)
  top_k_logits, top_k_indices = jax.lax.top_k(t, 4)
  sparse = _top_k(t, 4, "renormalize_teacher")
  with np.errstate(invalid="ignore"):
    trl = lambda s: trl_generalized_jsd_port(s, t, labels, beta=0.5)
    liger = lambda s: liger_jsd_port(s, t, labels, beta=0.5)
    assert np.isfinite(trl(s)) and np.isnan(jax.grad(trl)(s)).any()
    assert np.isfinite(liger(s)) and np.isnan(jax.grad(liger)(s)).any()
    assert np.isnan(maxtext_offline_port(s, top_k_logits, top_k_indices, where, 1.0))
    assert np.isnan(distillkit_sparse_kl_port(s, sparse.indices, sparse.logprobs, where,
                                              "zero", 1.0, 1.0))
  for teacher in (t, sparse):
    fn = lambda s: losses.forward_kl(s, teacher, where=where).sum()
    assert np.isfinite(fn(s))
    g = jax.grad(fn)(s)
    assert np.all(np.asarray(g[3]) == 0) and np.isfinite(g).all()
