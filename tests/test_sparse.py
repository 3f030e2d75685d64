"""SparseTeacher: K = V equals dense, tail policies vs float64 references, edge cases.

Each test evaluates all its divergences in one jitted function (one compilation),
compiled without LLVM optimization (``_jit``): half the compile time, same HLO.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as D
from sad_jax.objective import _sad as objective
from sad_jax.losses import _sparse as S
from sad_jax.objective import _state as state_lib

POLICIES = sorted(S.TAIL_POLICIES)
# Every policy runs by default with a fast KL, the reverse KL (mode-seeking, infinite
# where the teacher's tail is 0) and the generic alpha-divergence; with all of
# SPARSE_DIVERGENCES under -m slow.
NAME_SETS = [pytest.param(("forward_kl", "reverse_kl", "alpha_divergence"), id="some"),
             pytest.param(D.SPARSE_DIVERGENCES, id="all", marks=pytest.mark.slow)]
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
KW = {"generalized_jsd": {"beta": 0.3}, "symmetric_kl": {"ratio": 0.25},
      "skew_kl": {"alpha": 0.1}, "skew_reverse_kl": {"alpha": 0.1},
      "alpha_divergence": {"alpha": 1.5}}


def _logits(seed, shape=(2, 3, 11)):
  return (np.random.default_rng(seed).normal(size=shape) * 2).astype(np.float32)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(log_a, log_b):
  a = np.exp(log_a)
  with np.errstate(invalid="ignore"):
    return np.where(a > 0, a * (log_a - log_b), 0.0).sum(-1)


@functools.partial(_jit, static_argnums=2)
def _values_and_grads(s, teacher, names):
  """``{name: (value [...], d sum / d s)}`` at T = 2 for the divergences ``names``."""
  out = {}
  for name in names:
    fn = functools.partial(D.get_divergence(name), temperature=2.0, **KW.get(name, {}))
    out[name] = fn(s, teacher), jax.grad(lambda s: fn(s, teacher).sum())(s)
  return out


@pytest.mark.parametrize("names", NAME_SETS)
@pytest.mark.parametrize("tail", POLICIES)
def test_k_equals_v_is_dense(tail, names):
  s, t = _logits(0), _logits(1)
  teacher = S.top_k_teacher(t, t.shape[-1], temperature=2.0, tail=tail)
  dense = _values_and_grads(s, t, names)  # compiled once for all tails
  for name, (value, grad) in _values_and_grads(s, teacher, names).items():
    np.testing.assert_allclose(value, dense[name][0], rtol=2e-5, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(grad, dense[name][1], rtol=2e-4, atol=2e-6, err_msg=name)


def _np_policy(tail, s, ell, idx, temperature=1.0, t0=1.0):
  """float64 (log q, log p) on the policy's support, from the formulas."""
  r = t0 / temperature
  log_q_full = np_log_softmax(s / temperature)
  log_q = np.take_along_axis(log_q_full, idx, -1)
  mask = np.ones(s.shape, bool)
  np.put_along_axis(mask, idx, False, -1)
  with np.errstate(divide="ignore"):
    log_q_tail = np.log(np.where(mask, np.exp(log_q_full), 0).sum(-1, keepdims=True))
  if tail == "renormalize_both":
    return np_log_softmax(log_q), np_log_softmax(r * ell)
  if tail == "renormalize_teacher":
    return (np.concatenate([log_q, log_q_tail], -1),
            np.concatenate([np_log_softmax(r * ell), np.full(log_q_tail.shape, -np.inf)], -1))
  mass = np.maximum(1 - np.exp(ell).sum(-1, keepdims=True), S.TAIL_FLOOR)
  return (np.concatenate([log_q, log_q_tail], -1),
          np_log_softmax(r * np.concatenate([ell, np.log(mass)], -1)))


@_jit
def _sparse_values(s, teacher, temperature):
  return dict(forward_kl=D.forward_kl(s, teacher, temperature=temperature),
              generalized_jsd=D.generalized_jsd(s, teacher, temperature=temperature, beta=0.3),
              total_variation=D.total_variation(s, teacher, temperature=temperature),
              reverse_kl=D.reverse_kl(s, teacher, temperature=temperature))


@pytest.mark.parametrize("tail", POLICIES)
def test_policies_match_float64_reference(tail):
  """Tolerance 1e-4: the float32 log-probabilities carry ~1e-7 relative rounding."""
  s, t = _logits(2, (4, 13)), _logits(3, (4, 13))
  for temperature, t0 in [(1.0, 1.0), (2.0, 1.0), (1.0, 0.5)]:
    teacher = S.top_k_teacher(t, 5, temperature=t0, tail=tail)
    ell64 = np.asarray(teacher.logprobs, np.float64)  # the policy, not the rounding of ell
    log_q, log_p = _np_policy(tail, s, ell64, np.asarray(teacher.indices), temperature, t0)
    got = _sparse_values(s, teacher, temperature)
    msg = f"T={temperature} T0={t0}"
    np.testing.assert_allclose(got["forward_kl"], np_kl(log_p, log_q), rtol=1e-4, atol=1e-6,
                               err_msg=msg)
    jsd_m = np.log(0.3 * np.exp(log_p) + 0.7 * np.exp(log_q))
    np.testing.assert_allclose(got["generalized_jsd"],
                               0.3 * np_kl(log_p, jsd_m) + 0.7 * np_kl(log_q, jsd_m),
                               rtol=1e-4, atol=1e-6, err_msg=msg)
    np.testing.assert_allclose(got["total_variation"],
                               0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(-1),
                               rtol=1e-4, atol=1e-6, err_msg=msg)
    if tail != "renormalize_teacher":  # there the reverse KL is +inf by definition.
      np.testing.assert_allclose(got["reverse_kl"], np_kl(log_q, log_p), rtol=1e-4,
                                 atol=1e-6, err_msg=msg)
    else:
      assert np.all(np.isinf(got["reverse_kl"])), msg


@pytest.mark.parametrize("names", NAME_SETS)
@pytest.mark.parametrize("tail", POLICIES)
def test_finite_gradients_when_top_k_mass_is_one_minus_1e9(tail, names):
  vocab, k = 12, 4
  top = np.array([0.0, -0.3, -1.0, -2.0])
  z_top = np.log(np.exp(top).sum())
  rest = np.full(vocab - k, z_top + np.log(1e-9 / (vocab - k)))  # tail mass 1e-9
  t64 = np.concatenate([top, rest])[None]
  assert abs(np.exp(np_log_softmax(t64))[0, :k].sum() - (1 - 1e-9)) < 1e-12
  ell = np_log_softmax(t64)[:, :k].astype(np.float32)
  teacher = S.SparseTeacher(indices=np.arange(k)[None], logprobs=ell, tail=tail,
                            temperature=2.0)
  names = [n for n in names  # these two are +inf by definition there (docstring)
           if not (tail == "renormalize_teacher" and n in ("reverse_kl", "symmetric_kl"))]

  @_jit
  def run(s, ell, temperature):
    out = {}
    for name in names:
      fn = functools.partial(D.get_divergence(name), temperature=temperature,
                             **KW.get(name, {}))
      out[name] = jax.value_and_grad(
          lambda s, lp: fn(s, teacher.replace(logprobs=lp)).sum(), argnums=(0, 1))(s, ell)
    return out

  for temperature in (1.0, 3.0):
    for s in (t64.astype(np.float32), _logits(4, (1, vocab))):  # the student's mass too.
      for name, (value, (gs, gl)) in run(s, ell, temperature).items():
        assert np.isfinite(value), (name, temperature, value)
        assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gl)), (name, temperature)


@pytest.mark.parametrize("names", NAME_SETS)
@pytest.mark.parametrize("tail", POLICIES)
def test_non_finite_trained_token_gives_nan(tail, names):
  """NaN / +inf teacher log-probabilities or student logits on trained tokens give NaN.

  Token 4 stores an impossible token (log-probability -inf): not NaN (finite, or
  +inf where the divergence is by definition); masked token 5 is garbage and gives 0.
  """
  s, t = _logits(40, (6, 11)), _logits(41, (6, 11))
  teacher = S.top_k_teacher(t, 4, tail=tail)
  lp, idx = np.array(teacher.logprobs), np.array(teacher.indices)
  lp[0, 1] = np.nan
  lp[1, 0] = np.inf
  s[2, idx[2, 0]] = np.nan  # a stored token
  s[3, np.setdiff1d(np.arange(11), idx[3])[0]] = np.inf  # a tail token
  lp[4, 3] = -np.inf
  s[5], lp[5], idx[5] = np.nan, np.nan, -1
  where = np.array([True] * 5 + [False])
  bad = teacher.replace(logprobs=lp, indices=idx)

  @_jit
  def run(s, bad):
    out = {}
    for name in names:
      fn = functools.partial(D.get_divergence(name), where=where, **KW.get(name, {}))
      out[name] = fn(s, bad), jax.grad(lambda s: fn(s, bad)[4:].sum())(s)
    return out

  for name, (value, gs) in run(s, bad).items():
    value, gs = np.asarray(value), np.asarray(gs)
    assert np.all(np.isnan(value[:4])), (name, value)
    assert not np.isnan(value[4]), (name, value)
    assert value[5] == 0.0 and np.all(gs[5] == 0.0), name


def test_tail_bucket_mass_above_one_is_renormalized():
  ell = np.log(np.array([[0.6, 0.41]], np.float32))  # bf16-style rounding: sums to 1.01
  teacher = S.SparseTeacher(indices=np.array([[0, 1]]), logprobs=ell)
  s = _logits(5, (1, 6))
  _, log_p = _jit(S.tail_bucket)(s, teacher)
  np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-6)
  assert np.exp(log_p)[0, -1] < 2 * S.TAIL_FLOOR


def test_where_masks_garbage_indices():
  s, t = _logits(6), _logits(7)
  teacher = S.top_k_teacher(t, 3)
  where = np.array([[True, False, True], [False, True, True]])
  idx = np.where(where[..., None], np.asarray(teacher.indices), -1)
  lp = np.where(where[..., None], np.asarray(teacher.logprobs), np.nan)
  bad = teacher.replace(indices=idx, logprobs=lp)

  @_jit
  def run(s, bad, teacher):
    gs = jax.grad(lambda s: D.forward_kl(s, bad, where=where).sum())(s)
    return D.forward_kl(s, bad, where=where), gs, D.forward_kl(s, teacher)

  values, gs, clean = run(s, bad, teacher)
  assert np.all(np.asarray(values)[~where] == 0)
  assert np.all(np.asarray(gs)[~where] == 0) and np.all(np.isfinite(gs))
  np.testing.assert_allclose(values[where], clean[where], rtol=1e-6)


def test_sparse_teacher_is_a_jittable_pytree():
  s, t = _logits(8), _logits(9)
  teacher = S.top_k_teacher(t, 4, tail="renormalize_both", temperature=1.5)
  leaves, treedef = jax.tree.flatten(teacher)
  assert len(leaves) == 2
  rebuilt = jax.tree.unflatten(treedef, leaves)
  assert rebuilt.tail == "renormalize_both" and rebuilt.temperature == 1.5
  got = _jit(lambda s, teacher: D.reverse_kl(s, teacher, temperature=1.5))(s, rebuilt)
  log_q, log_p = _np_policy("renormalize_both", s, np.asarray(teacher.logprobs, np.float64),
                            np.asarray(teacher.indices), 1.5, 1.5)
  np.testing.assert_allclose(got, np_kl(log_q, log_p), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(D.DIVERGENCES) - set(D.SPARSE_DIVERGENCES)))
def test_non_f_divergences_reject_sparse_teacher(name):
  teacher = S.top_k_teacher(_logits(10), 3)
  with pytest.raises(ValueError, match=f"{name} does not accept a SparseTeacher.*forward_kl"):
    D.get_divergence(name)(_logits(11), teacher)


def test_errors():
  s = _logits(12)
  with pytest.raises(ValueError, match="unknown tail policy 'zero'"):
    S.SparseTeacher(indices=np.zeros((1, 2), int), logprobs=np.zeros((1, 2)), tail="zero")
  with pytest.raises(ValueError, match="temperature must be"):
    S.SparseTeacher(indices=np.zeros((1, 2), int), logprobs=np.zeros((1, 2)), temperature=0.0)
  with pytest.raises(ValueError, match="k must be an int in \\[1, 11\\]"):
    S.top_k_teacher(s, 12)
  with pytest.raises(ValueError, match="student vocab size 11 != teacher vocab size 13"):
    D.forward_kl(s, S.top_k_teacher(_logits(13, (2, 3, 13)), 3))
  with pytest.raises(ValueError, match="token shape"):
    D.forward_kl(s, S.top_k_teacher(_logits(13, (3, 2, 11)), 3))
  with pytest.raises(TypeError, match="indices must be integers"):
    D.forward_kl(s, S.SparseTeacher(indices=np.zeros((2, 3, 2)), logprobs=np.zeros((2, 3, 2))))


SPAN_IDS = np.array([[1, 2, 2, 3], [3, 4, 2, 0]], np.int32)


@functools.partial(_jit, static_argnums=2)
def _sad_loss_and_grad(s, teacher, overrides):
  cfg = config_lib.resolve(dict(overrides))
  st = state_lib.init_state(cfg).replace(temperature=jnp.float32(1.5))
  loss = lambda s: objective.sad_loss(s, teacher, SPAN_IDS, st, cfg)  # noqa: E731
  return jax.value_and_grad(loss, has_aux=True)(s)


@pytest.mark.parametrize("tail", POLICIES)
def test_sad_loss_with_k_equals_v_equals_dense(tail):
  """Loss, gradient and every metric (the teacher statistics included) match."""
  s, t = _logits(20, (2, 4, 9)), _logits(21, (2, 4, 9))
  overrides = (("weighting", "confidence_based"),  # weights from the teacher entropy
               ("statistics", "all"))
  (loss, (metrics, _)), grad = _sad_loss_and_grad(
      s, S.top_k_teacher(t, 9, tail=tail), overrides)
  (ref, (ref_metrics, _)), ref_grad = _sad_loss_and_grad(s, jnp.asarray(t), overrides)
  assert ref > 0
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
  assert metrics.keys() == ref_metrics.keys()
  for name in metrics:
    np.testing.assert_allclose(metrics[name][0], ref_metrics[name][0], rtol=1e-4, atol=1e-6,
                               err_msg=name)


def test_sad_loss_with_top_k_teacher_is_close():
  """A peaked teacher's top-16 of 64 carries almost all its mass: loss and grads close."""
  s, t = _logits(22, (2, 4, 64)), 4.0 * _logits(23, (2, 4, 64))
  overrides = (("divergence", "generalized_jsd"), ("normalization", "span_mean"),
               ("statistics", "all"))
  (loss, (metrics, _)), grad = _sad_loss_and_grad(s, S.top_k_teacher(t, 16), overrides)
  (ref, (ref_metrics, _)), ref_grad = _sad_loss_and_grad(s, jnp.asarray(t), overrides)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  assert all(np.all(np.isfinite(m[0])) for m in metrics.values())
  np.testing.assert_allclose(loss, ref, rtol=2e-2)
  np.testing.assert_allclose(grad, ref_grad, atol=5e-2 * np.abs(ref_grad).max())
  np.testing.assert_allclose(metrics["agreement"][0], ref_metrics["agreement"][0])
  np.testing.assert_allclose(metrics["student_entropy"][0], ref_metrics["student_entropy"][0],
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["teacher_entropy"][0], ref_metrics["teacher_entropy"][0],
                             rtol=5e-2)
