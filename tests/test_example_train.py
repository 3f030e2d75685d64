"""The agent example's training: every method through one step (examples/agent_train.py)."""
from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import agent_distill  # noqa: E402
from examples import agent_lm as lm  # noqa: E402
from examples import agent_train  # noqa: E402
from sad_jax.objective import SpanType  # noqa: E402

V, B, T = 24, 3, 10


def _setup(seed=0):
  """A tiny student, the smoke config and one batch with a random offline teacher."""
  cfg = agent_distill.get_config("smoke")
  graphdef, params = lm.create_model(lm.ModelConfig(vocab_size=V, d_model=16, num_layers=1,
                                                    num_heads=2, d_ff=32, max_len=T), seed)
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, V, (B, T)).astype(np.int32)
  span_ids = rng.choice([SpanType.PROMPT, SpanType.REASONING, SpanType.ACTION,
                         SpanType.OBSERVATION], size=(B, T)).astype(np.int32)
  span_ids[:, -2:] = SpanType.PAD
  batch = {"tokens": tokens, "labels": np.roll(tokens, -1, axis=1), "span_ids": span_ids,
           "teacher": rng.normal(size=(B, T, V)).astype(np.float32)}
  return cfg, graphdef, params, batch


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _agent(span_ids):
  return np.isin(span_ids, (SpanType.REASONING, SpanType.ACTION))


_STEPS = {}


def _first_step(method):
  """``(batch, apply, params, state after 2 steps, metrics of step 1)``, built once per method."""
  if method not in _STEPS:
    cfg, graphdef, params, batch = _setup()
    tx = agent_train.optimizer(cfg.student)
    apply = lm.make_apply(graphdef)
    state, step = agent_train.make_method_step(method, cfg, apply, params, tx, 0)
    state, first = step(state, batch)
    state, _ = step(state, batch)
    _STEPS[method] = batch, apply, params, state, first
  return _STEPS[method]


_SLOW = pytest.mark.slow  # one compilation per method: ~20 s each on the shared 2-core CPU


@pytest.mark.parametrize("method", [m if m in ("sft", "token_kd", "sad") else
                                    pytest.param(m, marks=_SLOW)
                                    for m in agent_distill.ALL_METHODS])
def test_every_method_trains_through_its_step(method):
  _, _, params, state, metrics = _first_step(method)
  assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
  assert not bool(metrics["skipped"])
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, params)
  assert any(jax.tree.leaves(moved))


def _kl(batch, apply, params):
  log_s = _log_softmax(np.asarray(apply(params, batch["tokens"]), np.float64))
  log_t = _log_softmax(batch["teacher"].astype(np.float64))
  return (np.exp(log_t) * (log_t - log_s)).sum(-1)


def test_sft_loss_is_the_mean_cross_entropy_on_agent_tokens():
  batch, apply, params, _, metrics = _first_step("sft")
  logp = _log_softmax(np.asarray(apply(params, batch["tokens"]), np.float64))
  ce = -np.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
  np.testing.assert_allclose(float(metrics["loss"]), ce[_agent(batch["span_ids"])].mean(),
                             rtol=1e-5)


def test_token_kd_loss_is_the_mean_forward_kl_on_agent_tokens():
  batch, apply, params, _, metrics = _first_step("token_kd")
  kl = _kl(batch, apply, params)
  np.testing.assert_allclose(float(metrics["loss"]), kl[_agent(batch["span_ids"])].mean(),
                             rtol=1e-5)


def test_sad_loss_is_the_sum_of_the_reasoning_and_action_means():
  batch, apply, params, _, metrics = _first_step("sad")
  kl = _kl(batch, apply, params)
  expected = sum(kl[batch["span_ids"] == s].mean() for s in (SpanType.REASONING,
                                                            SpanType.ACTION))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)


def test_method_objectives_and_errors():
  cfg = agent_distill.get_config("smoke")
  assert agent_train.method_objective("token_kd", cfg).normalization == "tokens"
  sad = agent_train.method_objective("sad", cfg)
  assert sad.normalization == "span_mean" and sad.weighting == "uniform"
  cur = agent_train.method_objective("sad_curriculum", cfg)
  assert cur.weighting == "curriculum" and cur.curriculum.total_steps == cfg.student.steps
  for obj in (sad, cur):
    assert obj.span_weights.observation == 0 and obj.span_weights.reasoning == 1
  agent_train.check_method("sft", cfg)
  with pytest.raises(ValueError, match="unknown method 'sad_nope'; SAD strategies"):
    agent_train.check_method("sad_nope", cfg)
  with pytest.raises(ValueError, match="unknown method 'dpo'; allowed: sft, token_kd"):
    agent_train.check_method("dpo", cfg)


def test_train_seconds_sums_the_logged_step_times(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(
      '{"kind": "train", "step": 2, "seconds_per_step": 0.5}\n'
      '{"kind": "eval", "step": 2, "success": 0.1}\n'
      '{"kind": "train", "step": 5, "seconds_per_step": 1.0}\n')
  assert agent_train.train_seconds(tmp_path) == pytest.approx(4.0)
