"""SADState: pytree, EMA, temperature rule, ring buffer, plateau, skip, step counting."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import _config as config_lib
from sad_jax.objective import _state as S
from sad_jax.objective._spans import NUM_SPAN_TYPES


def _metrics(div, agree, kl, counts):
  c = jnp.asarray(counts, jnp.float32)
  return {"divergence": (jnp.asarray(div, jnp.float32) * c, c),
          "agreement": (jnp.asarray(agree, jnp.float32) * c, c),
          "kl_t1": (jnp.asarray(kl, jnp.float32) * c, c)}


def test_init_state_is_a_pytree_of_arrays():
  cfg = config_lib.default_config()
  cfg.temperature = 2.0
  cfg.plateau.history_size = 7
  st = S.init_state(cfg)
  assert st.loss_history.shape == (7,) and st.span_losses.shape == (NUM_SPAN_TYPES,)
  assert float(st.temperature) == 2.0 and int(st.step) == 0 and not bool(st.plateaued)
  leaves = jax.tree.leaves(st)
  assert len(leaves) == 11 and all(isinstance(x, jax.Array) for x in leaves)
  again = jax.jit(lambda s: s)(st)
  assert jax.tree.structure(again) == jax.tree.structure(st)


def test_span_loss_ema_initialises_then_decays_and_keeps_absent_types():
  st = S.init_state(config_lib.default_config())
  st = S.update_span_losses(st, jnp.array([0, 0, 2.0, 4.0, 0, 0]),
                            jnp.array([0, 0, 1, 1, 0, 0], bool), 0.9)
  np.testing.assert_allclose(st.span_losses, [0, 0, 2, 4, 0, 0])
  st = S.update_span_losses(st, jnp.array([0, 0, 12.0, 99.0, 0, 0]),
                            jnp.array([0, 0, 1, 0, 0, 0], bool), 0.9)
  np.testing.assert_allclose(st.span_losses, [0, 0, 0.9 * 2 + 0.1 * 12, 4, 0, 0], rtol=1e-6)
  np.testing.assert_array_equal(st.span_seen, [0, 0, 1, 1, 0, 0])


def test_temperature_rule_bounded_and_driven_by_agreement():
  st = S.init_state(config_lib.default_config()).replace(temperature=jnp.float32(2.0))
  low = S.update_temperature(st, 0.0, 1.0, 4.0, 0.5)   # disagreement -> softer targets
  np.testing.assert_allclose(low.temperature, 2.0 + 0.5 * (4.0 - 2.0))
  high = S.update_temperature(st, 1.0, 1.0, 4.0, 0.5)  # agreement -> anneal to T_min
  np.testing.assert_allclose(high.temperature, 1.5)
  t = st
  for a in np.random.default_rng(0).uniform(-0.5, 1.5, 200):  # even out-of-range input
    t = S.update_temperature(t, a, 1.0, 4.0, 1.0)
    assert 1.0 <= float(t.temperature) <= 4.0
  # Fixed point for a fixed agreement does not depend on where T started.
  a, b = st.replace(temperature=jnp.float32(1.0)), st.replace(temperature=jnp.float32(4.0))
  for _ in range(200):
    a, b = (S.update_temperature(x, 0.25, 1.0, 4.0, 0.2) for x in (a, b))
  np.testing.assert_allclose(a.temperature, 1.0 + 3.0 * 0.75, rtol=1e-5)
  np.testing.assert_allclose(b.temperature, a.temperature, rtol=1e-5)


def test_ring_buffer_wraps_and_mean_uses_valid_entries():
  cfg = config_lib.default_config()
  cfg.plateau.history_size = 3
  st = S.init_state(cfg)
  assert float(S.history_mean(st)) == 0.0
  st = S.push_loss(st, 1.0)
  st = S.push_loss(st, 3.0)
  assert float(S.history_mean(st)) == 2.0
  for v in (5.0, 7.0):
    st = S.push_loss(st, v)
  np.testing.assert_allclose(st.loss_history, [7.0, 3.0, 5.0])
  assert int(st.history_count) == 4 and float(S.history_mean(st)) == 5.0


def test_plateau_triggers_after_patience_and_resets():
  cfg = config_lib.default_config()
  cfg.plateau.history_size = 2
  st = S.init_state(cfg)
  flags = []
  for v in [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0]:
    st = S.update_plateau(S.push_loss(st, v), patience=3, min_delta=0.01)
    flags.append((int(st.plateau_count), bool(st.plateaued)))
  # Full from the 2nd value on: means 4.5 (best), 3.5, 3.0, 3.0 (no gain) x3.
  assert flags == [(0, False), (0, False), (0, False), (0, False), (1, False), (2, False),
                   (3, True)]
  st = S.update_plateau(S.push_loss(st, 1.0), patience=3, min_delta=0.01)
  assert (int(st.plateau_count), bool(st.plateaued)) == (0, False)
  st = st.replace(plateau_count=jnp.int32(9), plateaued=jnp.bool_(True))
  cleared = S.reset_plateau(st)
  assert int(cleared.plateau_count) == 0 and not bool(cleared.plateaued)


def test_update_state_counts_one_step_and_skips_non_finite():
  cfg = config_lib.default_config()
  cfg.adaptive_temperature.enabled = True
  cfg.curriculum.total_steps = 4
  st = S.init_state(cfg)
  counts = [0, 0, 3, 2, 0, 0]
  st1 = S.update_state(st, _metrics([0, 0, 1.0, 2.0, 0, 0], 0.5, 0.7, counts), cfg)
  assert int(st1.step) == 1 and float(st1.curriculum_progress) == 0.25
  np.testing.assert_allclose(st1.span_losses, [0, 0, 1, 2, 0, 0])
  np.testing.assert_allclose(st1.loss_history[0], 0.7, rtol=1e-6)
  assert float(st1.temperature) > 1.0
  bad = S.update_state(st1, _metrics([0, 0, np.nan, 2.0, 0, 0], 0.5, 0.7, counts), cfg)
  assert int(bad.skipped_steps) == 1 and int(bad.step) == 1
  for a, b in zip(jax.tree.leaves(bad.replace(skipped_steps=st1.skipped_steps)),
                  jax.tree.leaves(st1)):
    np.testing.assert_array_equal(a, b)
  empty = S.update_state(st1, _metrics([0.0] * 6, 0.0, 0.0, [0] * 6), cfg)
  assert int(empty.step) == 2 and int(empty.history_count) == 1
  np.testing.assert_array_equal(empty.temperature, st1.temperature)
  np.testing.assert_array_equal(empty.span_losses, st1.span_losses)


def test_skip_step_only_counts():
  st = S.init_state(config_lib.default_config())
  sk = S.skip_step(st)
  assert int(sk.skipped_steps) == 1 and int(sk.step) == 0


@pytest.mark.parametrize("total,step,expected", [(10, 0, 0.0), (10, 5, 0.5), (10, 50, 1.0)])
def test_curriculum_progress(total, step, expected):
  assert float(S.curriculum_progress(step, total)) == expected
