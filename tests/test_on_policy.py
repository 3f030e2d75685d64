"""The on-policy recipe (sad_jax.training._on_policy): mixture, online teacher, turns, step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.data import episodes as ep_lib
from sad_jax.losses import SparseTeacher
from sad_jax.objective import SpanType
from sad_jax.training import _on_policy as on_policy

R, A, O, PAD = (int(SpanType.REASONING), int(SpanType.ACTION), int(SpanType.OBSERVATION),
                int(SpanType.PAD))


def test_config_defaults_and_errors():
  c = on_policy.resolve_config()
  assert c.objective.divergence == "reverse_kl" and c.mixture == 0.5
  c = on_policy.resolve_config({"objective": {"divergence": "generalized_jsd",
                                              "divergence_kwargs": {"beta": 0.5}},
                                "turns": {"rule": "departure", "threshold": 0.2}})
  assert c.objective.divergence_kwargs.beta == 0.5 and c.turns.threshold == 0.2
  bad = [({"mixture": 1.5}, "config.mixture"),
         ({"objective": {"span_weights": {"observation": 1.0}}},
          "objective.span_weights.observation"),
         ({"objective": {"span_weights": {"prompt": 0.5}}}, "objective.span_weights.prompt"),
         ({"turns": {"rule": "later"}}, "turns.rule"),
         ({"turns": {"decay": 0.0}}, "turns.decay"),
         ({"turns": {"depth_start": 3, "depth_max": 2}}, "turns.depth_max"),
         ({"teacher_top_k": -1}, "teacher_top_k"),
         ({"teacher_top_k": 4, "objective": {"divergence": "wasserstein"}}, "teacher_top_k"),
         ({"turns": {"speed": 1}}, "turns.speed"),
         ({"lambda": 0.5}, "config.lambda")]
  for overrides, field in bad:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
      on_policy.resolve_config(overrides)


def test_batch_source_draw_is_deterministic_and_respects_lambda():
  c = on_policy.resolve_config({"mixture": 0.3, "seed": 7})
  draws = [on_policy.on_policy_batch(c, n) for n in range(2000)]
  assert draws == [on_policy.on_policy_batch(c, n) for n in range(2000)]  # resumable
  assert 0.25 < np.mean(draws) < 0.35
  assert draws[1000:1100] == [on_policy.on_policy_batch(c, n) for n in range(1000, 1100)]
  assert not any(on_policy.on_policy_batch({"mixture": 0.0}, n) for n in range(500))
  assert all(on_policy.on_policy_batch({"mixture": 1.0}, n) for n in range(500))
  other = [on_policy.on_policy_batch({"mixture": 0.3, "seed": 8}, n) for n in range(2000)]
  assert other != draws


def test_online_top_k_teacher():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 11))
  fn = on_policy.online_teacher(lambda p, b: logits * p, top_k=4, tail="renormalize_both")
  teacher = fn(2.0, None)
  assert isinstance(teacher, SparseTeacher) and teacher.indices.shape == (2, 3, 4)
  assert teacher.tail == "renormalize_both"
  np.testing.assert_allclose(teacher.logprobs[..., 0],
                             jnp.max(jax.nn.log_softmax(2.0 * logits), -1), rtol=1e-6)
  dense = on_policy.online_teacher(lambda p, b: logits, top_k=0)
  assert dense(None, None) is logits


def test_depth_curriculum_masks_later_turns_by_step():
  t = on_policy.resolve_config({"turns": {"depth_start": 1, "depth_every": 2,
                                          "depth_max": 2}}).turns
  batch = {"span_ids": jnp.array([[1, R, A, O, R, A, O, R, A]]),
           "turn_ids": jnp.array([[0, 1, 1, 1, 2, 2, 2, 3, 3]])}
  at0 = np.asarray(on_policy.depth_limited(batch, 0, t)["span_ids"])
  np.testing.assert_array_equal(at0, [[1, R, A, O, PAD, PAD, PAD, PAD, PAD]])
  at2 = np.asarray(jax.jit(lambda b, n: on_policy.depth_limited(b, n, t))(batch, 2)["span_ids"])
  np.testing.assert_array_equal(at2, [[1, R, A, O, R, A, O, PAD, PAD]])
  at9 = np.asarray(on_policy.depth_limited(batch, 9, t)["span_ids"])
  np.testing.assert_array_equal(at9, at2)  # depth_max
  fixed = {"span_ids": batch["span_ids"]}
  assert on_policy.depth_limited(fixed, 0, t) is fixed
