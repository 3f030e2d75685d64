"""The on-policy recipe (sad_jax.training._on_policy): mixture, online teacher, turns, step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_lm
from sad_jax import training
from sad_jax.data import episodes as ep_lib
from sad_jax.losses import SparseTeacher
from sad_jax.objective import SADLoss, SpanType
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


# ---------------------------------------------------------------------------
# The step: tiny student and teacher, ReAct episodes from a hand-made vocabulary.
# ---------------------------------------------------------------------------

VOCAB = (["Task: count to two.\n", "Thought:", "\n", "Action:", "Observation:", " ok", " done"]
         + [f" w{i}" for i in range(7, tiny_lm.VOCAB)])
DECODE = lambda ids: "".join(VOCAB[i] for i in ids)


def _episode_batch(seq_len=tiny_lm.SEQ * 4):
  turn = lambda w, a, *more: [1, w, *more, 2, 3, a, 2]  # "Thought: w ...\nAction: a\n"
  eps = [ep_lib.episode_example([0], [(turn(9, 10), [4, 5, 2]), (turn(11, 6), [4, 5, 2])],
                                DECODE, format="react"),
         ep_lib.episode_example([0], [(turn(12, 13), [4, 5, 2]), (turn(14, 15, 20, 21, 22), [4, 16, 2]),
                                      (turn(17, 6), [])], DECODE, format="react")]
  return {k: jnp.asarray(v) for k, v in ep_lib.batch_episodes(eps, seq_len)._asdict().items()}


def _fixed_batch(key, batch=4):
  b = tiny_lm.make_batch(key, batch=batch)
  b.pop("teacher")
  return b


def _recipe(config, **kw):
  return on_policy.OnPolicy(config, optimizer=optax.adam(1e-2), apply_fn=tiny_lm.apply,
                            teacher_apply=tiny_lm.apply, **kw)


def test_episode_batch_labels_observations_and_prompt():
  b = _episode_batch()
  obs_labels = np.isin(np.asarray(b["labels"]), [4, 5, 16]) & (np.asarray(b["span_ids"]) != PAD)
  assert obs_labels.any() and np.all(np.asarray(b["span_ids"])[obs_labels] == O)
  assert set(np.unique(np.asarray(b["span_ids"]))) <= {PAD, R, A, O}


def test_lambda_zero_equals_the_off_policy_step_bitwise():
  params = tiny_lm.init(jax.random.key(0))
  teacher_params = tiny_lm.init(jax.random.key(1))
  config = {"mixture": 0.0, "turns": {"rule": "departure", "threshold": 0.1,
                                      "depth_start": 1}}
  recipe = _recipe(config)
  off_loss = SADLoss(recipe.config.objective)
  off = jax.jit(training.make_train_step(off_loss, optax.adam(1e-2), apply_fn=tiny_lm.apply,
                                         teacher_apply=tiny_lm.apply))
  on = jax.jit(recipe.step)
  s_on = training.init_train_state(params, optax.adam(1e-2), recipe.loss)
  s_off = training.init_train_state(params, optax.adam(1e-2), off_loss)
  for n in range(2):
    assert not recipe.on_policy_batch(n)
    batch = _fixed_batch(jax.random.key(10 + n))
    s_on, m_on = on(s_on, batch, teacher_params)
    s_off, m_off = off(s_off, batch, teacher_params)
    assert float(m_on["loss"]) == float(m_off["loss"])
  for a, b in zip(jax.tree.leaves(s_on), jax.tree.leaves(s_off)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("rule", ["none", "position", "departure"])
def test_observation_tokens_never_train(rule):
  params = tiny_lm.init(jax.random.key(0))
  teacher_params = tiny_lm.init(jax.random.key(1))
  batch = _episode_batch()
  loss = on_policy.OnPolicyLoss({"turns": {"rule": rule, "threshold": 0.0, "decay": 0.5}})
  state = loss.init_state()
  untrained = ~np.isin(np.asarray(batch["span_ids"]), [R, A])
  noise = jax.random.normal(jax.random.key(5), (*batch["tokens"].shape, tiny_lm.VOCAB)) * 9

  def total(student_logits, teacher_logits):
    value, _ = loss(student_logits, teacher_logits, batch, state,
                    normalizer=loss.normalizer(batch))
    return value

  s = tiny_lm.apply(params, batch)
  t = tiny_lm.apply(teacher_params, batch)
  t_noisy = jnp.where(untrained[..., None], noise, t)
  value, grad = jax.value_and_grad(total)(s, t)
  value_noisy, grad_noisy = jax.value_and_grad(total)(s, t_noisy)
  assert float(value) > 0
  assert float(value) == float(value_noisy)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_noisy))
  np.testing.assert_array_equal(np.asarray(grad)[untrained], 0.0)
  assert np.any(np.asarray(grad)[~untrained] != 0)


def test_turn_rules_scale_the_loss():
  batch = _episode_batch()
  s = tiny_lm.apply(tiny_lm.init(jax.random.key(0)), batch)
  t = tiny_lm.apply(tiny_lm.init(jax.random.key(1)), batch)
  losses = {}
  for rule in ("none", "position", "accumulated", "balanced"):
    loss = on_policy.OnPolicyLoss({"turns": {"rule": rule, "decay": 0.3, "scale": 5.0,
                                             "normalize": False}})
    value, metrics = loss(s, t, batch, loss.init_state(), normalizer=loss.normalizer(batch))
    losses[rule] = float(value)
    if rule == "none":
      assert loss.factors(s, t, batch, loss.init_state()) is None
  assert losses["position"] < losses["none"] and losses["accumulated"] < losses["none"]
  assert losses["balanced"] != losses["none"]
  # The same batch without turn ids (fixed data) is the plain objective.
  fixed = {k: v for k, v in batch.items() if k != "turn_ids"}
  loss = on_policy.OnPolicyLoss({"turns": {"rule": "position", "decay": 0.3}})
  plain = SADLoss(loss.config.objective)
  np.testing.assert_array_equal(
      np.asarray(loss(s, t, fixed, loss.init_state(), normalizer=loss.normalizer(fixed))[0]),
      np.asarray(plain(s, t, fixed, plain.init_state(), normalizer=plain.normalizer(fixed))[0]))


def test_step_with_an_on_the_fly_top_k_teacher():
  params = tiny_lm.init(jax.random.key(0))
  teacher_params = tiny_lm.init(jax.random.key(1))
  batch = _episode_batch()
  recipe = _recipe({"teacher_top_k": 8, "turns": {"rule": "departure", "threshold": 0.5},
                    "objective": {"divergence": "generalized_jsd",
                                  "divergence_kwargs": {"beta": 0.5}}})
  state = training.init_train_state(params, optax.adam(1e-2), recipe.loss)
  new_state, metrics = jax.jit(recipe.step)(state, batch, teacher_params)
  assert np.isfinite(float(metrics["loss"])) and not bool(metrics["skipped"])
  assert any(np.any(np.asarray(a) != np.asarray(b))
             for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)))


def test_depth_curriculum_trains_first_turns_then_more():
  params = tiny_lm.init(jax.random.key(0))
  teacher_params = tiny_lm.init(jax.random.key(1))
  batch = _episode_batch()
  recipe = _recipe({"turns": {"depth_start": 1, "depth_every": 1, "depth_max": 2}})
  state = training.init_train_state(params, optax.adam(1e-2), recipe.loss)
  step = jax.jit(recipe.step)
  counts = []
  for _ in range(3):
    state, metrics = step(state, batch, teacher_params)
    counts.append(float(np.sum(np.asarray(metrics["spans"]["loss"][1]))))
    assert int(metrics["turn_depth"]) == min(len(counts), 2)
  in_turn = lambda k: np.sum(np.isin(np.asarray(batch["span_ids"]), [R, A])
                             & (np.asarray(batch["turn_ids"]) <= k))
  assert counts == [in_turn(1), in_turn(2), in_turn(2)]


@pytest.mark.parametrize("rule", ["position", "accumulated"])
def test_turn_factors_on_every_backend(rule):
  from sad_jax import backends, parallel
  from sad_jax.objective import ModelOutput
  batch = _episode_batch()
  params = tiny_lm.init(jax.random.key(0))
  hidden = jnp.tanh(params["embed"][batch["tokens"]] @ params["dense"]["kernel"])
  head = params["lm_head"]["kernel"]
  s, t = hidden @ head, tiny_lm.apply(tiny_lm.init(jax.random.key(1)), batch)
  config = {"turns": {"rule": rule, "decay": 0.5, "scale": 2.0}}

  def value(loss, student):
    fn = lambda student, t, batch: loss(student, t, batch, loss.init_state(),
                                        normalizer=loss.normalizer(batch))[0]
    return float(jax.jit(fn)(student, t, batch))

  ref = value(on_policy.OnPolicyLoss(config), s)
  assert ref != value(on_policy.OnPolicyLoss({}), s)
  fused = on_policy.OnPolicyLoss(config, backend=backends.fused(chunk_size=16))
  np.testing.assert_allclose(value(fused, ModelOutput(hidden=hidden, head=head)), ref, rtol=1e-5)
  mesh = parallel.make_mesh({"data": 2, "fsdp": 1, "model": 4})
  if rule == "position":
    vp = on_policy.OnPolicyLoss(config, backend=backends.vocab_parallel(mesh))
    np.testing.assert_allclose(value(vp, s), ref, rtol=1e-5)
  else:
    with pytest.raises(ValueError, match="vocab_parallel backend computes them only inside its mesh"):
      on_policy.OnPolicyLoss(config, backend=backends.vocab_parallel(mesh))


@pytest.mark.slow
def test_resume_mid_on_policy_phase_is_exact(tmp_path):
  from sad_jax.training import checkpoint
  params = tiny_lm.init(jax.random.key(0))
  teacher_params = tiny_lm.init(jax.random.key(1))
  recipe = _recipe({"mixture": 0.5, "seed": 2, "turns": {"rule": "departure", "threshold": 0.2,
                                                         "depth_start": 1}})
  draws = [recipe.on_policy_batch(n) for n in range(4)]
  assert any(draws) and not all(draws)  # both sources in the run
  step = jax.jit(recipe.step)
  episodes_batch, fixed = _episode_batch(), _fixed_batch(jax.random.key(4), batch=2)

  def run(state, start, stop):
    for n in range(start, stop):
      state, _ = step(state, episodes_batch if recipe.on_policy_batch(n) else fixed,
                      teacher_params)
    return state

  fresh = lambda: training.init_train_state(params, optax.adam(1e-2), recipe.loss)
  straight = run(fresh(), 0, 4)
  with checkpoint.Checkpointer(tmp_path, every_steps=1, async_save=False) as ckpt:
    ckpt.save(run(fresh(), 0, 2))
  restored, _ = checkpoint.Checkpointer(tmp_path).restore(fresh())
  resumed = run(restored, int(restored.step), 4)
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compose_checks_the_token_factors_shape():
  batch = _episode_batch()
  s = tiny_lm.apply(tiny_lm.init(jax.random.key(0)), batch)
  loss = SADLoss({})
  with pytest.raises(ValueError, match="token_factors shape"):
    loss(s, s, batch, loss.init_state(), token_factors=jnp.ones((1, 3)))
