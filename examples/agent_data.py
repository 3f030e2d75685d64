"""Data of the agent distillation example: environment tasks -> demonstrations -> batches.

* :func:`prepare_data`: the environment's tasks (train / distill / held-out),
  the expert's demonstrations, the tokenizer (trained once per workdir), and the
  held-out expert trajectories of the per-span KL.
* :func:`distill_examples`: the teacher's rollouts on training tasks, stored in
  ``distill_data.jsonl``: the students' data.
* :class:`Batches`: deterministic length-bucketed batches (``get(step)`` depends
  only on ``(seed, step)``: the step is the data position of a checkpoint).
* :func:`teacher_logits`: the teacher's logits on every example, once (an
  offline teacher for the distillation methods).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import types
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from examples import agent_io
from examples import agent_lm as lm
from sad_jax.data import trajectories as tj


@dataclasses.dataclass
class Data:
  """Tasks, tokenizer and the held-out evaluation material of a study.

  Attributes:
    env: the environment module (:func:`examples.agent_env.get`).
    tokenizer: the byte-level BPE of the workdir.
    train_tasks: the tasks of the teacher's demonstrations.
    distill_tasks: training-split tasks the teacher rolls out for the students.
    eval_tasks: held-out tasks of the final evaluations.
    curve_tasks: the first ``num_curve_tasks`` of ``eval_tasks`` (learning curves).
    teacher_examples: the tokenized demonstrations.
    kl_batch: ``tokens``, ``labels``, ``span_ids`` ``[num_kl_trajectories,
      max(buckets)]``: held-out expert trajectories of the per-span KL.
  """
  env: types.ModuleType
  tokenizer: Tokenizer
  train_tasks: list
  distill_tasks: list
  eval_tasks: list
  curve_tasks: list
  teacher_examples: list[tj.Tokenized]
  kl_batch: dict[str, np.ndarray]


def env_options(cfg, env: types.ModuleType) -> dict:
  """``cfg.env_options`` as keyword arguments of ``env.generate_tasks``.

  Raises:
    ValueError: the options are not the environment's (``OPTIONS``), e.g. after
      ``--config.env=NAME`` on a config built for another environment.
  """
  options = dict(cfg.env_options)
  if set(options) != set(env.OPTIONS):
    raise ValueError(f"config.env_options has {sorted(options)}, environment {cfg.env!r} "
                     f"takes {sorted(env.OPTIONS)}; select the environment with "
                     "--config=configs/agent_distill.py:PRESET,env=NAME")
  return options


def generate_tasks(cfg, env: types.ModuleType) -> tuple[list, list, list]:
  """``(train, distill, eval)`` tasks of the config: the seeds are ``data_seed`` (train,
  held-out) and ``data_seed + 1000`` (distill)."""
  options = env_options(cfg, env)
  return (env.generate_tasks("train", cfg.num_train_tasks, cfg.data_seed, **options),
          env.generate_tasks("train", cfg.num_distill_tasks, cfg.data_seed + 1000, **options),
          env.generate_tasks("test", cfg.num_eval_tasks, cfg.data_seed, **options))


def prepare_data(cfg, workdir: pathlib.Path, env: types.ModuleType) -> Data:
  """Generates tasks and demonstrations; trains the tokenizer once per workdir (under a
  lock, so concurrent processes share one) or loads it."""
  train_tasks, distill_tasks, eval_tasks = generate_tasks(cfg, env)
  corpus = [env.expert_trajectory(t) for t in train_tasks]
  tok_path = workdir / "tokenizer.json"
  with agent_io.locked(workdir / ".tokenizer.lock"):
    if tok_path.exists():
      tokenizer = Tokenizer.from_file(str(tok_path))
    else:
      tokenizer = lm.train_tokenizer(corpus, cfg.vocab_size)
      agent_io.write_atomic(tok_path, tokenizer.to_str())
  examples = [lm.encode_trajectory(t, tokenizer)
              for t in tqdm(corpus, desc="tokenize demonstrations", leave=False)]
  kl_texts = [env.expert_trajectory(t) for t in eval_tasks[:cfg.num_kl_trajectories]]
  return Data(env, tokenizer, train_tasks, distill_tasks, eval_tasks,
              eval_tasks[:cfg.num_curve_tasks], examples,
              kl_batch(cfg, [lm.encode_trajectory(t, tokenizer) for t in kl_texts]))


def kl_batch(cfg, examples: Sequence[tj.Tokenized]) -> dict[str, np.ndarray]:
  """The first ``cfg.num_kl_trajectories`` examples as one batch of the per-span KL:
  ``tokens``, ``labels``, ``span_ids`` ``[n, max(buckets)]``."""
  b = tj.batch(list(examples[:cfg.num_kl_trajectories]),
               seq_len=max(agent_io.csv_list(cfg.buckets, int)))
  return {"tokens": b.tokens, "labels": b.labels, "span_ids": b.span_ids}


def distill_examples(cfg, workdir: pathlib.Path, data: Data,
                     rollouts: Callable[[Sequence], list]) -> tuple[list[tj.Tokenized], dict]:
  """The students' data: the teacher's rollouts on ``data.distill_tasks``, tokenized.

  Args:
    cfg: the example config (``keep_failed_trajectories``: keep every rollout,
      not only the solved ones).
    workdir: rollouts are stored in ``distill_data.jsonl`` (made once, under a lock).
    data: :func:`prepare_data`'s result.
    rollouts: ``rollouts(tasks) -> episodes`` of the teacher (run only when the
      file is absent).

  Returns:
    ``(examples, stats)``; ``stats``: ``teacher_train_success`` (solved fraction)
    and ``trajectories`` (examples kept).

  Raises:
    RuntimeError: no rollout is kept (the teacher solved nothing).
  """
  path = workdir / "distill_data.jsonl"
  with agent_io.locked(workdir / ".distill_data.lock"):
    if not path.exists():
      episodes = rollouts(data.distill_tasks)
      agent_io.write_atomic(path, "".join(
          json.dumps({"text": e.text, "success": e.success}) + "\n" for e in episodes))
  records = agent_io.read_jsonl(path)
  solved = [r["text"] for r in records if r["success"]]
  kept = [r["text"] for r in records] if cfg.keep_failed_trajectories else solved
  if not kept:
    raise RuntimeError(f"the teacher solved none of the {len(records)} training tasks; "
                       "train it longer (--config.teacher.steps)")
  stats = {"teacher_train_success": len(solved) / len(records), "trajectories": len(kept)}
  return [lm.encode_trajectory(t, data.tokenizer, strict=False) for t in kept], stats


class Batches:
  """Deterministic length-bucketed batches: ``get(step)`` depends only on (seed, step).

  Each example goes to the smallest bucket length that holds it (longer ones are
  cut to the largest). A step draws a bucket with probability proportional to
  its size, then ``batch_size`` examples of it. After :meth:`attach_teacher`,
  batches also carry the teacher's logits (an offline teacher).
  """

  def __init__(self, examples: Sequence[tj.Tokenized], buckets: Sequence[int],
               batch_size: int, seed: int):
    if not examples:
      raise ValueError("no training examples")
    self.examples = list(examples)
    self.buckets = sorted(buckets)
    self.batch_size = batch_size
    self.seed = seed
    self.teacher_logits: np.ndarray | None = None
    members: dict[int, list[int]] = {b: [] for b in self.buckets}
    for i, ex in enumerate(self.examples):
      n = len(ex.ids)
      members[next((b for b in self.buckets if b >= n), self.buckets[-1])].append(i)
    self.members = {b: np.asarray(m) for b, m in members.items() if m}
    sizes = np.asarray([len(m) for m in self.members.values()], np.float64)
    self.probs = sizes / sizes.sum()

  def attach_teacher(self, teacher_logits: np.ndarray) -> "Batches":
    """Makes :meth:`get` add ``teacher``; ``teacher_logits``: :func:`teacher_logits`'s
    ``[num_examples, max(buckets), V]`` array (row ``i`` zero past example ``i``)."""
    if len(teacher_logits) != len(self.examples):
      raise ValueError(f"{len(teacher_logits)} teacher logit rows for "
                       f"{len(self.examples)} examples")
    if teacher_logits.shape[1] != self.buckets[-1]:
      raise ValueError(f"teacher logits of length {teacher_logits.shape[1]}, the largest "
                       f"bucket is {self.buckets[-1]}")
    self.teacher_logits = teacher_logits
    return self

  def get(self, step: int) -> dict[str, np.ndarray]:
    """``tokens``, ``labels``, ``span_ids``: ``[batch_size, bucket]`` int32; ``teacher``
    ``[batch_size, bucket, V]`` float32 once a teacher is attached (stored float16)."""
    rng = np.random.default_rng([self.seed, step])
    lengths = list(self.members)
    bucket = lengths[int(rng.choice(len(lengths), p=self.probs))]
    pool = self.members[bucket]
    idx = rng.choice(pool, size=self.batch_size, replace=len(pool) < self.batch_size)
    b = tj.batch([self.examples[i] for i in idx], seq_len=bucket)
    out = {"tokens": b.tokens, "labels": b.labels, "span_ids": b.span_ids}
    if self.teacher_logits is not None:
      out["teacher"] = self.teacher_logits[idx, :bucket].astype(np.float32)  # one gather
    return out


def teacher_logits(teacher_apply: Callable, teacher_params, batches: Batches,
                   chunk: int = 64) -> np.ndarray:
  """The teacher's logits on every example's batch row: float16 ``[N, max(buckets), V]``.

  Row ``i`` holds example ``i``'s logits on its tokens and zeros after them. The
  students' data is fixed, so the teacher runs once over it instead of once per
  training step (each example always lands in the same bucket, and a causal
  model's logits on a row do not depend on the padding after it). One array
  makes a batch's teacher a single gather (:meth:`Batches.get`). It is stored in
  float16 (relative rounding <= 2**-11, half the memory of float32: 20,000
  trajectories of 208 positions over a 512-token vocabulary are 4.3 GB).
  """
  forward = jax.jit(teacher_apply)
  out = None
  for bucket, members in batches.members.items():
    for start in range(0, len(members), chunk):
      idx = members[start:start + chunk]
      rows = np.resize(idx, chunk)  # a fixed shape: one compilation per bucket
      tokens = tj.batch([batches.examples[i] for i in rows], seq_len=bucket).tokens
      logits = np.asarray(forward(teacher_params, jnp.asarray(tokens)), np.float16)
      if out is None:
        out = np.zeros((len(batches.examples), batches.buckets[-1], logits.shape[-1]),
                       np.float16)
      for row, i in enumerate(idx):
        n = min(len(batches.examples[i].ids), bucket)
        out[i, :n] = logits[row, :n]
  return out
