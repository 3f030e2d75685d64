"""Divergences: float64 references, properties, numerics matrix, errors."""
from __future__ import annotations

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import test_util as jtu

from sad_jax.losses import _divergences as D
from references import np_kl, np_softmax

# ---------------------------------------------------------------------------
# float64 numpy references, written from the formulas independently of the code.
# ---------------------------------------------------------------------------


def np_alpha(p, q, alpha):
  if alpha == 1:
    return np_kl(p, q)
  if alpha == 0:
    return np_kl(q, p)
  return ((p ** alpha * q ** (1 - alpha)).sum(-1) - 1) / (alpha * (alpha - 1))


def np_alpha_beta(p, q, a, b):
  if a == 0 and b == 0:
    return 0.5 * ((np.log(p) - np.log(q)) ** 2).sum(-1)
  if a + b == 0:
    r = (q / p) ** a
    return (np.log(r) + 1 / r - 1).sum(-1) / a ** 2
  if b == 0:
    return (p ** a * np.log(p ** a / q ** a) - p ** a + q ** a).sum(-1) / a ** 2
  if a == 0:
    return (q ** b * np.log(q ** b / p ** b) - q ** b + p ** b).sum(-1) / b ** 2
  s = a + b
  return -(p ** a * q ** b - a / s * p ** s - b / s * q ** s).sum(-1) / (a * b)


def np_wasserstein(p, q, top_k=None):
  ps, qs = -np.sort(-p, -1), -np.sort(-q, -1)
  if top_k is not None:
    ps, qs = ps[..., :top_k], qs[..., :top_k]
  return np.abs(ps - qs).sum(-1)


def np_akl_weights(p, q, mu):
  """(w_head, w_tail) of AKL, per token."""
  w = np.zeros(p.shape[:-1] + (2,))
  for idx in np.ndindex(*p.shape[:-1]):
    pi, qi = p[idx], q[idx]
    order = np.argsort(pi)
    tail = np.zeros_like(pi, dtype=bool)
    tail[order] = np.cumsum(pi[order]) < mu
    gap = np.abs(pi - qi)
    w[idx] = gap[~tail].sum(), gap[tail].sum()
  return w[..., 0] / w.sum(-1), w[..., 1] / w.sum(-1)


def np_akl(p, q, mu):
  w_head, w_tail = np_akl_weights(p, q, mu)
  return w_head * np_kl(p, q) + w_tail * np_kl(q, p)


def np_focal(p, q, gamma):
  top = np.argmax(p, -1)[..., None]
  return (1 - np.take_along_axis(q, top, -1)[..., 0]) ** gamma * np_kl(p, q)


REFERENCES = {
    # name: (kwargs, reference(p, q))
    "forward_kl": ({}, lambda p, q: np_kl(p, q)),
    "reverse_kl": ({}, lambda p, q: np_kl(q, p)),
    "generalized_jsd": ({"beta": 0.3}, lambda p, q: 0.3 * np_kl(p, 0.3 * p + 0.7 * q)
                        + 0.7 * np_kl(q, 0.3 * p + 0.7 * q)),
    "symmetric_kl": ({"ratio": 0.25}, lambda p, q: 0.75 * np_kl(p, q) + 0.25 * np_kl(q, p)),
    "skew_kl": ({"alpha": 0.1}, lambda p, q: np_kl(p, 0.1 * p + 0.9 * q)),
    "skew_reverse_kl": ({"alpha": 0.1}, lambda p, q: np_kl(q, 0.1 * q + 0.9 * p)),
    "alpha_divergence": ({"alpha": 1.5}, lambda p, q: np_alpha(p, q, 1.5)),
    "alpha_beta_divergence": ({"alpha": 0.2, "beta": 0.7},
                              lambda p, q: np_alpha_beta(p, q, 0.2, 0.7)),
    "total_variation": ({}, lambda p, q: 0.5 * np.abs(p - q).sum(-1)),
    "wasserstein": ({}, np_wasserstein),
    "adaptive_kl": ({"mu": 0.5}, lambda p, q: np_akl(p, q, 0.5)),
    "focal_kl": ({"gamma": 2.0}, lambda p, q: np_focal(p, q, 2.0)),
}
# Parameter settings beyond the defaults, each checked against the reference too.
EXTRA_CASES = [
    ("generalized_jsd", {"beta": 0.5}, lambda p, q: 0.5 * np_kl(p, (p + q) / 2)
     + 0.5 * np_kl(q, (p + q) / 2)),
    ("alpha_divergence", {"alpha": 0.5}, lambda p, q: np_alpha(p, q, 0.5)),
    ("alpha_divergence", {"alpha": -0.5}, lambda p, q: np_alpha(p, q, -0.5)),
    ("alpha_divergence", {"alpha": 1.0}, lambda p, q: np_kl(p, q)),
    ("alpha_divergence", {"alpha": 0.0}, lambda p, q: np_kl(q, p)),
    ("alpha_beta_divergence", {"alpha": 1.0, "beta": 0.0}, lambda p, q: np_kl(p, q)),
    ("alpha_beta_divergence", {"alpha": 0.0, "beta": 1.0}, lambda p, q: np_kl(q, p)),
    ("alpha_beta_divergence", {"alpha": 0.5, "beta": -0.5},
     lambda p, q: np_alpha_beta(p, q, 0.5, -0.5)),
    ("alpha_beta_divergence", {"alpha": 0.0, "beta": 0.0},
     lambda p, q: np_alpha_beta(p, q, 0.0, 0.0)),
    ("alpha_beta_divergence", {"alpha": 0.0, "beta": 0.6},
     lambda p, q: np_alpha_beta(p, q, 0.0, 0.6)),
    ("wasserstein", {"top_k": 5}, lambda p, q: np_wasserstein(p, q, 5)),
    ("adaptive_kl", {"mu": 0.9}, lambda p, q: np_akl(p, q, 0.9)),
    ("focal_kl", {"gamma": 0.5}, lambda p, q: np_focal(p, q, 0.5)),
]
ALL_CASES = [(n, kw, ref) for n, (kw, ref) in REFERENCES.items()] + EXTRA_CASES


def test_registry_is_complete():
  assert set(D.DIVERGENCES) == set(REFERENCES)


def _logits(seed, shape=(3, 4, 17), scale=2.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * scale).astype(np.float32)


class ReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(case=tuple(range(len(ALL_CASES))), temperature=(1.0, 2.5))
  def test_matches_float64_reference(self, case, temperature):
    name, kwargs, ref = ALL_CASES[case]
    s, t = _logits(1), _logits(2)
    fn = self.variant(functools.partial(D.get_divergence(name), temperature=temperature,
                                        **kwargs))
    got = fn(s, t)
    expected = ref(np_softmax(t, temperature), np_softmax(s, temperature))
    self.assertEqual(got.dtype, jnp.float32)
    self.assertEqual(got.shape, s.shape[:-1])
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6, err_msg=f"{name} {kwargs}")


def test_traced_temperature():
  s, t = _logits(3), _logits(4)
  got = jax.jit(lambda temp: D.forward_kl(s, t, temperature=temp))(jnp.float32(3.0))
  np.testing.assert_allclose(got, np_kl(np_softmax(t, 3.0), np_softmax(s, 3.0)), rtol=2e-5)


# ---------------------------------------------------------------------------
# Properties (hypothesis). One jitted function of a fixed shape evaluates every
# divergence, so examples cost no recompilation.
# ---------------------------------------------------------------------------

VOCAB = 8
_logit_arrays = hnp.arrays(np.float32, (4, VOCAB),
                           elements=st.floats(-20, 20, width=32, allow_nan=False))


@jax.jit
def _all_divergences(s, t):
  out = {n: D.get_divergence(n)(s, t, **kw) for n, (kw, _) in REFERENCES.items()}
  out["jsd_half"] = D.generalized_jsd(s, t, beta=0.5)
  out["jsd_half_swapped"] = D.generalized_jsd(t, s, beta=0.5)
  return out


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(s=_logit_arrays, t=_logit_arrays)
def test_properties(s, t):
  out = jax.tree.map(np.asarray, _all_divergences(s, t))
  for name, value in out.items():
    assert np.all(np.isfinite(value)) or name == "alpha_divergence", name
    assert np.all(value >= -1e-5), (name, value)
  np.testing.assert_allclose(out["jsd_half"], out["jsd_half_swapped"], rtol=1e-4, atol=1e-6)
  assert np.all(out["jsd_half"] <= np.log(2) + 1e-5)
  assert np.all(out["total_variation"] <= 1 + 1e-6)
  assert np.all(out["wasserstein"] <= 2 + 1e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(s=_logit_arrays)
def test_zero_at_equality(s):
  out = jax.tree.map(np.asarray, _all_divergences(s, s))
  for name, value in out.items():
    np.testing.assert_allclose(value, 0.0, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("near,limit", [
    (dict(alpha=1 + 1e-3), dict(alpha=1.0)),
    (dict(alpha=1 - 1e-3), dict(alpha=1.0)),
    (dict(alpha=1e-3), dict(alpha=0.0)),
    (dict(alpha=-1e-3), dict(alpha=0.0)),
])
def test_alpha_divergence_continuous_at_limits(near, limit):
  s, t = _logits(5, scale=1.0), _logits(6, scale=1.0)
  a = D.alpha_divergence(s, t, **near)
  b = D.alpha_divergence(s, t, **limit)
  np.testing.assert_allclose(a, b, rtol=5e-3)


@pytest.mark.parametrize("near,limit", [
    (dict(alpha=1.0, beta=1e-3), dict(alpha=1.0, beta=0.0)),
    (dict(alpha=1e-3, beta=1.0), dict(alpha=0.0, beta=1.0)),
    (dict(alpha=0.5, beta=-0.5 + 1e-3), dict(alpha=0.5, beta=-0.5)),
    (dict(alpha=1e-4, beta=1e-4), dict(alpha=0.0, beta=0.0)),
])
def test_alpha_beta_divergence_continuous_at_limits(near, limit):
  s, t = _logits(7, scale=1.0), _logits(8, scale=1.0)
  a = D.alpha_beta_divergence(s, t, **near)
  b = D.alpha_beta_divergence(s, t, **limit)
  np.testing.assert_allclose(a, b, rtol=2e-2)
  assert np.all(np.isfinite(a))


@pytest.mark.parametrize("alpha,beta", [(1e-3, 1e-3), (1.0, 1e-4), (1e-4, 0.5), (0.3, 0.2)])
def test_alpha_beta_divergence_accurate_near_limits(alpha, beta):
  """float32 result vs the float64 formula at the same (alpha, beta)."""
  s, t = _logits(7, scale=1.0), _logits(8, scale=1.0)
  got = D.alpha_beta_divergence(s, t, alpha=alpha, beta=beta)
  expected = np_alpha_beta(np_softmax(t), np_softmax(s), alpha, beta)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


# Divergences whose autodiff gradient is the true derivative (AKL and focal KL
# deliberately stop the gradient through their weights; tested separately).
SMOOTH = [n for n in REFERENCES if n not in ("adaptive_kl", "focal_kl")]


@pytest.mark.parametrize("name", SMOOTH)
def test_check_grads(name):
  kwargs = REFERENCES[name][0]
  with jax.enable_x64(True):
    s = jnp.asarray(_logits(9, (2, 6)), jnp.float64)
    t = jnp.asarray(_logits(10, (2, 6)), jnp.float64)
    fn = lambda s: D.get_divergence(name)(s, t, temperature=1.5, **kwargs).sum()
    jtu.check_grads(fn, (s,), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,kl", [("focal_kl", D.forward_kl), ("adaptive_kl", None)])
def test_stop_gradient_weights(name, kl):
  s, t = _logits(11), _logits(12)
  fn = D.get_divergence(name)
  grad = jax.grad(lambda s: fn(s, t).sum())(s)
  p, q = np_softmax(t), np_softmax(s)
  if name == "focal_kl":
    factor = (1 - np.take_along_axis(q, np.argmax(p, -1)[..., None], -1)) ** 2.0
    expected = factor * jax.grad(lambda s: kl(s, t).sum())(s)
  else:  # w_head, w_tail are constants: the gradient mixes the two KLs' gradients.
    w_head, w_tail = np_akl_weights(p, q, 0.5)
    fkl = jax.grad(lambda s: D.forward_kl(s, t).sum())(s)
    rkl = jax.grad(lambda s: D.reverse_kl(s, t).sum())(s)
    expected = w_head[..., None] * fkl + w_tail[..., None] * rkl
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------
# Numerics matrix.
# ---------------------------------------------------------------------------

NAMES = sorted(REFERENCES)


def _value_and_grads(name, s, t, **kwargs):
  fn = D.get_divergence(name)
  kw = {**REFERENCES[name][0], **kwargs}
  value = fn(s, t, **kw)
  gs, gt = jax.grad(lambda s, t: fn(s, t, **kw).sum(), argnums=(0, 1))(s, t)
  return value, gs, gt


@pytest.mark.parametrize("name", NAMES)
def test_where_masks_nan_and_all_neg_inf_tokens(name):
  s, t = _logits(13, (2, 3, 9)), _logits(14, (2, 3, 9))
  where = np.array([[True, False, True], [False, True, False]])
  s[0, 1] = np.nan
  t[1, 0] = -np.inf
  s[1, 2] = -np.inf
  t[1, 2] = np.nan
  value, gs, gt = _value_and_grads(name, s, t, where=where)
  assert np.all(np.asarray(value)[~where] == 0.0)
  assert np.all(np.asarray(gs)[~where] == 0.0)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
  unmasked = D.get_divergence(name)(s[where], t[where], **REFERENCES[name][0])
  np.testing.assert_allclose(np.asarray(value)[where], unmasked, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch(name):
  s, t = _logits(15), _logits(16)
  where = np.zeros(s.shape[:-1], bool)
  value, gs, _ = _value_and_grads(name, s, t, where=where)
  assert np.all(np.asarray(value) == 0.0) and np.all(np.asarray(gs) == 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_padded_vocab_is_invisible(name):
  """-inf on both sides (a padded vocabulary) changes neither value nor gradient."""
  s, t = _logits(17, (3, 11)), _logits(18, (3, 11))
  value, gs, gt = _value_and_grads(name, s, t)
  value_p, gs_p, gt_p = _value_and_grads(name, D.pad_vocab(s, 16), D.pad_vocab(t, 16))
  np.testing.assert_allclose(value_p, value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gs_p[:, :11], gs, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(gs_p)[:, 11:] == 0.0)
  assert np.all(np.isfinite(gt_p))


def test_teacher_impossible_token_keeps_forward_kl_finite():
  s, t = _logits(19, (3, 11)), _logits(20, (3, 11))
  t[:, :4] = -np.inf  # teacher rules tokens out; the student does not.
  value, gs, gt = _value_and_grads("forward_kl", s, t)
  np.testing.assert_allclose(value, np_kl(np_softmax(t), np_softmax(s)), rtol=1e-5)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
  # Reverse KL puts student mass where the teacher has none: +inf by definition.
  assert np.all(np.isinf(D.reverse_kl(s, t)))


# alpha_divergence with alpha > 1 overflows by definition at extreme logits.
EXTREME_OK = [n for n in NAMES if n != "alpha_divergence"]


@pytest.mark.parametrize("name", EXTREME_OK)
def test_extreme_logits(name):
  rng = np.random.default_rng(21)
  s = rng.choice([-1e4, 0.0, 1e4], size=(4, 12)).astype(np.float32)
  t = rng.choice([-1e4, 0.0, 1e4], size=(4, 12)).astype(np.float32)
  t[0] = s[0]
  value, gs, gt = _value_and_grads(name, s, t)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
  assert abs(float(value[0])) < 1e-5
  with np.errstate(all="ignore"):  # float64 probabilities underflow at e^-20000.
    expected = REFERENCES[name][1](np_softmax(t), np_softmax(s))
  finite = np.isfinite(expected)
  np.testing.assert_allclose(np.asarray(value)[finite], expected[finite], rtol=1e-4, atol=1e-4)


def test_extreme_logits_kl_in_log_space():
  """Probabilities underflow but log-probabilities do not: KL stays exact."""
  s = np.array([[1e4, 0.0, -1e4]], np.float32)
  t = np.array([[0.0, 1e4, -1e4]], np.float32)
  np.testing.assert_allclose(D.forward_kl(s, t), [1e4], rtol=1e-6)
  np.testing.assert_allclose(D.reverse_kl(s, t), [1e4], rtol=1e-6)


def test_alpha_divergence_extreme_overflow_is_documented_inf():
  s = np.array([[1e4, -1e4]], np.float32)
  t = np.array([[-1e4, 1e4]], np.float32)
  assert np.isinf(D.alpha_divergence(s, t, alpha=1.5))[0]
  assert np.isfinite(D.alpha_divergence(s, t, alpha=0.5))[0]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_inputs(name, dtype):
  s, t = jnp.asarray(_logits(22), dtype), jnp.asarray(_logits(23), dtype)
  value, gs, _ = _value_and_grads(name, s, t)
  assert value.dtype == jnp.float32
  assert gs.dtype == dtype and np.all(np.isfinite(np.asarray(gs, np.float32)))
  p, q = np_softmax(np.asarray(t, np.float32)), np_softmax(np.asarray(s, np.float32))
  np.testing.assert_allclose(value, REFERENCES[name][1](p, q), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Non-finite inputs on trained tokens: NaN out, never a silent 0.
# ---------------------------------------------------------------------------


def _poisoned(dtype):
  """``(s, t, where, ok)`` of shape ``[7, 9]``, one case per token.

  Tokens 0-3 are trained and hold a NaN / +inf student or teacher logit; token 4
  has +-1e4 logits and -inf (impossible) entries on both sides, token 5 is plain,
  token 6 is masked and all NaN / -inf. ``ok`` marks the tokens with a finite value.
  """
  s, t = _logits(30, (7, 9)), _logits(31, (7, 9))
  s[0, 3] = np.nan
  t[1, 2] = np.nan
  s[2, 1] = np.inf
  t[3, 4] = np.inf
  s[4] = t[4] = np.random.default_rng(32).choice([-1e4, 0.0, 1e4], size=9)
  s[4, 0] = 5e3  # the two sides differ, the -inf entries are shared
  s[4, 7:] = t[4, 7:] = -np.inf
  s[6], t[6] = np.nan, -np.inf
  where = np.array([True] * 6 + [False])
  ok = np.array([False] * 4 + [True, True, True])
  return jnp.asarray(s, dtype), jnp.asarray(t, dtype), where, ok


class NonFiniteTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=tuple(NAMES), dtype=(jnp.float32, jnp.bfloat16, jnp.float16))
  def test_non_finite_trained_token_gives_nan(self, name, dtype):
    s, t, where, ok = _poisoned(dtype)
    kw = REFERENCES[name][0]

    @self.variant
    def run(s, t):
      fn = lambda s, t: D.get_divergence(name)(s, t, where=where, **kw)  # noqa: E731
      return fn(s, t), jax.grad(lambda s: jnp.sum(fn(s, t)[ok]))(s)

    value, gs = run(s, t)
    value, gs = np.asarray(value), np.asarray(gs, np.float32)
    assert np.all(np.isnan(value[~ok])), (name, value)
    assert value[6] == 0.0 and np.all(gs[6] == 0.0), name
    if name != "alpha_divergence":  # it overflows at +-1e4 by definition (see above)
      assert np.all(np.isfinite(value[ok])) and np.all(np.isfinite(gs[ok])), (name, value)
    alone = D.get_divergence(name)(s[5:6], t[5:6], **kw)  # poisoned rows leave others alone
    np.testing.assert_allclose(value[5], alone[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "generalized_jsd", "skew_kl", "focal_kl"])
def test_nan_teacher_in_every_position(name):
  """A NaN anywhere in a teacher row, even where the student has no mass, gives NaN."""
  s, t = _logits(33, (9, 9)), _logits(34, (9, 9))
  s[:, 0] = -np.inf
  t[np.arange(9), np.arange(9)] = np.nan
  assert np.all(np.isnan(D.get_divergence(name)(s, t, **REFERENCES[name][0])))


@pytest.mark.parametrize("name", SMOOTH)
def test_check_grads_with_masked_nan_tokens(name):
  """float64 gradients agree with finite differences when masked tokens hold NaN."""
  kwargs = REFERENCES[name][0]
  with jax.enable_x64(True):
    s = jnp.asarray(_logits(35, (3, 6)), jnp.float64)
    t = jnp.asarray(_logits(36, (3, 6)), jnp.float64).at[1].set(jnp.nan)
    where = np.array([True, False, True])
    fn = lambda s: D.get_divergence(name)(s, t, temperature=0.7, where=where,  # noqa: E731
                                          **kwargs).sum()
    jtu.check_grads(fn, (s.at[1].set(3.0),), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


def test_vocab_mismatch_names_both_sizes():
  with pytest.raises(ValueError, match=r"student vocab size 7 != teacher vocab size 9"):
    D.forward_kl(np.zeros((2, 7), np.float32), np.zeros((2, 9), np.float32))


@pytest.mark.parametrize("s_shape,t_shape,err,match", [
    ((2, 3, 5), (3, 2, 5), ValueError, r"shape \(2, 3, 5\).*\(3, 2, 5\)"),
    ((), (), ValueError, "rank >= 1"),
])
def test_shape_errors(s_shape, t_shape, err, match):
  with pytest.raises(err, match=match):
    D.total_variation(np.zeros(s_shape, np.float32), np.zeros(t_shape, np.float32))


def test_integer_logits_rejected():
  with pytest.raises(TypeError, match="student_logits.*int32"):
    D.forward_kl(np.zeros((2, 5), np.int32), np.zeros((2, 5), np.float32))


def test_where_shape_checked():
  with pytest.raises(ValueError, match=r"where must have the token shape \(2,\)"):
    D.forward_kl(np.zeros((2, 5), np.float32), np.zeros((2, 5), np.float32),
                 where=np.ones((2, 5), bool))


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1, 1.5])
def test_jsd_endpoints_point_to_kl(beta):
  with pytest.raises(ValueError, match=r"beta -> 0 is forward KL.*forward_kl; beta -> 1 is reverse KL.*reverse_kl"):
    D.generalized_jsd(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32), beta=beta)


@pytest.mark.parametrize("name,kwargs,match", [
    ("forward_kl", {"temperature": 0.0}, "temperature"),
    ("forward_kl", {"temperature": -1.0}, "temperature"),
    ("symmetric_kl", {"ratio": 1.5}, "ratio"),
    ("skew_kl", {"alpha": -0.1}, "alpha"),
    ("skew_reverse_kl", {"alpha": 2.0}, "alpha"),
    ("adaptive_kl", {"mu": 1.1}, "mu"),
    ("focal_kl", {"gamma": -1.0}, "gamma"),
    ("alpha_divergence", {"alpha": float("nan")}, "alpha"),
    ("wasserstein", {"top_k": 0}, "top_k"),
    ("wasserstein", {"top_k": 99}, "top_k"),
])
def test_out_of_range_parameters(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    D.get_divergence(name)(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32),
                           **kwargs)


def test_traced_static_parameter_rejected():
  with pytest.raises(TypeError, match="beta must be a Python number"):
    jax.jit(lambda b: D.generalized_jsd(jnp.zeros((1, 3)), jnp.zeros((1, 3)), beta=b))(0.5)


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="unknown divergence 'kl'.*forward_kl.*reverse_kl"):
    D.get_divergence("kl")


def test_pad_vocab():
  x = np.ones((2, 3), np.float32)
  padded = D.pad_vocab(x, 5)
  assert padded.shape == (2, 5) and np.all(np.isneginf(padded[:, 3:]))
  with pytest.raises(ValueError, match="size must be an int >= the vocab size 3"):
    D.pad_vocab(x, 2)
