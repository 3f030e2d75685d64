"""Span-weighting strategies: per-row weights, formulas, no gradient, positivity."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import _config as config_lib
from sad_jax.objective import _state as state_lib
from sad_jax.objective import _weighting as W
from sad_jax.objective._spans import SpanType as S

P, R, A, O, X, PAD = S.PROMPT, S.REASONING, S.ACTION, S.OBSERVATION, S.OTHER, S.PAD
# Two rows with different layouts: row 0 is reasoning-heavy, row 1 action-heavy.
IDS = np.array([[P, R, R, R, A, O, PAD],
                [P, A, A, A, R, O, X]], np.int32)
LAM = dict(prompt=0.0, reasoning=1.0, action=0.5, observation=0.0, other=0.25)
LAM_VEC = np.array([0.0, 0.0, 1.0, 0.5, 0.0, 0.25])


def np_uniform(ids):
  return LAM_VEC[ids]


def test_span_weight_vector_orders_by_span_type_and_zeroes_pad():
  np.testing.assert_array_equal(W.span_weight_vector(LAM), LAM_VEC)
  np.testing.assert_array_equal(W.span_weight_vector([9, 1, 2, 3, 4, 5]), [0, 1, 2, 3, 4, 5])
  with pytest.raises(ValueError, match=r"keys.*must be exactly"):
    W.span_weight_vector({"reasoning": 1.0})
  with pytest.raises(ValueError, match=r">= 0"):
    W.span_weight_vector([0, 1, -2, 3, 4, 5])


def test_uniform_is_lambda_per_row():
  np.testing.assert_array_equal(W.uniform(IDS, LAM), np_uniform(IDS))


def test_heavy_strategies_differ_and_upweight_their_own_span():
  r = np.asarray(W.reasoning_heavy(IDS, LAM, factor=3.0))
  a = np.asarray(W.action_heavy(IDS, LAM, factor=3.0))
  base = np_uniform(IDS)
  np.testing.assert_allclose(r, base * np.where(IDS == R, 3.0, 1.0))
  np.testing.assert_allclose(a, base * np.where(IDS == A, 3.0, 1.0))
  assert not np.allclose(r, a)
  # Row 0's reasoning tokens up-weighted in reasoning_heavy, row 1's actions in action_heavy.
  assert r[0, 1] == 3.0 and a[0, 1] == 1.0
  assert a[1, 1] == 1.5 and r[1, 1] == 0.5
  with pytest.raises(ValueError, match="factor must be > 0"):
    W.action_heavy(IDS, LAM, factor=0.0)


def test_adaptive_factors_normalised_and_safe():
  lam = dict(prompt=0.0, reasoning=1.0, action=1.0, observation=0.0, other=0.0)
  losses = jnp.array([0.0, 0.0, 3.0, 1.0, 50.0, 0.0])
  f = np.asarray(W.adaptive_factors(losses, lam, power=1.0, eps=1e-9))
  np.testing.assert_allclose(f, [0, 0, 1.5, 0.5, 0, 0], rtol=1e-6)
  # All running losses zero (e.g. student == teacher): finite, uniform, no 0/0.
  f0 = np.asarray(W.adaptive_factors(jnp.zeros(6), lam))
  np.testing.assert_allclose(f0, [0, 0, 1, 1, 0, 0], rtol=1e-6)
  # A trained type not seen yet takes the mean of the seen ones instead of ~0.
  seen = jnp.array([False, False, True, False, False, False])
  fs = np.asarray(W.adaptive_factors(jnp.array([0, 0, 2.0, 0, 0, 0]), lam, seen))
  np.testing.assert_allclose(fs, [0, 0, 1, 1, 0, 0], rtol=1e-5)
  # power 0 is uniform.
  np.testing.assert_allclose(W.adaptive_factors(losses, lam, power=0.0), [0, 0, 1, 1, 0, 0])


def test_adaptive_weights_follow_each_rows_spans():
  losses = jnp.array([0.0, 0.0, 3.0, 1.0, 0.0, 1.0])
  w = np.asarray(W.adaptive(IDS, LAM, losses, power=1.0, eps=1e-9))
  f = np.array([0, 0, 3.0, 1.0, 0, 1.0]) * 3 / 5.0
  np.testing.assert_allclose(w, np_uniform(IDS) * f[IDS], rtol=1e-6)


@pytest.mark.parametrize("schedule,progress,ramp", [
    ("linear", 0.25, 0.25), ("cosine", 0.5, 0.5), ("cosine", 0.25, (1 - np.cos(np.pi / 4)) / 2),
    ("step", 0.99, 0.0), ("step", 1.0, 1.0)])
def test_curriculum_ramps(schedule, progress, ramp):
  w = np.asarray(W.curriculum(IDS, LAM, progress, schedule=schedule, first="action",
                              start_factor=0.2))
  f = np.where(IDS == R, 0.2 + 0.8 * ramp, 1.0)
  np.testing.assert_allclose(w, np_uniform(IDS) * f, rtol=1e-6)
  w2 = np.asarray(W.curriculum(IDS, LAM, progress, schedule=schedule, first="reasoning",
                               start_factor=0.2))
  np.testing.assert_allclose(w2, np_uniform(IDS) * np.where(IDS == A, 0.2 + 0.8 * ramp, 1.0),
                             rtol=1e-6)


def test_confidence_based_formula():
  h = np.array([[0.0, 0.0, np.log(8), np.log(8) / 2, 1.0, np.nan, np.nan],
                [0.0, 1.0, 2.0, 0.5, np.log(8), np.inf, 0.3]])
  w = np.asarray(W.confidence_based(IDS, LAM, h, vocab_size=8, floor=0.1))
  conf = np.clip(1 - h / np.log(8), 0, 1)
  expected = np.where(np_uniform(IDS) > 0, np_uniform(IDS) * (0.1 + 0.9 * conf), 0.0)
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  assert np.all(np.isfinite(w))  # NaN entropies on masked tokens do not leak


def test_difficulty_aware_formula():
  d = np.linspace(0, 1, 14).reshape(2, 7)
  w = np.asarray(W.difficulty_aware(IDS, LAM, d, scale=2.0))
  np.testing.assert_allclose(w, np_uniform(IDS) * (1 + 2 * d), rtol=1e-6)


def test_weights_carry_no_gradient():
  def total(signal):
    return (W.difficulty_aware(IDS, LAM, signal).sum()
            + W.confidence_based(IDS, LAM, signal, vocab_size=4).sum())
  g = jax.grad(total)(jnp.full(IDS.shape, 0.3))
  np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("name", config_lib.WEIGHTING_STRATEGIES)
def test_every_strategy_trains_exactly_the_lambda_positive_tokens(name):
  cfg = config_lib.default_config()
  cfg.span_weights = LAM
  cfg.weighting = name
  state = state_lib.init_state(cfg).replace(span_losses=jnp.array([0, 0, 1e6, 0, 0, 0.0]),
                                            span_seen=jnp.ones(6, bool))
  h = jnp.full(IDS.shape, np.log(16.0))  # uniform teacher: the lowest confidence factor
  w = np.asarray(W.token_weights(IDS, cfg, state, teacher_entropy=h,
                                 disagreement=jnp.zeros(IDS.shape), vocab_size=16))
  np.testing.assert_array_equal(w > 0, np_uniform(IDS) > 0)
  assert np.all(np.isfinite(w))


def test_token_weights_errors():
  cfg = config_lib.default_config()
  state = state_lib.init_state(cfg)
  cfg.weighting = "confidence_based"
  with pytest.raises(ValueError, match="needs teacher_entropy"):
    W.token_weights(IDS, cfg, state)
  cfg.weighting = "difficulty_aware"
  with pytest.raises(ValueError, match="needs disagreement"):
    W.token_weights(IDS, cfg, state)
  with pytest.raises(ValueError, match=r"span_ids must be \[B, T\]"):
    W.uniform(IDS[0], LAM)
  with pytest.raises(ValueError, match=r"disagreement shape"):
    W.difficulty_aware(IDS, LAM, jnp.zeros(3))
