"""Fused custom-VJP divergences vs float64 autodiff of the plain formulas.

Every test evaluates all four fast divergences in one jitted function, so a test
costs one compilation rather than one per divergence and primitive; tests compile
without LLVM optimization (``_jit``), which halves the compile time and leaves
the HLO (the numerics) alone.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.losses import _divergences as D

FAST = ["forward_kl", "reverse_kl", "generalized_jsd", "total_variation"]
KWARGS = {"generalized_jsd": {"beta": 0.3}}
SHAPE = (6, 7, 40)  # 42 rows of 40 logits
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _plain(name, s, t, temperature):
  """The textbook composition, differentiated by JAX (float64 under x64)."""
  log_q = jax.nn.log_softmax(s / temperature)
  log_p = jax.nn.log_softmax(t / temperature)
  q, p = jnp.exp(log_q), jnp.exp(log_p)
  if name == "forward_kl":
    return jnp.sum(p * (log_p - log_q), -1)
  if name == "reverse_kl":
    return jnp.sum(q * (log_q - log_p), -1)
  if name == "generalized_jsd":
    log_m = jnp.log(0.3 * p + 0.7 * q)
    return 0.3 * jnp.sum(p * (log_p - log_m), -1) + 0.7 * jnp.sum(q * (log_q - log_m), -1)
  return 0.5 * jnp.sum(jnp.abs(p - q), -1)


def _fast(name):
  return functools.partial(D.get_divergence(name), **KWARGS.get(name, {}))


def _inputs(shape=SHAPE, seed=0):
  rng = np.random.default_rng(seed)
  return tuple((rng.normal(size=shape) * 2).astype(np.float32) for _ in range(2))


@pytest.fixture(params=[False, True], ids=["one_block", "row_blocks"])
def blocked(request, monkeypatch):
  if request.param:  # 42 rows of 40 (as row groups [a, 42 / a]): blocks of 3 rows.
    monkeypatch.setattr(D, "BLOCK_ELEMENTS", 128)
  return request.param


def _value_and_grads(divergence, weights):
  """``{name: (value, (d/ds, d/dt, d/dT))}`` of ``sum(weights * D(s, t, T))``, jitted."""

  @_jit
  def run(s, t, temperature):
    return {name: jax.value_and_grad(
        lambda s, t, temp: jnp.sum(weights * divergence(name, s, t, temp)),
        argnums=(0, 1, 2))(s, t, temperature) for name in FAST}

  return run


def test_value_and_all_gradients_match_autodiff(blocked):
  s, t = _inputs()
  weights = np.random.default_rng(1).uniform(size=s.shape[:-1])
  got = _value_and_grads(lambda n, s, t, temp: _fast(n)(s, t, temperature=temp),
                         weights)(s, t, jnp.float32(1.7))
  with jax.enable_x64(True):
    want = _value_and_grads(_plain, weights)(
        jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64), jnp.float64(1.7))
    want = jax.device_get(want)
  for name in FAST:
    (value, grads), (ref_value, ref_grads) = got[name], want[name]
    np.testing.assert_allclose(value, ref_value, rtol=2e-5, err_msg=name)
    for g, r, what in zip(grads, ref_grads, ("student", "teacher", "temperature")):
      np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-6, err_msg=f"{name} {what}")


def test_masked_nan_rows_blocked(blocked):
  s, t = _inputs(seed=2)
  where = np.random.default_rng(3).uniform(size=SHAPE[:-1]) > 0.4
  s[~where] = np.nan
  t[~where] = -np.inf

  @_jit
  def run(s, t):
    clean_s, clean_t = (jnp.where(where[..., None], x, 0.0) for x in (s, t))
    out = {}
    for name in FAST:
      fn = _fast(name)
      grads = jax.grad(lambda s, t: fn(s, t, where=where).sum(), argnums=(0, 1))(s, t)
      out[name] = fn(s, t, where=where), grads, fn(clean_s, clean_t)
    return out

  for name, (values, (gs, gt), clean) in run(s, t).items():
    assert np.all(np.asarray(gs)[~where] == 0) and np.all(np.asarray(gt)[~where] == 0), name
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt)), name
    assert np.all(np.asarray(values)[~where] == 0), name
    np.testing.assert_allclose(values[where], clean[where], rtol=1e-6, err_msg=name)


def test_row_block_balances_any_row_count(monkeypatch):
  monkeypatch.setattr(D, "BLOCK_ELEMENTS", 1 << 18)
  assert D._row_block(42, 40) == 42  # one block
  assert D._row_block(2048, 32000) == 8
  assert D._row_block(1024, 151936) == 1
  assert D._row_block(2047, 32000) == 8  # prime: 256 blocks of 8, the last shifted back
  assert D._row_block(4099, 64) == 2050  # prime: two blocks, not 4099 of one row


def test_row_groups_follow_the_leading_axis():
  devices = jax.device_count()
  assert D._row_groups((32, 64, 256)) == np.gcd(32, devices)
  assert D._row_groups((6, 7, 40)) == np.gcd(6, devices)
  assert D._row_groups((5, 40)) == np.gcd(5, devices)
  assert D._row_groups((40,)) == 1


def test_prime_row_count_blocked_matches_autodiff(monkeypatch):
  """43 rows in blocks of 3: the last block overlaps its predecessor by 2 rows."""
  monkeypatch.setattr(D, "BLOCK_ELEMENTS", 128)
  s, t = _inputs((43, 40), seed=4)
  weights = np.random.default_rng(5).uniform(size=43)
  got = _value_and_grads(lambda n, s, t, temp: _fast(n)(s, t, temperature=temp),
                         weights)(s, t, jnp.float32(0.8))
  with jax.enable_x64(True):
    want = jax.device_get(_value_and_grads(_plain, weights)(
        jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64), jnp.float64(0.8)))
  for name in FAST:
    np.testing.assert_allclose(got[name][0], want[name][0], rtol=2e-5, err_msg=name)
    for g, r in zip(got[name][1], want[name][1]):
      np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-6, err_msg=name)


def test_vmap_and_bf16():
  s, t = _inputs()
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)

  @_jit
  def run(s, t, sb, tb):
    return {name: (jax.vmap(lambda s, t: _fast(name)(s, t, temperature=2.0))(s, t),
                   _fast(name)(s, t, temperature=2.0),
                   jax.grad(lambda s: _fast(name)(s, tb).sum())(sb)) for name in FAST}

  for name, (batched, plain, gs) in run(s, t, sb, tb).items():
    np.testing.assert_allclose(batched, plain, rtol=1e-6, err_msg=name)
    assert gs.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(gs, np.float32))), name


def _reference_statistics(s, t):
  """The statistics at T = 1 in float64 numpy, from their definitions."""
  def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
  log_q, log_p = log_softmax(s), log_softmax(t)
  q, p = np.exp(log_q), np.exp(log_p)
  with np.errstate(invalid="ignore", divide="ignore"):
    xlogx = lambda a, log_a: np.where(a > 0, a * log_a, 0.0)  # noqa: E731
    kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
  return dict(teacher_entropy=-xlogx(p, log_p).sum(-1), student_entropy=-xlogx(q, log_q).sum(-1),
              kl_t1=kl, agreement=(np.argmax(s, -1) == np.argmax(t, -1)).astype(np.float64),
              total_variation=0.5 * np.abs(p - q).sum(-1))


def _statistics_inputs():
  """Rows with -inf vocab entries, +-1e4 logits, an argmax tie, a NaN and a +inf row."""
  s, t = _inputs(seed=6)
  s[0, :, :3] = -np.inf  # impossible tokens (student side: kl_t1 stays finite only if p = 0)
  t[0, :, :3] = -np.inf
  s[1, 0] *= 5e3
  t[1, 0] *= -5e3
  t[1, 1, 7] = t[1, 1, 9] = t[1, 1].max() + 1  # a tie: argmax is the first index
  s[1, 1, 9] = s[1, 1].max() + 1
  s[2, 2, 4] = np.nan
  t[2, 3, 5] = np.inf
  where = np.random.default_rng(7).uniform(size=SHAPE[:-1]) > 0.3
  where[2, 2] = where[2, 3] = True
  return s, t, where


def test_with_statistics_matches_float64_definitions(blocked):
  """Kernel statistics (T = 1 and T != 1, traced) equal the definitions; values and
  gradients equal the divergence's; finite flags the NaN / +inf rows."""
  s, t, where = _statistics_inputs()
  stats_where = np.random.default_rng(8).uniform(size=SHAPE[:-1]) > 0.2

  @_jit
  def run(s, t, temperature):
    out = {}
    for name in FAST:
      kw = KWARGS.get(name, {})
      def loss(s, fn):
        value, aux = fn(s)
        return jnp.sum(jnp.where(where, value, 0.0) ** 2), (value, aux)
      fused = jax.grad(loss, has_aux=True)(s, lambda s: D.with_statistics(
          name, s, t, temperature=temperature, where=where, statistics=stats_where, **kw))
      plain = jax.grad(loss, has_aux=True)(s, lambda s: (
          _fast(name)(s, t, temperature=temperature, where=where), {}))
      out[name] = fused, plain
    return out

  ref = _reference_statistics(s, t)
  finite_rows = ~(np.isnan(s).any(-1) | np.isposinf(s).any(-1)
                  | np.isnan(t).any(-1) | np.isposinf(t).any(-1))
  for temperature in (1.0, 1.7):
    for name, ((g, (value, aux)), (g_ref, (value_ref, _))) in run(
        s, t, jnp.float32(temperature)).items():
      np.testing.assert_allclose(value, value_ref, rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7, err_msg=name)
      np.testing.assert_array_equal(aux["finite"], finite_rows, err_msg=name)
      assert set(aux) == {"finite", *D.STATISTICS}
      ok = stats_where & finite_rows
      for k in D.STATISTICS:
        got = np.asarray(aux[k])
        assert np.all(got[~stats_where] == 0), (name, k)
        np.testing.assert_allclose(got[ok], ref[k][ok], rtol=2e-6, atol=2e-6,
                                   err_msg=f"{name} {k} T={temperature}")
      # A NaN student row and a +inf teacher row: that side's entropy is NaN.
      assert np.isnan(aux["student_entropy"][2, 2]) and np.isnan(aux["teacher_entropy"][2, 3])


def test_agreement_with_and_without_ties():
  """Blocks of unique maxima take the one-sum path, blocks with a tie the first-index
  reduction: both give [first argmax s == first argmax t]; non-finite rows give 0."""
  rng = np.random.default_rng(9)
  for vocab in (1, 2, 7, 64):
    unique = rng.permutation(np.arange(32 * vocab)).reshape(32, vocab).astype(np.float32)
    tied = rng.integers(-2, 3, (32, vocab)).astype(np.float32)  # many ties
    for s, t in ((unique, unique[::-1].copy()), (unique, unique), (tied, tied[::-1].copy())):
      s, t = s.copy(), t.copy()
      s[0, 0], t[1, -1], s[2] = np.nan, np.inf, -np.inf
      where = rng.uniform(size=32) > 0.2
      expected = (np.argmax(s, -1) == np.argmax(t, -1)) & where
      expected[:3] = False
      got = _jit(D.statistics)(s, t, where)[0]["agreement"]
      np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=str(vocab))


def test_statistics_pass_matches_float64_definitions(blocked):
  s, t, where = _statistics_inputs()
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  stats, finite = _jit(D.statistics)(s, t, where)
  stats_bf16, _ = _jit(D.statistics)(sb, tb, where)
  ref = _reference_statistics(s, t)
  ref_bf16 = _reference_statistics(np.asarray(sb, np.float32), np.asarray(tb, np.float32))
  ok = where & np.asarray(finite)
  assert not finite[2, 2] and not finite[2, 3] and finite.sum() == finite.size - 2
  for k in D.STATISTICS:
    assert np.all(np.asarray(stats[k])[~where] == 0), k
    np.testing.assert_allclose(np.asarray(stats[k])[ok], ref[k][ok], rtol=2e-6, atol=2e-6,
                               err_msg=k)
    assert stats_bf16[k].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(stats_bf16[k])[ok], ref_bf16[k][ok], rtol=2e-6,
                               atol=2e-6, err_msg=f"bf16 {k}")
  # With x64 on, float64 inputs are computed in float64.
  with jax.enable_x64(True):
    stats64, _ = D.statistics(np.asarray(s, np.float64), np.asarray(t, np.float64), where)
    for k in D.STATISTICS:
      np.testing.assert_allclose(np.asarray(stats64[k])[ok], ref[k][ok], rtol=1e-12,
                                 atol=1e-12, err_msg=f"x64 {k}")


def test_with_statistics_rejects_unfused_names():
  s, t = _inputs()
  with pytest.raises(ValueError, match="symmetric_kl"):
    D.with_statistics("symmetric_kl", s, t)
  with pytest.raises(ValueError, match="beta"):
    D.with_statistics("generalized_jsd", s, t, beta=1.0)


def test_statistics_subsets_equal_the_full_pass_and_form_only_what_is_asked(blocked):
  """Any subset of the statistics, in the kernels (T = 1 and T != 1) and the standalone
  pass, equals those entries of the full set; only the named ones come back."""
  s, t, where = _statistics_inputs()
  subsets = [("kl_t1",), ("agreement",), ("teacher_entropy", "total_variation")]

  @_jit
  def run(s, t, temperature):
    full = {name: D.with_statistics(name, s, t, temperature=temperature, where=where,
                                    statistics=where, **KWARGS.get(name, {}))[1]
            for name in FAST}
    parts = {(name, names): D.with_statistics(
        name, s, t, temperature=temperature, where=where, statistics=where, names=names,
        **KWARGS.get(name, {}))[1] for name in FAST for names in subsets}
    alone = {names: D.statistics(s, t, where, names)[0] for names in subsets}
    return full, parts, alone, D.statistics(s, t, where)[0]

  for temperature in (1.0, 1.7):
    full, parts, alone, every = run(s, t, jnp.float32(temperature))
    for (name, names), aux in parts.items():
      assert set(aux) == {"finite", *names}, (name, names)
      for k in names:
        np.testing.assert_array_equal(aux[k], full[name][k], err_msg=f"{name} {k}")
    for names, stats in alone.items():
      assert set(stats) == set(names)
      for k in names:
        np.testing.assert_array_equal(stats[k], every[k], err_msg=k)
  assert D.statistic_names("total_variation, kl_t1") == ("kl_t1", "total_variation")
  with pytest.raises(ValueError, match="unknown statistics.*entropy"):
    D.statistics(s, t, where, ("entropy",))
