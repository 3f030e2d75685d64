r"""End-to-end agent distillation: environment -> teacher -> students -> rollouts.

.. code-block:: bash

  python examples/distill_agent.py --config=configs/agent_distill.py --workdir=/tmp/agent
  python examples/distill_agent.py --config=configs/agent_distill.py:smoke --workdir=/tmp/s
  python examples/distill_agent.py --config=configs/agent_distill.py:study --workdir=/tmp/st \
      --config.methods=sft,token_kd,sad --config.seeds=0,1,2

Phases (each is skipped when the workdir already holds its result, and resumes
from its latest orbax checkpoint when it was interrupted; Ctrl-C / SIGTERM save
a checkpoint first, a hard kill loses at most ``checkpoint_every`` steps):

1. **Data.** Calculator tasks (:mod:`examples.agent_env`), expert ChatML
   demonstrations, a byte-level BPE tokenizer (``tokenizer.json``).
2. **Teacher.** A transformer trained with cross-entropy on the reasoning and
   action tokens of the demonstrations; evaluated by rollouts on held-out tasks
   (``teacher/``).
3. **Teacher trajectories.** Greedy teacher rollouts on training tasks; the
   successful ones are the students' data (``distill_data.jsonl``).
4. **Students.** One run per (method, seed) in ``students/METHOD-seedS/``: SFT
   on the teacher trajectories, or distillation (token-level KD, SAD, SAD
   weighting strategies) through :func:`sad_jax.training._step.make_train_step` and
   :func:`sad_jax.sad_loss` from the teacher's logits, computed once over the
   students' data (an offline teacher: the same numbers as an online one).
   Learning curves: success on ``num_curve_tasks`` held-out tasks and per-span
   KL(teacher || student) on held-out expert trajectories every ``eval_every``
   steps; at the end, a rollout evaluation on ``num_eval_tasks`` held-out tasks.
5. **Report.** ``summary.json``, ``summary.md`` (mean +- std over seeds) and
   PNG plots.

Every run writes ``metrics.jsonl`` (one JSON object per line: ``kind`` is
``train`` or ``eval``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import traverse_util  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tqdm import tqdm  # noqa: E402

from examples import agent_lm as lm  # noqa: E402
from examples.agent_env import calculator as calc  # noqa: E402
from sad_jax.objective import _config as sad_config
from sad_jax.training import checkpoint
from sad_jax.losses import _divergences as divergences
from sad_jax.objective import _sad as objective
from sad_jax.objective import _spans as spans
from sad_jax.training import _step as train
from sad_jax.data import trajectories as tj
from sad_jax.objective._spans import SpanType  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "agent_distill.py"), "Experiment config (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output / resume directory.")

AGENT_SPANS = ml_collections.ConfigDict(dict(
    prompt=0.0, reasoning=1.0, action=1.0, observation=0.0, other=0.0))
REPORT_SPANS = ("reasoning", "action")


# ---------------------------------------------------------------- utilities


def write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_json(path: pathlib.Path, obj: Any) -> None:
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def csv_list(value, cast=str) -> list:
  """``"a,b"`` (or a tuple / list / single value) -> ``[a, b]``."""
  if isinstance(value, str):
    return [cast(v.strip()) for v in value.split(",") if v.strip()]
  if isinstance(value, (list, tuple)):
    return [cast(v) for v in value]
  return [cast(value)]


def check_workdir_config(cfg, workdir: pathlib.Path) -> None:
  """Refuses a workdir whose cached phases come from another config.

  A workdir's tokenizer, teacher, teacher trajectories and finished students are
  reused by later invocations, so every field but ``methods`` and ``seeds``
  (which only select the runs to do) must equal the one stored in
  ``config.json``; otherwise results of two configs would be silently mixed.
  """
  path = workdir / "config.json"
  if not path.exists():
    return
  old = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
  new = traverse_util.flatten_dict(json.loads(cfg.to_json_best_effort()), sep=".")
  changed = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
             for k in sorted(set(old) | set(new))
             if k not in ("methods", "seeds") and old.get(k) != new.get(k)]
  if changed:
    raise ValueError(f"--workdir={workdir} holds results of another config ({'; '.join(changed)}); "
                     "use a new --workdir, or the config stored in its config.json")


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
  """Tasks, tokenizer and the held-out evaluation material of a run."""
  tokenizer: Tokenizer
  train_tasks: list[calc.Task]
  distill_tasks: list[calc.Task]
  eval_tasks: list[calc.Task]
  curve_tasks: list[calc.Task]
  teacher_examples: list[tj.Tokenized]
  kl_batch: dict[str, np.ndarray]


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
    ``[batch_size, bucket, V]`` float32 once a teacher is attached."""
    rng = np.random.default_rng([self.seed, step])
    lengths = list(self.members)
    bucket = lengths[int(rng.choice(len(lengths), p=self.probs))]
    pool = self.members[bucket]
    idx = rng.choice(pool, size=self.batch_size, replace=len(pool) < self.batch_size)
    b = tj.batch([self.examples[i] for i in idx], seq_len=bucket)
    out = {"tokens": b.tokens, "labels": b.labels, "span_ids": b.span_ids}
    if self.teacher_logits is not None:
      out["teacher"] = self.teacher_logits[idx, :bucket]  # one gather, not a row loop
    return out


def teacher_logits(teacher_apply: Callable, teacher_params, batches: Batches,
                   chunk: int = 64) -> np.ndarray:
  """The teacher's logits on every example's batch row: float32 ``[N, max(buckets), V]``.

  Row ``i`` holds example ``i``'s logits on its tokens and zeros after them. The
  students' data is fixed, so the teacher runs once over it instead of once per
  training step (each example always lands in the same bucket, and a causal
  model's logits on a row do not depend on the padding after it). One array
  makes a batch's teacher a single gather (``Batches.get``).
  """
  forward = jax.jit(teacher_apply)
  out = None
  for bucket, members in batches.members.items():
    for start in range(0, len(members), chunk):
      idx = members[start:start + chunk]
      rows = np.resize(idx, chunk)  # a fixed shape: one compilation per bucket
      tokens = tj.batch([batches.examples[i] for i in rows], seq_len=bucket).tokens
      logits = np.asarray(forward(teacher_params, jnp.asarray(tokens)), np.float32)
      if out is None:
        out = np.zeros((len(batches.examples), batches.buckets[-1], logits.shape[-1]),
                       np.float32)
      for row, i in enumerate(idx):
        n = min(len(batches.examples[i].ids), bucket)
        out[i, :n] = logits[row, :n]
  return out


def prepare_data(cfg, workdir: pathlib.Path) -> Data:
  """Generates tasks and demonstrations; trains (or loads) the tokenizer."""
  train_tasks = calc.generate_tasks("train", cfg.num_train_tasks, cfg.data_seed,
                                    min_ops=cfg.min_ops, max_ops=cfg.max_ops)
  distill_tasks = calc.generate_tasks("train", cfg.num_distill_tasks, cfg.data_seed + 1000,
                                      min_ops=cfg.min_ops, max_ops=cfg.max_ops)
  eval_tasks = calc.generate_tasks("test", cfg.num_eval_tasks, cfg.data_seed,
                                   min_ops=cfg.min_ops, max_ops=cfg.max_ops)
  corpus = [calc.expert_trajectory(t) for t in train_tasks]
  tok_path = workdir / "tokenizer.json"
  if tok_path.exists():
    tokenizer = Tokenizer.from_file(str(tok_path))
  else:
    tokenizer = lm.train_tokenizer(corpus, cfg.vocab_size)
    write_atomic(tok_path, tokenizer.to_str())
  examples = [lm.encode_trajectory(t, tokenizer)
              for t in tqdm(corpus, desc="tokenize demonstrations", leave=False)]
  kl_texts = [calc.expert_trajectory(t) for t in eval_tasks[:cfg.num_kl_trajectories]]
  kl = tj.batch([lm.encode_trajectory(t, tokenizer) for t in kl_texts],
                seq_len=max(csv_list(cfg.buckets, int)))
  return Data(tokenizer, train_tasks, distill_tasks, eval_tasks,
              eval_tasks[:cfg.num_curve_tasks], examples,
              {"tokens": kl.tokens, "labels": kl.labels, "span_ids": kl.span_ids})


# ------------------------------------------------------------------- models


def model_config(model_cfg, cfg, tokenizer: Tokenizer) -> lm.ModelConfig:
  return lm.ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=model_cfg.d_model,
                        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                        d_ff=model_cfg.d_ff, max_len=cfg.max_len)


def optimizer(run_cfg) -> optax.GradientTransformation:
  return train.make_optimizer(dict(
      name="adamw", learning_rate=run_cfg.learning_rate, warmup_steps=run_cfg.warmup_steps,
      decay_steps=max(run_cfg.steps - run_cfg.warmup_steps, 1), grad_clip_norm=1.0))


def make_ce_step(apply: Callable, tx: optax.GradientTransformation) -> Callable:
  """Hard-label train step (teacher training and SFT), same state/metrics as sad_jax.training._step.

  Loss: the mean cross-entropy over reasoning and action tokens
  (:func:`sad_jax.objective._sad.hard_label_ce`, reduced by
  :func:`sad_jax.objective._sad.reduce_tokens`, ``tokens`` normalization).
  """

  def loss_fn(params, batch):
    logits = apply(params, batch["tokens"])
    weights = jnp.where(spans.span_mask(batch["span_ids"], (SpanType.REASONING,
                                                            SpanType.ACTION)), 1.0, 0.0)
    ce = objective.hard_label_ce(logits, batch["labels"], where=weights > 0)
    loss, sums, counts = objective.reduce_tokens(ce, weights, batch["span_ids"],
                                                 normalization="tokens")
    return loss, {"loss": (sums, counts)}

  @jax.jit
  def step(state: train.TrainState, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        opt_state=opt_state)
    return new, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                 "skipped": jnp.zeros((), bool), "spans": metrics}

  return step


def method_objective(method: str, cfg) -> ml_collections.ConfigDict:
  """The sad_jax objective config of a distillation method (not ``sft``)."""
  if method == "token_kd":
    obj = sad_config.default_config()
    obj.normalization = "tokens"
  elif method == "sad" or method.startswith("sad_"):
    obj = sad_config.load_config(str(ROOT / "configs" / "sad.py") + ":paper")
    if method != "sad":
      strategy = method[len("sad_"):]
      if strategy not in sad_config.WEIGHTING_STRATEGIES:
        raise ValueError(f"unknown method {method!r}; SAD strategies: "
                         f"{', '.join(sad_config.WEIGHTING_STRATEGIES)}")
      obj.weighting = strategy
      obj.curriculum.total_steps = cfg.student.steps
  else:
    raise ValueError(f"unknown method {method!r}; allowed: sft, token_kd, sad, sad_<strategy>")
  obj.span_weights = AGENT_SPANS
  obj.temperature = cfg.student.temperature
  sad_config.validate(obj)
  return obj


# --------------------------------------------------------------- evaluation


def span_kl(student_apply, student_params, teacher_apply, teacher_params,
            batch: dict[str, np.ndarray], chunk: int = 64) -> dict[str, float]:
  """Mean KL(teacher || student) at T=1 per span type over the batch's agent tokens."""
  sums = np.zeros(spans.NUM_SPAN_TYPES)
  counts = np.zeros(spans.NUM_SPAN_TYPES)
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
  kl = divergences.forward_kl(student_apply(student_params, tokens),
                              teacher_apply(teacher_params, tokens))
  return spans.span_sums(kl, span_ids), spans.span_counts(span_ids)


def episode_stats(episodes, tokenizer: Tokenizer) -> dict[str, float]:
  """Success, valid-action rate, mean turns and mean reasoning tokens per episode."""
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
  """Rollout evaluation of one model (its decode step is compiled once)."""

  def __init__(self, graphdef, cfg, data: Data):
    self.graphdef = graphdef
    self.cfg = cfg
    self.data = data
    self.step_fn = lm.make_decode_step(graphdef)

  def rollouts(self, params, tasks, desc: str):
    policy = lm.ModelPolicy(self.graphdef, params, self.data.tokenizer,
                            batch_size=self.cfg.rollout_batch,
                            max_turn_tokens=self.cfg.max_turn_tokens, step_fn=self.step_fn)
    with tqdm(total=len(tasks), desc=desc, leave=False) as bar:
      return lm.evaluate_policy(lambda: policy, tasks, batch_size=self.cfg.rollout_batch,
                                max_turns=self.cfg.max_turns, progress=bar)

  def success(self, params, tasks, desc: str) -> dict[str, float]:
    t0 = time.perf_counter()
    stats = episode_stats(self.rollouts(params, tasks, desc), self.data.tokenizer)
    stats["eval_seconds"] = time.perf_counter() - t0
    return stats


# ----------------------------------------------------------------- training


def run_training(name: str, run_dir: pathlib.Path, state: train.TrainState, step_fn: Callable,
                 batches: Batches, steps: int, cfg, eval_every: int,
                 eval_fn: Callable[[Any], dict]) -> train.TrainState:
  """Trains ``state`` to ``steps``, resuming from ``run_dir/ckpt``; logs to metrics.jsonl.

  A checkpoint (:class:`sad_jax.training.checkpoint.Checkpointer`: the TrainState and the
  data position) is written every ``cfg.checkpoint_every`` steps, at the end, and
  on Ctrl-C / SIGTERM (then the interrupt propagates). Log lines past the
  restored step (written after the last checkpoint of an interrupted run) are
  dropped on resume, so the log always matches the checkpoint.
  """
  run_dir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(run_dir / "ckpt", every_steps=cfg.checkpoint_every, keep=2)
  log_path = run_dir / "metrics.jsonl"
  state, data_state = ckpt.restore_or(state, {"seed": batches.seed, "position": 0})
  if data_state["seed"] != batches.seed:
    raise ValueError(f"{run_dir} was trained with data seed {data_state['seed']}, this run "
                     f"uses {batches.seed}; use another --workdir")
  start = int(state.step)
  if start:
    print(f"{name}: resumed from step {start}", file=sys.stderr)
  write_atomic(log_path, "".join(json.dumps(r) + "\n" for r in read_jsonl(log_path)
                                 if r["step"] <= start))
  try:
    with open(log_path, "a") as log, tqdm(total=steps, initial=start, desc=name) as bar:
      t_last, step_last = time.perf_counter(), start
      for step in range(start, steps):
        state, metrics = step_fn(state, batches.get(step))
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
          record = train.summarize(metrics)
          now = time.perf_counter()
          record.update(kind="train", step=done,
                        seconds_per_step=(now - t_last) / (done - step_last))
          t_last, step_last = now, done
          bar.set_postfix(loss=f"{record['loss']:.3f}")
          log.write(json.dumps(record) + "\n")
          log.flush()
        if done % eval_every == 0 or done == steps:
          t_eval = time.perf_counter()
          record = dict(kind="eval", step=done, **eval_fn(state.params))
          bar.write(f"{name} step {done}: " + ", ".join(
              f"{k}={v:.3f}" for k, v in record.items() if isinstance(v, float)))
          log.write(json.dumps(record) + "\n")
          log.flush()
          t_last += time.perf_counter() - t_eval  # evaluations are not training time
        # Batches are a function of (seed, step): the step is the data position.
        ckpt.save(state, {"seed": batches.seed, "position": done}, force=done == steps)
  except KeyboardInterrupt:
    done = int(state.step)
    if done > start and ckpt.latest_step() != done:
      ckpt.save(state, {"seed": batches.seed, "position": done}, force=True)
    ckpt.wait()
    print(f"\ninterrupted: {name} has a checkpoint at step {ckpt.latest_step() or 0}; rerun "
          "the same command to resume", file=sys.stderr)
    raise
  finally:
    ckpt.close()
  return state


def restore_params(run_dir: pathlib.Path, state: train.TrainState):
  """The params of the latest checkpoint of a finished run."""
  with checkpoint.Checkpointer(run_dir / "ckpt") as ckpt:
    return ckpt.restore(state)[0].params


def train_seconds(run_dir: pathlib.Path) -> float:
  """Training time (evaluations excluded) from the log's per-step timings."""
  records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
  total, prev = 0.0, 0
  for r in records:
    total += r["seconds_per_step"] * (r["step"] - prev)
    prev = r["step"]
  return total


# --------------------------------------------------------------------- phases


def teacher_phase(cfg, workdir: pathlib.Path, data: Data):
  """Trains (or loads) the teacher; returns ``(graphdef, params, result)``."""
  run_dir = workdir / "teacher"
  mcfg = model_config(cfg.teacher.model, cfg, data.tokenizer)
  graphdef, params = lm.create_model(mcfg, cfg.teacher.seed)
  tx = optimizer(cfg.teacher)
  state = train.init_train_state(params, tx, {"seed": cfg.teacher.seed})
  result_path = run_dir / "result.json"
  if result_path.exists():
    return graphdef, restore_params(run_dir, state), json.loads(result_path.read_text())
  apply = lm.make_apply(graphdef)
  evaluator = Evaluator(graphdef, cfg, data)
  batches = Batches(data.teacher_examples, csv_list(cfg.buckets, int), cfg.batch_size,
                    seed=cfg.teacher.seed)
  state = run_training("teacher", run_dir, state, make_ce_step(apply, tx), batches,
                       cfg.teacher.steps, cfg, cfg.teacher.eval_every,
                       lambda p: evaluator.success(p, data.curve_tasks, "teacher curve eval"))
  final = evaluator.success(state.params, data.eval_tasks, "teacher eval")
  result = dict(final, params=lm.count_params(state.params), model=cfg.teacher.model.to_dict(),
                train_steps=cfg.teacher.steps, train_seconds=train_seconds(run_dir))
  if final["success"] < cfg.teacher.min_success:
    logging.warning("teacher success %.3f < %.2f: students will imitate a weak teacher",
                    final["success"], cfg.teacher.min_success)
  write_json(result_path, result)
  return graphdef, state.params, result


def distill_data_phase(cfg, workdir: pathlib.Path, data: Data, graphdef, params):
  """Teacher rollouts on training tasks, tokenized: the successful ones (or all of them)."""
  path = workdir / "distill_data.jsonl"
  if not path.exists():
    episodes = Evaluator(graphdef, cfg, data).rollouts(params, data.distill_tasks,
                                                        "teacher trajectories")
    write_atomic(path, "".join(json.dumps({"text": e.text, "success": e.success}) + "\n"
                               for e in episodes))
  records = read_jsonl(path)
  solved = [r["text"] for r in records if r["success"]]
  kept = [r["text"] for r in records] if cfg.keep_failed_trajectories else solved
  if not kept:
    raise RuntimeError(f"the teacher solved none of the {len(records)} training tasks; "
                       "train it longer (--config.teacher.steps)")
  stats = {"teacher_train_success": len(solved) / len(records), "trajectories": len(kept)}
  return [lm.encode_trajectory(t, data.tokenizer, strict=False) for t in kept], stats


def student_phase(cfg, workdir: pathlib.Path, data: Data, method: str, seed: int,
                  examples, teacher_graphdef, teacher_params,
                  teacher_cache: np.ndarray | None = None) -> dict:
  """Trains and evaluates one student; returns (and stores) its result.

  ``teacher_cache``: :func:`teacher_logits` of ``examples`` (computed here when
  None and the method distills); the distillation methods read the teacher from
  it, an offline teacher equal to the online one.
  """
  run_dir = workdir / "students" / f"{method}-seed{seed}"
  result_path = run_dir / "result.json"
  if result_path.exists():
    return json.loads(result_path.read_text())
  mcfg = model_config(cfg.student.model, cfg, data.tokenizer)
  graphdef, params = lm.create_model(mcfg, seed)
  apply = lm.make_apply(graphdef)
  teacher_apply = lm.make_apply(teacher_graphdef)
  tx = optimizer(cfg.student)
  batches = Batches(examples, csv_list(cfg.buckets, int), cfg.batch_size, seed=1000 + seed)
  if method == "sft":
    state = train.init_train_state(params, tx, {"seed": seed})
    step_fn = make_ce_step(apply, tx)
  else:
    tcfg = train.resolve_config({"objective": method_objective(method, cfg), "seed": seed,
                                 "optimizer": {"learning_rate": cfg.student.learning_rate}})
    state = train.init_train_state(params, tx, tcfg)
    step_fn = jax.jit(train.make_train_step(lambda p, b: apply(p, b["tokens"]), tx, tcfg))
    if teacher_cache is None:
      teacher_cache = teacher_logits(teacher_apply, teacher_params, batches)
    batches.attach_teacher(teacher_cache)
  evaluator = Evaluator(graphdef, cfg, data)

  def curve(p):
    out = evaluator.success(p, data.curve_tasks, f"{method} curve eval")
    kl = span_kl(apply, p, teacher_apply, teacher_params, data.kl_batch)
    out.update({f"kl/{k}": v for k, v in kl.items()})
    return out

  state = run_training(f"{method} seed {seed}", run_dir, state, step_fn, batches,
                       cfg.student.steps, cfg, cfg.student.eval_every, curve)
  final = evaluator.success(state.params, data.eval_tasks, f"{method} eval")
  kl = span_kl(apply, state.params, teacher_apply, teacher_params, data.kl_batch)
  result = dict(final, method=method, seed=seed, params=lm.count_params(state.params),
                train_steps=cfg.student.steps, train_seconds=train_seconds(run_dir),
                **{f"kl/{k}": v for k, v in kl.items()})
  write_json(result_path, result)
  return result


# ------------------------------------------------------------------- report


METRICS = (("success", "success"), ("valid_action_rate", "valid actions"),
           ("steps", "steps"), ("reasoning_tokens", "reasoning tokens"),
           ("kl/reasoning", "KL reasoning"), ("kl/action", "KL action"))


def aggregate(results: list[dict], methods: Sequence[str]) -> dict[str, dict]:
  """Mean and std (over seeds, ddof=0) of every metric, per method."""
  out = {}
  for m in methods:
    rows = [r for r in results if r["method"] == m]
    out[m] = {"seeds": [r["seed"] for r in rows]}
    for key, _ in METRICS + (("train_seconds", ""),):
      vals = np.asarray([r[key] for r in rows], np.float64)
      out[m][key] = {"mean": float(vals.mean()), "std": float(vals.std())}
  return out


def markdown_table(summary: dict) -> str:
  t = summary["teacher"]
  lines = [
      f"Teacher: {t['params']:,} params, held-out success {t['success']:.3f} on "
      f"{t['num_tasks']} tasks ({t['train_seconds']:.0f} s training). Student: "
      f"{summary['student_params']:,} params ({t['params'] / summary['student_params']:.1f}x "
      f"fewer), {summary['student_steps']} steps on {summary['distill_trajectories']} teacher "
      "trajectories.", "",
      "| method | seeds | " + " | ".join(label for _, label in METRICS) + " |",
      "|---|---|" + "---|" * len(METRICS)]
  for m, agg in summary["methods"].items():
    cells = [f"{agg[k]['mean']:.3f} ± {agg[k]['std']:.3f}" for k, _ in METRICS]
    lines.append(f"| {m} | {len(agg['seeds'])} | " + " | ".join(cells) + " |")
  # Success per seed: a seed fixes the initialization and batch order for every
  # method, so differences within a column are paired comparisons.
  success = {(r["method"], r["seed"]): r["success"] for r in summary["runs"]}
  seeds = sorted({r["seed"] for r in summary["runs"]})
  paired = "token_kd" in summary["methods"]
  lines += ["", "| success | " + " | ".join(f"seed {s}" for s in seeds)
            + (" | − token_kd, per seed |" if paired else " |"),
            "|---|" + "---|" * (len(seeds) + paired)]
  for m in summary["methods"]:
    row = [f"{success[(m, s)]:.3f}" if (m, s) in success else "–" for s in seeds]
    if paired:
      row.append(", ".join(f"{success[(m, s)] - success[('token_kd', s)]:+.3f}" for s in seeds
                           if (m, s) in success and ("token_kd", s) in success)
                 if m != "token_kd" else "")
    lines.append(f"| {m} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def plot(workdir: pathlib.Path, methods: Sequence[str], seeds: Sequence[int],
         summary: dict) -> list[str]:
  """Writes loss_per_span.png, success_curves.png and success.png; returns their names."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  logs = {(m, s): read_jsonl(workdir / "students" / f"{m}-seed{s}" / "metrics.jsonl")
          for m in methods for s in seeds}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
  for ax, span in zip(axes, REPORT_SPANS):
    for m in methods:
      recs = [r for r in logs[(m, seeds[0])] if r["kind"] == "train" and f"loss/{span}" in r]
      ax.plot([r["step"] for r in recs], [r[f"loss/{span}"] for r in recs], label=m)
    ax.set(title=f"training loss on {span} tokens (seed {seeds[0]})", xlabel="step",
           ylabel="per-token loss", yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "loss_per_span.png", dpi=110)
  plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods:
    curves = [[r for r in logs[(m, s)] if r["kind"] == "eval"] for s in seeds]
    steps = [r["step"] for r in curves[0]]
    n = min(len(c) for c in curves)
    succ = np.asarray([[r["success"] for r in c[:n]] for c in curves])
    kl = np.asarray([[r["kl/action"] for r in c[:n]] for c in curves])
    axes[0].errorbar(steps[:n], succ.mean(0), yerr=succ.std(0), label=m, capsize=2)
    axes[1].errorbar(steps[:n], kl.mean(0), yerr=kl.std(0), label=m, capsize=2)
  axes[0].set(title="held-out success (curve tasks)", xlabel="step", ylabel="success")
  axes[1].set(title="held-out KL(teacher || student), action tokens", xlabel="step",
              ylabel="KL", yscale="log")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "success_curves.png", dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(methods) + 2), 4))
  means = [summary["methods"][m]["success"]["mean"] for m in methods]
  stds = [summary["methods"][m]["success"]["std"] for m in methods]
  ax.bar(range(len(methods)), means, yerr=stds, capsize=4, color="tab:blue")
  ax.axhline(summary["teacher"]["success"], color="gray", ls="--", label="teacher")
  ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
  ax.set(ylabel="held-out success", ylim=(0, 1),
         title=f"student success, mean ± std over {len(seeds)} seed(s)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "success.png", dpi=110)
  plt.close(fig)
  return ["loss_per_span.png", "success_curves.png", "success.png"]


# --------------------------------------------------------------------- main


def run(cfg, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) every phase; returns the summary."""
  t0, cpu0 = time.perf_counter(), time.process_time()
  workdir.mkdir(parents=True, exist_ok=True)
  methods = csv_list(cfg.methods)
  seeds = csv_list(cfg.seeds, int)
  for m in methods:
    if m != "sft":
      method_objective(m, cfg)  # fail on a bad method before any training
  check_workdir_config(cfg, workdir)
  write_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2, sort_keys=True))
  data = prepare_data(cfg, workdir)
  t_graphdef, t_params, teacher = teacher_phase(cfg, workdir, data)
  examples, distill_stats = distill_data_phase(cfg, workdir, data, t_graphdef, t_params)
  cache = None
  if any(m != "sft" and not (workdir / "students" / f"{m}-seed{s}" / "result.json").exists()
         for m in methods for s in seeds):
    batches = Batches(examples, csv_list(cfg.buckets, int), cfg.batch_size, seed=0)
    cache = teacher_logits(lm.make_apply(t_graphdef), t_params, batches)
  results = [student_phase(cfg, workdir, data, m, s, examples, t_graphdef, t_params, cache)
             for s in seeds for m in methods]
  summary = {
      "teacher": teacher,
      "student_params": results[0]["params"],
      "student_steps": cfg.student.steps,
      "distill_trajectories": distill_stats["trajectories"],
      "teacher_train_success": distill_stats["teacher_train_success"],
      "methods": aggregate(results, methods),
      "runs": results,
      "wall_seconds_this_invocation": time.perf_counter() - t0,
      "cpu_seconds_this_invocation": time.process_time() - cpu0,
  }
  write_atomic(workdir / "summary.md", markdown_table(summary))
  summary["plots"] = plot(workdir, methods, seeds, summary)
  write_json(workdir / "summary.json", summary)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  signal.signal(signal.SIGTERM, _raise_interrupt)
  workdir = pathlib.Path(_WORKDIR.value)
  summary = run(_CONFIG.value, workdir)
  print((workdir / "summary.md").read_text())
  print(f"this invocation: {summary['wall_seconds_this_invocation']:.0f} s wall, "
        f"{summary['cpu_seconds_this_invocation']:.0f} s CPU; results in {workdir}")


if __name__ == "__main__":
  app.run(main)
