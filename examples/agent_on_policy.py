"""On-policy data of the agent example: the student's sampled episodes, pooled and batched.

* :func:`sample_pool`: one refresh of the pool -- the current student rolls out
  fresh training-split tasks at the sampling temperature (batched, KV cache:
  :class:`examples.agent_lm.ModelPolicy`), and each episode's recorded ids become
  a span-labelled example (:meth:`examples.agent_lm.Rollout.example`: span ids on
  the sampled ids, observations and prompt never trained).
* :func:`save_pool` / :func:`load_pool`: a pool as one ``.npz`` (written
  atomically before the pool is used, so a resumed run trains on the very
  episodes the interrupted one drew, not on new ones sampled from other params).
* :class:`OnPolicyBatches`: the batch source of an on-policy run for
  :func:`examples.agent_train.run_training`: GKD's per-step draw
  (:func:`sad_jax.training.on_policy_batch`) between the pool and the fixed data
  (the teacher's trajectories); pool ``r`` is sampled at the first on-policy step
  of window ``r`` (``rollout_every`` steps), and every batch is a function of
  ``(seed, step)`` and the pool, so the step is the data position of a checkpoint.
"""
from __future__ import annotations

import dataclasses
import io
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from tokenizers import Tokenizer

from examples import agent_io
from examples import agent_lm as lm
from sad_jax import training
from sad_jax.data import episodes
from sad_jax.data.episodes import INSERTED_SOURCE, PROMPT_SOURCE, SAMPLED_SOURCE


@dataclasses.dataclass
class Pool:
  """One refresh's episodes.

  Attributes:
    rollouts: the recorded ids, one :class:`examples.agent_lm.Rollout` per episode.
    success: ``[N]`` bool, the environment's verdict per episode.
    rollout_seconds: the wall time of the rollouts.
    examples: the span-labelled examples of the rollouts (in order).
  """
  rollouts: list[lm.Rollout]
  success: np.ndarray
  rollout_seconds: float
  examples: list[episodes.Episode]


def _pool(rollouts, success, seconds, tokenizer) -> Pool:
  return Pool(rollouts, np.asarray(success, bool), float(seconds),
              [r.example(tokenizer) for r in rollouts])


def sample_pool(evaluator, params, tasks: Sequence, key: jax.Array, temperature: float,
                desc: str = "on-policy rollouts") -> Pool:
  """The student (``params``) rolls out ``tasks`` at ``temperature`` with ``key``.

  Args:
    evaluator: the student's :class:`examples.agent_evaluate.Evaluator`.
    params: the student's parameters.
    tasks: the tasks, one episode each.
    key: the PRNG key of the samples.
    temperature: the sampling temperature (> 0).
    desc: the progress bar's label.
  """
  t0 = time.perf_counter()
  policy = evaluator.policy(params, temperature, key)
  eps = evaluator.rollouts(params, tasks, desc, policy)
  return _pool(policy.rollouts, [e.success for e in eps], time.perf_counter() - t0,
               evaluator.data.tokenizer)


def save_pool(path: pathlib.Path, pool: Pool) -> None:
  """Writes the pool's ids (with their provenance and turns), verdicts and time, atomically."""
  ids, source, turn, lengths, num_turns, truncated = [], [], [], [], [], []
  for r in pool.rollouts:
    chunks = [(r.prompt_ids, PROMPT_SOURCE, 0)]
    for k, t in enumerate(r.turns, start=1):
      chunks += [(t.sampled, SAMPLED_SOURCE, k), (t.inserted, INSERTED_SOURCE, k)]
      truncated.append(bool(t.truncated))
    for chunk, src, k in chunks:
      ids += list(chunk)
      source += [src] * len(chunk)
      turn += [k] * len(chunk)
    lengths.append(sum(len(c) for c, _, _ in chunks))
    num_turns.append(len(r.turns))
  buf = io.BytesIO()
  np.savez(buf, ids=np.asarray(ids, np.int32), source=np.asarray(source, np.int8),
           turn=np.asarray(turn, np.int32), lengths=np.asarray(lengths, np.int64),
           num_turns=np.asarray(num_turns, np.int64), truncated=np.asarray(truncated, bool),
           success=pool.success, rollout_seconds=np.float64(pool.rollout_seconds))
  agent_io.write_atomic(path, buf.getvalue())


def load_pool(path: pathlib.Path, tokenizer: Tokenizer) -> Pool:
  """The pool :func:`save_pool` wrote (its examples rebuilt from the same ids)."""
  with np.load(path) as f:
    data = {k: f[k] for k in f.files}
  rollouts, cut = [], iter(data["truncated"].tolist())
  bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
  for e, n in enumerate(data["num_turns"].tolist()):
    ids, src, turn = (data[k][bounds[e]:bounds[e + 1]] for k in ("ids", "source", "turn"))
    part = lambda s, k: ids[(src == s) & (turn == k)].tolist()
    rollouts.append(lm.Rollout(part(PROMPT_SOURCE, 0), [
        episodes.Turn(part(SAMPLED_SOURCE, k), part(INSERTED_SOURCE, k), next(cut))
        for k in range(1, n + 1)]))
  return _pool(rollouts, data["success"], float(data["rollout_seconds"]), tokenizer)


class OnPolicyBatches:
  """The batch source of an on-policy run (``get(step)``, ``prepare(step, params)``).

  Args:
    recipe_config: the validated :class:`sad_jax.training.OnPolicy` config (its
      ``mixture`` and ``seed`` draw each step's source).
    fixed: the fixed data (:class:`examples.agent_data.Batches` of the teacher's
      trajectories, no teacher attached: the teacher runs online); its ``seed`` is
      the source's.
    sample: ``sample(params, refresh) -> Pool``, the rollouts of refresh ``refresh``.
    pool_dir: where the pools are stored (``pool-RRRRR.npz``).
    tokenizer: to rebuild a stored pool's examples.
    start, rollout_every: pool ``r`` serves steps ``[start + r * rollout_every,
      start + (r + 1) * rollout_every)``.
    seq_lens: the padded lengths of on-policy batches: the smallest that holds
      the batch's longest episode, else the largest (episodes are cut there).
    teacher_seconds: ``teacher_seconds(batch) -> s``, the time of one teacher
      forward on a batch, measured once per pool (or None).
  """

  def __init__(self, recipe_config, fixed, sample: Callable[[object, int], Pool],
               pool_dir: pathlib.Path, tokenizer: Tokenizer, *, start: int, rollout_every: int,
               seq_lens: Sequence[int], teacher_seconds: Callable[[dict], float] | None = None):
    if rollout_every < 1:
      raise ValueError(f"rollout_every must be >= 1, got {rollout_every}")
    self.config = recipe_config
    self.fixed = fixed
    self.seed = fixed.seed
    self._sample = sample
    self._dir = pool_dir
    self._tok = tokenizer
    self._start, self._every = start, rollout_every
    self._seq_lens = sorted(seq_lens)
    self._teacher_seconds = teacher_seconds
    self.pool: Pool | None = None
    self.refresh = -1
    self._stats: dict[str, float] = {}
    self._last_on_policy = False

  def is_on_policy(self, step: int) -> bool:
    return training.on_policy_batch(self.config, step)

  def prepare(self, step: int, params) -> None:
    """Makes the pool of ``step``'s window current when ``step`` is on-policy: loaded
    from ``pool_dir`` if stored, else sampled with ``params`` and stored first."""
    if not self.is_on_policy(step):
      return
    refresh = (step - self._start) // self._every
    if refresh == self.refresh:
      return
    path = self._dir / f"pool-{refresh:05d}.npz"
    if path.exists():
      pool = load_pool(path, self._tok)
    else:
      pool = self._sample(params, refresh)
      self._dir.mkdir(parents=True, exist_ok=True)
      save_pool(path, pool)
    self.pool, self.refresh = pool, refresh
    self._stats = {
        "on_policy/pool": refresh, "on_policy/success": float(pool.success.mean()),
        "on_policy/rollout_seconds": pool.rollout_seconds,
        "on_policy/episode_tokens": float(np.mean([len(e.ids) for e in pool.examples])),
        "on_policy/recoveries": float(np.mean([len(e.recoveries) for e in pool.examples]))}
    if self._teacher_seconds is not None:
      self._stats["on_policy/teacher_seconds"] = self._teacher_seconds(self.get(step))

  def get(self, step: int) -> dict[str, np.ndarray]:
    """Batch ``step``: ``tokens``, ``labels``, ``span_ids`` (and ``turn_ids`` when
    on-policy: ``batch_size`` episodes of the pool, drawn from ``(seed, step)``)."""
    self._last_on_policy = self.is_on_policy(step)
    if not self._last_on_policy:
      return self.fixed.get(step)
    if self.pool is None or self.refresh != (step - self._start) // self._every:
      raise RuntimeError(f"step {step} is on-policy: call prepare({step}, params) first")
    n = len(self.pool.examples)
    rng = np.random.default_rng([self.seed, step, 1])
    idx = rng.choice(n, size=self.fixed.batch_size, replace=n < self.fixed.batch_size)
    chosen = [self.pool.examples[i] for i in idx]
    longest = max(len(e.ids) for e in chosen)
    seq_len = next((s for s in self._seq_lens if s >= longest), self._seq_lens[-1])
    b = episodes.batch_episodes(chosen, seq_len)
    return {"tokens": b.tokens, "labels": b.labels, "span_ids": b.span_ids,
            "turn_ids": b.turn_ids}

  def log_fields(self) -> dict[str, float]:
    """The current pool's statistics (success of its sampled episodes, rollout and
    teacher seconds, mean tokens and recoveries per episode) and whether the last
    batch was on-policy."""
    return dict(self._stats, **{"on_policy/last_batch": float(self._last_on_policy)})
