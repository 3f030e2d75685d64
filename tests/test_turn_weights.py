"""Turn-aware factors (sad_jax.objective._turns): values, jit, gradients, composition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import SpanType
from sad_jax.objective import _turns as turns
from sad_jax.objective import _weighting as weighting

R, A, O, PAD = (int(SpanType.REASONING), int(SpanType.ACTION), int(SpanType.OBSERVATION),
                int(SpanType.PAD))

# Two episodes, one per row: prompt (turn 0), turns 1.. with their observations, padding.
TURNS = np.array([[0, 0, 1, 1, 1, 2, 2, 3, 0, 0],
                  [0, 1, 1, 2, 2, 2, 2, 2, 2, 0]], np.int32)
SPANS = np.array([[1, 1, R, A, O, R, A, A, PAD, PAD],
                  [1, R, A, R, R, A, A, A, A, PAD]], np.int32)
WHERE = np.isin(SPANS, [R, A])
D = np.array([[0, 0, .1, .1, 9., .5, .7, .2, 0, 0],
              [0, 1., 1., 0, 0, 0, 0, 0, 0, 0]], np.float32)


def test_turn_depth_and_limit_turns():
  depths = [int(turns.turn_depth(n, start=1, every=2, max_depth=3)) for n in range(8)]
  assert depths == [1, 1, 2, 2, 3, 3, 3, 3]
  assert int(turns.turn_depth(100, start=2, every=10)) == 12
  kept = np.asarray(turns.limit_turns(SPANS, TURNS, 1))
  np.testing.assert_array_equal(kept[0], [1, 1, R, A, O, PAD, PAD, PAD, PAD, PAD])
  np.testing.assert_array_equal(kept[1], [1, R, A] + [PAD] * 7)
  per_row = np.asarray(turns.limit_turns(SPANS, TURNS, jnp.array([3, 1])))
  np.testing.assert_array_equal(per_row[0], SPANS[0])
  with pytest.raises(ValueError, match="every must be an int >= 1"):
    turns.turn_depth(0, every=0)
  with pytest.raises(ValueError, match="max_depth"):
    turns.turn_depth(0, start=3, max_depth=2)


def test_position_factors():
  f = np.asarray(turns.turn_position_factors(TURNS, decay=0.5))
  np.testing.assert_allclose(f[0, :8], [1, 1, 1, 1, 1, .5, .5, .25])
  np.testing.assert_allclose(f[1, :9], [1, 1, 1] + [.5] * 6)
  g = np.asarray(turns.turn_position_factors(TURNS, decay=2.0))
  np.testing.assert_allclose(g[0, 7], 4.0)
  with pytest.raises(ValueError, match="decay must be > 0"):
    turns.turn_position_factors(TURNS, decay=0.0)


def test_balanced_factors_equalise_turn_totals():
  f = np.asarray(turns.turn_balanced_factors(TURNS, WHERE, mix=1.0))
  for b in range(2):
    totals = [f[b][WHERE[b] & (TURNS[b] == k)].sum() for k in (1, 2, 3)
              if (WHERE[b] & (TURNS[b] == k)).any()]
    np.testing.assert_allclose(totals, [WHERE[b].sum() / len(totals)] * len(totals), rtol=1e-6)
    np.testing.assert_allclose(f[b][WHERE[b]].sum(), WHERE[b].sum(), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(turns.turn_balanced_factors(TURNS, WHERE, mix=0.0)),
                                np.ones_like(D))
  half = np.asarray(turns.turn_balanced_factors(TURNS, WHERE, mix=0.5))
  np.testing.assert_allclose(half[WHERE], 0.5 + 0.5 * f[WHERE], rtol=1e-6)
  with pytest.raises(ValueError, match=r"mix must lie in \[0, 1\]"):
    turns.turn_balanced_factors(TURNS, WHERE, mix=1.5)


def test_departure_turn_and_factors():
  # Row 0: turn means over trained tokens 0.1, 0.6, 0.2 (the 9.0 is an observation).
  star = np.asarray(turns.departure_turn(TURNS, D, WHERE, threshold=0.3))
  np.testing.assert_array_equal(star, [2, 1])
  none = np.asarray(turns.departure_turn(TURNS, D, WHERE, threshold=5.0))
  np.testing.assert_array_equal(none, [0, 0])
  f = np.asarray(turns.departure_factors(TURNS, D, WHERE, threshold=0.3, decay=0.5, boost=2.0))
  np.testing.assert_allclose(f[0, :8], [1, 1, 1, 1, 1, 2, 2, .5])
  np.testing.assert_allclose(f[1, :9], [1, 2, 2] + [.5] * 6)
  np.testing.assert_array_equal(
      np.asarray(turns.departure_factors(TURNS, D, WHERE, threshold=5.0, decay=.5)), 1.0)


def test_accumulated_discrepancy_factors():
  f = np.asarray(turns.accumulated_discrepancy_factors(TURNS, D, WHERE, scale=1.0))
  np.testing.assert_allclose(f[0, :8], [1, 1, 1, 1, 1, np.exp(-.1), np.exp(-.1), np.exp(-.7)],
                             rtol=1e-6)
  np.testing.assert_allclose(f[1, 3:9], np.exp(-1.0), rtol=1e-6)
  assert np.all((f > 0) & (f <= 1))


def test_jit_stop_gradient_and_composition_with_span_weights():
  fns = {
      "position": lambda t, d, w: turns.turn_position_factors(t, decay=.7),
      "balanced": lambda t, d, w: turns.turn_balanced_factors(t, w, mix=.5),
      "departure": lambda t, d, w: turns.departure_factors(t, d, w, threshold=.3, decay=.5),
      "accumulated": lambda t, d, w: turns.accumulated_discrepancy_factors(t, d, w, scale=2.),
  }
  lam = dict(prompt=0., reasoning=1., action=1., observation=0., other=0.)
  base = np.asarray(weighting.uniform(SPANS, lam))
  for name, fn in fns.items():
    eager = np.asarray(fn(TURNS, D, WHERE))
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(TURNS, D, WHERE)), eager, rtol=1e-6,
                               err_msg=name)
    grad = jax.grad(lambda d: jnp.sum(fn(TURNS, d, WHERE)))(jnp.asarray(D))
    np.testing.assert_array_equal(np.asarray(grad), 0.0, err_msg=name)
    assert np.all(eager > 0), name
    weights = base * eager
    np.testing.assert_array_equal(weights > 0, base > 0, err_msg=name)  # same trained set
    normed = np.asarray(turns.normalize_factors(eager, WHERE))
    np.testing.assert_allclose([normed[b][WHERE[b]].mean() for b in range(2)], 1.0, rtol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"turn_ids must be \[B, T\]"):
    turns.turn_position_factors(TURNS[0], decay=.5)
  with pytest.raises(ValueError, match="discrepancy shape"):
    turns.departure_turn(TURNS, D[:, :3], WHERE, threshold=.1)
  with pytest.raises(TypeError, match="turn_ids must be integers"):
    turns.turn_position_factors(TURNS.astype(np.float32), decay=.5)
