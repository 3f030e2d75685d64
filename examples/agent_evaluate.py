"""Evaluation of the agent distillation example: rollouts, success, per-span KL.

* :class:`Evaluator`: rollouts of one model in the environment, greedy or
  sampling (:class:`examples.agent_lm.ModelPolicy`; its decode step compiled once
  per temperature) and
  their statistics (:func:`episode_stats`: success -- the environment's verdict --,
  valid-action rate, turns, reasoning tokens).
* :func:`span_kl`: mean KL(teacher || student) at T = 1 per span type over
  held-out expert trajectories (:func:`sad_jax.losses.forward_kl`, summed per span
  with :func:`sad_jax.objective.span_sums`).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from examples import agent_lm as lm
from sad_jax import losses
from sad_jax import objective
from sad_jax.data import trajectories as tj
from sad_jax.objective import SpanType

REPORT_SPANS = ("reasoning", "action")


def span_kl(student_apply, student_params, teacher_apply, teacher_params,
            batch: dict[str, np.ndarray], chunk: int = 64) -> dict[str, float]:
  """Mean KL(teacher || student) at T = 1 per span type of :data:`REPORT_SPANS`.

  Args:
    student_apply, teacher_apply: ``apply(params, tokens [B, T]) -> logits [B, T, V]``.
    student_params, teacher_params: their parameters.
    batch: ``tokens`` and ``span_ids`` ``[N, T]``; evaluated ``chunk`` rows at a time.

  Returns:
    ``{"reasoning": kl, "action": kl}``: the sum of the per-token KL over the
    span type's tokens divided by their count (0 for a type without tokens).
  """
  sums = np.zeros(objective.NUM_SPAN_TYPES)
  counts = np.zeros(objective.NUM_SPAN_TYPES)
  for start in range(0, len(batch["tokens"]), chunk):
    tokens = jnp.asarray(batch["tokens"][start:start + chunk])
    span_ids = jnp.asarray(batch["span_ids"][start:start + chunk])
    s, c = _span_kl_sums(student_apply, teacher_apply, student_params, teacher_params,
                         tokens, span_ids)
    sums += np.asarray(s)
    counts += np.asarray(c)
  return {name: float(sums[SpanType[name.upper()]] / max(counts[SpanType[name.upper()]], 1))
          for name in REPORT_SPANS}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _span_kl_sums(student_apply, teacher_apply, student_params, teacher_params, tokens, span_ids):
  kl = losses.forward_kl(student_apply(student_params, tokens),
                         teacher_apply(teacher_params, tokens))
  return objective.span_sums(kl, span_ids), objective.span_counts(span_ids)


def episode_stats(episodes, tokenizer: Tokenizer) -> dict[str, float]:
  """Success, valid-action rate, mean turns and mean reasoning tokens per episode.

  ``success``: the fraction of episodes the environment judged solved;
  ``valid_action_rate``: valid turns / all turns; ``steps``: mean turns;
  ``reasoning_tokens``: mean tokens in ``<think>`` spans; ``num_tasks``.
  """
  reasoning = []
  for e in episodes:
    seg = tj.segment(e.text, format="chatml", strict=False)
    reasoning.append(int(np.sum(tj.tokenize(seg, tokenizer).span_ids == SpanType.REASONING)))
  turns = np.asarray([e.turns for e in episodes], np.float64)
  return {
      "success": float(np.mean([e.success for e in episodes])),
      "valid_action_rate": float(np.sum([e.valid_actions for e in episodes]) / turns.sum()),
      "steps": float(turns.mean()),
      "reasoning_tokens": float(np.mean(reasoning)),
      "num_tasks": len(episodes),
  }


class Evaluator:
  """Rollouts of one model architecture (its decode step compiled once per temperature).

  Args:
    graphdef: the model's ``nnx`` graph definition.
    cfg: the example config (``rollout_batch``, ``max_turn_tokens``, ``max_turns``).
    data: :class:`examples.agent_data.Data` (its ``env`` and ``tokenizer``).
  """

  def __init__(self, graphdef, cfg, data):
    self.graphdef = graphdef
    self.cfg = cfg
    self.data = data
    self._steps = {None: lm.make_decode_step(graphdef)}

  def policy(self, params, temperature: float | None = None,
             key: jax.Array | None = None) -> lm.ModelPolicy:
    """A :class:`examples.agent_lm.ModelPolicy` of ``params``: greedy, or sampling at
    ``temperature`` with ``key`` (one compiled decode step per temperature)."""
    temperature = temperature or None
    if temperature not in self._steps:
      self._steps[temperature] = lm.make_decode_step(self.graphdef, temperature)
    return lm.ModelPolicy(self.graphdef, params, self.data.tokenizer,
                          batch_size=self.cfg.rollout_batch,
                          max_turn_tokens=self.cfg.max_turn_tokens,
                          step_fn=self._steps[temperature], temperature=temperature, key=key)

  def rollouts(self, params, tasks: Sequence, desc: str, policy: lm.ModelPolicy | None = None):
    """One episode per task (in order); greedy unless a ``policy`` of :meth:`policy`
    is given (its :attr:`~examples.agent_lm.ModelPolicy.rollouts` then hold the ids)."""
    policy = policy or self.policy(params)
    with tqdm(total=len(tasks), desc=desc, leave=False) as bar:
      return lm.evaluate_policy(lambda: policy, tasks, env=self.data.env,
                                batch_size=self.cfg.rollout_batch,
                                max_turns=self.cfg.max_turns, progress=bar)

  def success(self, params, tasks: Sequence, desc: str) -> dict[str, float]:
    """:func:`episode_stats` of :meth:`rollouts`, plus ``eval_seconds``."""
    t0 = time.perf_counter()
    stats = episode_stats(self.rollouts(params, tasks, desc), self.data.tokenizer)
    stats["eval_seconds"] = time.perf_counter() - t0
    return stats
