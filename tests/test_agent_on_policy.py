"""Tests of the agent example's on-policy methods (examples/agent_on_policy.py and friends)."""
from __future__ import annotations

import pathlib
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest
from interrupt import interrupt_at

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples.agent_env import calculator as calc  # noqa: E402
from sad_jax.data.episodes import INSERTED_SOURCE, PROMPT_SOURCE, SAMPLED_SOURCE  # noqa: E402
from sad_jax.objective._spans import SpanType  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
  from examples import agent_lm as lm
  tasks = calc.generate_tasks("train", 300, seed=0)
  return lm.train_tokenizer([calc.expert_trajectory(t) for t in tasks])


def _tiny_lm(vocab_size, seed=0, max_len=256):
  from examples import agent_lm as lm
  return lm.create_model(lm.ModelConfig(vocab_size=vocab_size, d_model=16, num_layers=1,
                                        num_heads=2, d_ff=32, max_len=max_len), seed)


def _char_ids(tokenizer, text):
  """One token per character: ids the tokenizer would merge if it encoded ``text``."""
  ids = [tokenizer.encode(ch).ids for ch in text]
  assert all(len(i) == 1 for i in ids)
  return [i[0] for i in ids]


def test_sampling_policy_records_sampled_and_inserted_ids_exactly(tokenizer):
  """A scripted decode step (the next id of each row is a function of its position)
  emits character-level ids; the recorded ids are those ids, not a re-tokenization."""
  from examples import agent_lm as lm
  im_end = tokenizer.token_to_id("<|im_end|>")
  tasks = [calc.Task((2, 3), ("*",)), calc.Task((4, 5), ("+",))]
  prompts = [tokenizer.encode(calc.prompt_text(t)).ids for t in tasks]
  obs = tokenizer.encode(calc.observation_text("6")).ids
  call = _char_ids(tokenizer, "<think>multiply</think>\n" + calc.tool_call_text("2 * 3"))
  answer = tokenizer.encode("<think>done</think>\nThe answer is 6.").ids
  rambling = _char_ids(tokenizer, "<think>" + "a" * 200)
  t1, t2 = call + [im_end], answer + [im_end]
  p0, p1 = len(prompts[0]), len(prompts[1])
  script = [{p0 - 1 + k: y for k, y in enumerate(t1)},
            {p1 - 1 + k: y for k, y in enumerate(rambling)}]
  script[0].update({p0 + len(t1) + len(obs) - 1 + k: y for k, y in enumerate(t2)})

  def scripted_step(params, cache, tokens, pos, key, count):
    return np.asarray([script[i].get(int(p), 0) if i < 2 else 0 for i, p in enumerate(pos)]), cache

  graphdef, params = _tiny_lm(tokenizer.get_vocab_size())
  policy = lm.ModelPolicy(graphdef, params, tokenizer, batch_size=3, max_turn_tokens=len(t1) + 2,
                          step_fn=scripted_step, temperature=1.0, key=jax.random.key(0))
  episodes = lm.evaluate_policy(lambda: policy, tasks, env=calc, batch_size=3, max_turns=3)
  assert [e.success for e in episodes] == [True, False]
  r0, r1 = policy.rollouts
  assert r0.prompt_ids == prompts[0]
  assert [(t.sampled, t.inserted, t.truncated) for t in r0.turns] == [
      (t1, obs, False), (t2, [], False)]
  cut = rambling[:len(t1) + 2]   # the token limit; the env's <|im_end|> is inserted
  assert [(t.sampled, t.inserted, t.truncated) for t in r1.turns] == [(cut, [im_end], True)]

  ex0, ex1 = r0.example(tokenizer), r1.example(tokenizer)
  assert ex0.text == episodes[0].text and ex1.text == episodes[1].text
  assert ex0.ids.tolist() == prompts[0] + t1 + obs + t2
  assert tokenizer.encode(ex0.text).ids != ex0.ids.tolist()   # re-tokenizing would merge
  span = ex0.span_ids
  assert np.all(span[ex0.source == PROMPT_SOURCE] == SpanType.PROMPT)
  assert np.all(span[ex0.source == INSERTED_SOURCE] == SpanType.OBSERVATION)
  sampled = np.flatnonzero(ex0.source == SAMPLED_SOURCE)
  assert set(span[sampled]) == {SpanType.REASONING, SpanType.ACTION}
  think = sampled[len("<think>"):len("<think>multiply")]   # the characters "multiply"
  assert np.all(span[think] == SpanType.REASONING)
  call_end = sampled[len(call) - len("</tool_call>"):len(t1)]  # call's close and <|im_end|>
  assert np.all(span[call_end] == SpanType.ACTION)
  assert span[sampled[-1]] == SpanType.ACTION and ex0.ids[sampled[-1]] == im_end
  assert any("cut at the token limit" in r.reason for r in ex1.recoveries)
  assert np.all(ex1.span_ids[ex1.source == INSERTED_SOURCE] == SpanType.OBSERVATION)


def test_temperature_zero_is_the_greedy_policy_and_samples_follow_the_key(tokenizer):
  from examples import agent_lm as lm
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size(), seed=1)
  tasks = calc.generate_tasks("test", 4, seed=0)

  def run(**kw):
    policy = lm.ModelPolicy(graphdef, params, tokenizer, batch_size=4, max_turn_tokens=12, **kw)
    eps = lm.evaluate_policy(lambda: policy, tasks, env=calc, batch_size=4, max_turns=2)
    return [e.text for e in eps], policy.rollouts

  greedy, greedy_ids = run()
  assert run(temperature=0.0, key=jax.random.key(3)) == (greedy, greedy_ids)
  assert run(temperature=1e-6, key=jax.random.key(3))[0] == greedy   # sampling at T -> 0
  a, b = run(temperature=1.0, key=jax.random.key(3)), run(temperature=1.0, key=jax.random.key(4))
  assert a == run(temperature=1.0, key=jax.random.key(3)) and a[0] != b[0] != greedy
  with pytest.raises(ValueError, match="give a PRNG key"):
    lm.ModelPolicy(graphdef, params, tokenizer, batch_size=1, temperature=1.0)


def test_sampled_episodes_become_batches_that_train_only_the_students_tokens(tmp_path, tokenizer):
  """A model's own samples: the ids decode to the episode's text, the pool survives
  its npz exactly, and a batch's prompt and observation labels are never trained."""
  from examples import agent_evaluate, agent_on_policy, agent_train
  from examples import agent_lm as lm
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size(), seed=2)
  cfg = ml_collections.ConfigDict(dict(rollout_batch=4, max_turn_tokens=16, max_turns=2))
  evaluator = agent_evaluate.Evaluator(graphdef, cfg,
                                       types.SimpleNamespace(env=calc, tokenizer=tokenizer))
  tasks = calc.generate_tasks("train", 6, seed=9)
  pool = agent_on_policy.sample_pool(evaluator, params, tasks, jax.random.key(0), 1.0)
  texts = [e.text for e in evaluator.rollouts(params, tasks, "greedy")]
  assert len(pool.examples) == 6 and pool.rollout_seconds > 0
  for ex, task in zip(pool.examples, tasks):
    assert ex.text.startswith(calc.prompt_text(task))
    assert tokenizer.decode(ex.ids.tolist(), skip_special_tokens=False) == ex.text
  assert [ex.text for ex in pool.examples] != texts   # sampled, not greedy
  agent_on_policy.save_pool(tmp_path / "pool.npz", pool)
  loaded = agent_on_policy.load_pool(tmp_path / "pool.npz", tokenizer)
  assert loaded.rollouts == pool.rollouts and loaded.success.tolist() == pool.success.tolist()
  for a, b in zip(loaded.examples, pool.examples):
    np.testing.assert_array_equal(a.span_ids, b.span_ids)

  from examples import agent_data
  fixed = agent_data.Batches([lm.encode_trajectory(calc.expert_trajectory(t),
                                                               tokenizer) for t in tasks],
                             [208], batch_size=3, seed=0)
  source = agent_on_policy.OnPolicyBatches(
      {"mixture": 1.0}, fixed, lambda p, r: pool, tmp_path / "pools", tokenizer, start=0,
      rollout_every=4, seq_lens=[208, 256])
  source.prepare(0, params)
  batch = source.get(0)
  assert set(batch) == {"tokens", "labels", "span_ids", "turn_ids"}
  np.testing.assert_array_equal(batch["tokens"], source.get(0)["tokens"])  # (seed, step)
  weights = np.zeros(len(SpanType))
  for name, w in agent_train.AGENT_SPANS.items():
    weights[SpanType[name.upper()]] = w
  trained = weights[batch["span_ids"]] > 0
  for row, idx in enumerate(np.random.default_rng([0, 0, 1]).choice(6, 3, replace=False)):
    ex = pool.examples[idx]
    n = min(len(ex.ids), batch["tokens"].shape[1]) - 1
    label_source = ex.source[1:n + 1]   # label t is id t + 1
    assert not trained[row, :n][label_source != SAMPLED_SOURCE].any()
    assert trained[row, :n][label_source == SAMPLED_SOURCE].all()
    np.testing.assert_array_equal(batch["turn_ids"][row, :n], ex.turn_ids[1:n + 1])


def test_on_policy_method_configs(tokenizer):
  from configs import agent_distill
  from examples import agent_train
  from sad_jax import training
  cfg = agent_distill.get_config("smoke")
  configs = {m: training.on_policy_config(agent_train.on_policy_config(m, cfg, seed=3))
             for m in agent_distill.ON_POLICY_METHODS}
  kd, sad, turns = (configs[m] for m in agent_distill.ON_POLICY_METHODS)
  assert {c.objective.divergence for c in configs.values()} == {"forward_kl"}
  assert kd.objective.normalization == "tokens" and sad.objective.normalization == "span_mean"
  assert (kd.turns.rule, sad.turns.rule, turns.turns.rule) == ("none", "none", "balanced")
  assert kd.seed == 3 and kd.mixture == cfg.on_policy.mixture
  for m in agent_distill.ON_POLICY_METHODS:
    assert isinstance(agent_train.method_loss(m, cfg), training.OnPolicyLoss)
  cfg.on_policy.init_steps = cfg.student.steps
  with pytest.raises(ValueError, match="init_steps = 20 must be in"):
    agent_train.method_loss("on_policy_sad", cfg)


@pytest.mark.slow  # ~75 s on the shared 2-core CPU: three short runs with rollouts
def test_resume_mid_on_policy_phase_is_exact(tmp_path, tokenizer):
  """N steps straight vs. k steps, an interrupt, and a resume to N: the same params,
  and the resumed run reloads the stored pools instead of sampling them again."""
  from examples import agent_data, agent_evaluate, agent_on_policy, agent_train
  from examples import agent_lm as lm
  from sad_jax import training
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size(), seed=0)
  t_graphdef, t_params = _tiny_lm(tokenizer.get_vocab_size(), seed=5)
  apply, t_apply = lm.make_apply(graphdef), lm.make_apply(t_graphdef)
  cfg = ml_collections.ConfigDict(dict(log_every=2, checkpoint_every=3, rollout_batch=4,
                                       max_turn_tokens=10, max_turns=2))
  tx = agent_train.optimizer(ml_collections.ConfigDict(dict(learning_rate=1e-2,
                                                            warmup_steps=0, steps=8)))
  recipe = training.OnPolicy({"mixture": 0.5, "seed": 1, "turns": {"rule": "balanced"}},
                             optimizer=tx, apply_fn=lambda p, b: apply(p, b["tokens"]),
                             teacher_apply=lambda tp, b: t_apply(tp, b["tokens"]))
  draws = [recipe.on_policy_batch(n) for n in range(8)]
  assert any(draws[:5]) and any(draws[5:]) and not all(draws)
  jitted = jax.jit(recipe.step)
  step = lambda s, b: jitted(s, b, t_params)
  evaluator = agent_evaluate.Evaluator(graphdef, cfg,
                                       types.SimpleNamespace(env=calc, tokenizer=tokenizer))
  examples = [lm.encode_trajectory(calc.expert_trajectory(t), tokenizer)
              for t in calc.generate_tasks("train", 8, seed=0)]
  sampled = []

  def source(run_dir):
    def sample(p, refresh):
      sampled.append((run_dir.name, refresh))
      tasks = calc.generate_tasks("train", 4, seed=100 + refresh)
      return agent_on_policy.sample_pool(evaluator, p, tasks, jax.random.key(refresh), 1.0)
    return agent_on_policy.OnPolicyBatches(
        recipe.config, agent_data.Batches(examples, [208], batch_size=2, seed=0), sample,
        run_dir / "pools", tokenizer, start=0, rollout_every=3, seq_lens=[208, 256])

  fresh = lambda: training.init_train_state(params, tx, recipe.loss)
  interrupting_step = interrupt_at(step, 6)

  run, no_eval = agent_train.run_training, lambda p: {}
  a, b = tmp_path / "a", tmp_path / "b"
  with pytest.raises(KeyboardInterrupt):
    run("t", a, fresh(), interrupting_step, source(a), 8, cfg, 4, no_eval)
  before = [r for name, r in sampled if name == "a"]
  resumed = run("t", a, fresh(), step, source(a), 8, cfg, 4, no_eval)
  after = [r for name, r in sampled if name == "a"][len(before):]
  assert before and not set(before) & set(after)   # stored pools are reloaded, never resampled
  straight = run("t", b, fresh(), step, source(b), 8, cfg, 4, no_eval)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
  assert sorted(p.name for p in (a / "pools").iterdir()) == sorted(
      p.name for p in (b / "pools").iterdir())
  log = [r for r in agent_train.agent_io.read_jsonl(a / "metrics.jsonl") if r["kind"] == "train"]
  assert [r["step"] for r in log] == [2, 4, 6, 8]
  assert all("on_policy/success" in r and "divergence/action" in r for r in log[1:])
