"""Training of the agent distillation example: every method through one train step.

* :func:`method_loss` / :func:`make_method_step`: a method name (``sft``,
  ``token_kd``, ``sad``, ``sad_<strategy>``; the teacher trains with ``sft`` on
  the expert's demonstrations) -> its loss object, initial state and jitted
  train step: one :func:`sad_jax.training.make_train_step` for all of them.
* The on-policy methods (:data:`ON_POLICY_METHODS`, :func:`on_policy_config`):
  :class:`sad_jax.training.OnPolicy` (the same train step with an online
  teacher) on the student's own sampled episodes
  (:mod:`examples.agent_on_policy`), from an off-policy init run
  (:func:`on_policy_init`).
* :func:`run_training`: the loop: resumable (orbax checkpoints of the train
  state and the data position), logged to ``metrics.jsonl``, with periodic
  evaluations; Ctrl-C / SIGTERM save a checkpoint first.
* :func:`train_teacher` / :func:`train_student`: one run each, from model
  creation to its ``result.json`` (skipped when that file exists).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from configs.agent_distill import ON_POLICY_METHODS
from examples import agent_data
from examples import agent_evaluate as evaluate
from examples import agent_io
from examples import agent_on_policy
from examples import agent_lm as lm
from sad_jax import objective
from sad_jax import training
from sad_jax.training import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
AGENT_SPANS = ml_collections.ConfigDict(dict(
    prompt=0.0, reasoning=1.0, action=1.0, observation=0.0, other=0.0))


def model(model_cfg, cfg, tokenizer, seed: int):
  """``(graphdef, params)`` of a new :class:`examples.agent_lm.Transformer`: shape and
  position encoding from ``model_cfg`` (``d_model``, ``num_layers``, ``num_heads``,
  ``d_ff``, ``positions``), vocabulary from the tokenizer, ``cfg.max_len`` positions."""
  mcfg = lm.ModelConfig(vocab_size=tokenizer.get_vocab_size(), d_model=model_cfg.d_model,
                        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                        d_ff=model_cfg.d_ff, max_len=cfg.max_len,
                        positions=model_cfg.positions)
  return lm.create_model(mcfg, seed)


def optimizer(run_cfg) -> optax.GradientTransformation:
  """AdamW with linear warmup over ``warmup_steps`` and cosine decay to ``steps``, global
  gradient norm clipped at 1 (:func:`sad_jax.training.make_optimizer`)."""
  return training.make_optimizer(dict(
      name="adamw", learning_rate=run_cfg.learning_rate, warmup_steps=run_cfg.warmup_steps,
      decay_steps=max(run_cfg.steps - run_cfg.warmup_steps, 1), grad_clip_norm=1.0))


def method_loss(method: str, cfg) -> training.Loss:
  """The loss object of a method (:mod:`sad_jax.training`'s ready losses).

  ``sft``: cross-entropy on the reasoning and action tokens
  (:func:`sad_jax.training.cross_entropy_loss`, ``tokens`` normalization).
  ``token_kd``: forward KL(teacher || student), one uniform weight over the
  reasoning and action tokens (:func:`sad_jax.training.token_kd_loss`).
  ``sad``: ``configs/sad.py:paper`` (:class:`sad_jax.training.SADLoss`).
  ``sad_<strategy>``: the paper objective with weighting ``<strategy>``. The
  distillation methods use the temperature ``cfg.student.temperature``.
  The on-policy methods (:data:`ON_POLICY_METHODS`):
  :class:`sad_jax.training.OnPolicyLoss` of :func:`on_policy_config`.

  Raises:
    ValueError: an unknown method or strategy, naming the allowed ones.
  """
  if method == "sft":
    return training.cross_entropy_loss(span_weights=AGENT_SPANS)
  if method == "token_kd":
    return training.token_kd_loss(temperature=cfg.student.temperature, span_weights=AGENT_SPANS)
  if method in ON_POLICY_METHODS:
    return training.OnPolicyLoss(on_policy_config(method, cfg, seed=0))
  if method != "sad" and not method.startswith("sad_"):
    raise ValueError(f"unknown method {method!r}; allowed: sft, token_kd, sad, sad_<strategy>, "
                     f"{', '.join(ON_POLICY_METHODS)}")
  return training.SADLoss(_sad_objective(method, cfg))


def _sad_objective(method: str, cfg):
  """The objective of ``sad`` / ``sad_<strategy>``: ``configs/sad.py:paper`` on the agent
  spans at ``cfg.student.temperature``."""
  obj = objective.load_config(str(ROOT / "configs" / "sad.py") + ":paper")
  if method != "sad":
    strategy = method[len("sad_"):]
    if strategy not in objective.STRATEGIES:
      raise ValueError(f"unknown method {method!r}; SAD strategies: "
                       f"{', '.join(objective.STRATEGIES)}")
    obj.weighting = strategy
    obj.curriculum.total_steps = cfg.student.steps
  obj.span_weights = AGENT_SPANS
  obj.temperature = cfg.student.temperature
  return obj


def on_policy_config(method: str, cfg, seed: int) -> dict:
  """The :class:`sad_jax.training.OnPolicy` config of an on-policy method (overrides).

  ``on_policy_kd``: token-level (``uniform`` weighting, ``tokens`` normalization,
  as ``token_kd``); ``on_policy_sad``: the SAD ``paper`` objective (a mean per
  span); ``on_policy_sad_turns``: ``on_policy_sad`` with the turn rule
  ``cfg.on_policy.turns``. All on the agent spans at ``cfg.student.temperature``
  with the divergence ``cfg.on_policy.divergence``, GKD's ``mixture``, the
  ``sampling_temperature`` and ``teacher_top_k`` of ``cfg.on_policy``; ``seed``
  seeds the per-step source draw.

  Raises:
    ValueError: an unknown method, or ``init_steps`` / ``init_method`` out of range.
  """
  op = cfg.on_policy
  if method not in ON_POLICY_METHODS:
    raise ValueError(f"{method!r} is not an on-policy method: {', '.join(ON_POLICY_METHODS)}")
  if not 0 <= op.init_steps < cfg.student.steps:
    raise ValueError(f"config.on_policy.init_steps = {op.init_steps} must be in "
                     f"[0, student.steps = {cfg.student.steps})")
  if op.init_method in ON_POLICY_METHODS:
    raise ValueError(f"config.on_policy.init_method = {op.init_method!r} must be an "
                     "off-policy method (e.g. token_kd)")
  if method == "on_policy_kd":
    obj = dict(weighting="uniform", normalization="tokens")
  else:
    obj = _sad_objective("sad", cfg).to_dict()
  obj.update(divergence=op.divergence, temperature=cfg.student.temperature,
             span_weights=AGENT_SPANS.to_dict())
  turns = op.turns.to_dict() if method == "on_policy_sad_turns" else {"rule": "none"}
  return dict(mixture=op.mixture, seed=seed, sampling_temperature=op.sampling_temperature,
              teacher_top_k=op.teacher_top_k, turns=turns, objective=obj)


def make_method_step(method: str, cfg, apply: Callable, params, tx: optax.GradientTransformation,
                     seed: int) -> tuple[training.TrainState, Callable]:
  """``(initial train state, jitted step(state, batch) -> (state, metrics))`` of a method.

  Every method, and the teacher (``sft``), trains through the same
  :func:`sad_jax.training.make_train_step` (non-finite guard included); only the
  loss object differs. The distillation methods read the teacher from
  ``batch["teacher"]`` (an offline teacher,
  :meth:`examples.agent_data.Batches.attach_teacher`).
  """
  loss = method_loss(method, cfg)
  state = training.init_train_state(params, tx, loss, config={"seed": seed})
  step = training.make_train_step(loss, tx, apply_fn=lambda p, b: apply(p, b["tokens"]))
  return state, jax.jit(step)


def run_training(name: str, run_dir: pathlib.Path, state: training.TrainState, step_fn: Callable,
                 batches, steps: int, cfg, eval_every: int,
                 eval_fn: Callable[[Any], dict]) -> training.TrainState:
  """Trains ``state`` to ``steps``, resuming from ``run_dir/ckpt``; logs to metrics.jsonl.

  ``batches`` is a batch source: ``seed`` and ``get(step)``, a function of
  ``(seed, step)`` (:class:`examples.agent_data.Batches`); a source may also have
  ``prepare(step, params)``, called before ``get(step)`` with the current params,
  and ``log_fields()``, merged into each ``train`` record
  (:class:`examples.agent_on_policy.OnPolicyBatches` refreshes its pool there and
  logs it).

  A checkpoint (:class:`sad_jax.training.checkpoint.Checkpointer`: the TrainState and the
  data position) is written every ``cfg.checkpoint_every`` steps, at the end, and
  on Ctrl-C / SIGTERM (then the interrupt propagates). Log lines past the
  restored step (written after the last checkpoint of an interrupted run) are
  dropped on resume, so the log always matches the checkpoint. Every
  ``cfg.log_every`` steps a ``train`` record (:func:`sad_jax.training.summarize`
  plus ``seconds_per_step``: evaluations excluded, the source's ``prepare``
  included, so an on-policy run's rollouts count as training time), every ``eval_every`` steps an
  ``eval`` record (``eval_fn(params)``).
  """
  run_dir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(run_dir / "ckpt", every_steps=cfg.checkpoint_every, keep=2)
  log_path = run_dir / "metrics.jsonl"
  first = int(state.step)
  state, data_state = ckpt.restore_or(state, {"seed": batches.seed, "position": first})
  if data_state["seed"] != batches.seed:
    raise ValueError(f"{run_dir} was trained with data seed {data_state['seed']}, this run "
                     f"uses {batches.seed}; use another --workdir")
  start = int(state.step)
  if start != first:
    print(f"{name}: resumed from step {start}", file=sys.stderr)
  agent_io.write_atomic(log_path, "".join(json.dumps(r) + "\n"
                                          for r in agent_io.read_jsonl(log_path)
                                          if r["step"] <= start))
  prepare = getattr(batches, "prepare", lambda step, params: None)
  log_fields = getattr(batches, "log_fields", dict)
  try:
    with open(log_path, "a") as log, tqdm(total=steps, initial=start, desc=name) as bar:
      t_last, step_last = time.perf_counter(), start
      for step in range(start, steps):
        prepare(step, state.params)
        state, metrics = step_fn(state, batches.get(step))
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == steps:
          record = dict(training.summarize(metrics), **log_fields())
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


def restore_params(run_dir: pathlib.Path, state: training.TrainState):
  """The params of the latest checkpoint of a finished run."""
  with checkpoint.Checkpointer(run_dir / "ckpt") as ckpt:
    return ckpt.restore(state)[0].params


def train_seconds(run_dir: pathlib.Path, start: int = 0) -> float:
  """Training time (evaluations excluded) from the log's per-step timings of a run that
  started at step ``start``."""
  records = [r for r in agent_io.read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
  total, prev = 0.0, start
  for r in records:
    total += r["seconds_per_step"] * (r["step"] - prev)
    prev = r["step"]
  return total


def train_teacher(cfg, workdir: pathlib.Path, data: agent_data.Data):
  """Trains (or loads) the teacher; returns ``(graphdef, params, result)``.

  SFT on the expert's demonstrations; evaluated by rollouts on the held-out
  tasks. Done once per workdir, under a lock (a second process waits for it).
  """
  run_dir = workdir / "teacher"
  graphdef, params = model(cfg.teacher.model, cfg, data.tokenizer, cfg.teacher.seed)
  tx = optimizer(cfg.teacher)
  state, step_fn = make_method_step("sft", cfg, lm.make_apply(graphdef), params, tx,
                                    cfg.teacher.seed)
  result_path = run_dir / "result.json"
  with agent_io.locked(workdir / ".teacher.lock"):
    if result_path.exists():
      return graphdef, restore_params(run_dir, state), json.loads(result_path.read_text())
    evaluator = evaluate.Evaluator(graphdef, cfg, data)
    batches = agent_data.Batches(data.teacher_examples, agent_io.csv_list(cfg.buckets, int),
                                 cfg.batch_size, seed=cfg.teacher.seed)
    state = run_training("teacher", run_dir, state, step_fn, batches, cfg.teacher.steps, cfg,
                         cfg.teacher.eval_every,
                         lambda p: evaluator.success(p, data.curve_tasks, "teacher curve eval"))
    final = evaluator.success(state.params, data.eval_tasks, "teacher eval")
    result = dict(final, params=lm.count_params(state.params),
                  model=cfg.teacher.model.to_dict(), train_steps=cfg.teacher.steps,
                  train_seconds=train_seconds(run_dir))
    if final["success"] < cfg.teacher.min_success:
      logging.warning("teacher success %.3f < %.2f: students will imitate a weak teacher",
                      final["success"], cfg.teacher.min_success)
    agent_io.write_json(result_path, result)
  return graphdef, state.params, result


def _off_policy_run(method: str, cfg, apply, params, tx, seed: int, examples, teacher_apply,
                    teacher_params, teacher_cache):
  """``(state, step_fn, batches)`` of an off-policy method: the students' batches of
  ``seed`` (seed ``1000 + seed``), the offline teacher attached when it distills."""
  batches = agent_data.Batches(examples, agent_io.csv_list(cfg.buckets, int),
                               cfg.batch_size, seed=1000 + seed)
  state, step_fn = make_method_step(method, cfg, apply, params, tx, seed)
  if method != "sft":
    if teacher_cache is None:
      teacher_cache = agent_data.teacher_logits(teacher_apply, teacher_params, batches)
    batches.attach_teacher(teacher_cache)
  return state, step_fn, batches


def on_policy_init(cfg, workdir: pathlib.Path, seed: int, apply, params, tx, examples,
                   teacher_apply, teacher_params, teacher_cache, eval_fn) -> training.TrainState:
  """The train state every on-policy method of ``seed`` starts from.

  ``cfg.on_policy.init_method`` (an off-policy method) trains the student for
  ``cfg.on_policy.init_steps`` steps exactly as that method's own run starts
  (same initialization, batches and optimizer: the student's schedule over
  ``student.steps``), once per seed in ``WORKDIR/on_policy_init/METHOD-seedS/``
  (resumable like every run, under a lock; ``eval_fn`` evaluates its end). With
  ``init_steps = 0`` it is the freshly initialized state.
  """
  op = cfg.on_policy
  state, step_fn, batches = _off_policy_run(op.init_method, cfg, apply, params, tx, seed,
                                            examples, teacher_apply, teacher_params,
                                            None if op.init_steps == 0 else teacher_cache)
  if op.init_steps == 0:
    return state
  run_dir = workdir / "on_policy_init" / f"{op.init_method}-seed{seed}"
  with agent_io.locked(run_dir.with_name(run_dir.name + ".lock")):
    return run_training(f"on-policy init ({op.init_method}) seed {seed}", run_dir, state,
                        step_fn, batches, op.init_steps, cfg, op.init_steps, eval_fn)


def _on_policy_run(method: str, cfg, workdir, data, seed: int, run_dir, apply, params, tx,
                   examples, evaluator, teacher_apply, teacher_params, teacher_cache, eval_fn):
  """``(state, step_fn, batches)`` of an on-policy method (:class:`sad_jax.training.OnPolicy`):
  from :func:`on_policy_init`'s state (the loss state new), the online teacher in the step,
  batches of :class:`examples.agent_on_policy.OnPolicyBatches`."""
  op = cfg.on_policy
  recipe = training.OnPolicy(on_policy_config(method, cfg, seed), optimizer=tx,
                             apply_fn=lambda p, b: apply(p, b["tokens"]),
                             teacher_apply=lambda tp, b: teacher_apply(tp, b["tokens"]))
  start = on_policy_init(cfg, workdir, seed, apply, params, tx, examples, teacher_apply,
                         teacher_params, teacher_cache, eval_fn)
  state = start.replace(sad_state=recipe.loss.init_state())
  step = jax.jit(recipe.step)
  options = agent_data.env_options(cfg, data.env)

  def sample(p, refresh: int):
    task_seed = int(np.random.default_rng([cfg.data_seed, seed, refresh]).integers(2**31))
    tasks = data.env.generate_tasks("train", op.pool_size, task_seed, **options)
    key = jax.random.fold_in(jax.random.key(seed), refresh)
    return agent_on_policy.sample_pool(evaluator, p, tasks, key, op.sampling_temperature,
                                       f"{method} seed {seed} rollouts {refresh}")

  forward = jax.jit(teacher_apply)

  def teacher_seconds(batch) -> float:
    tokens = jnp.asarray(batch["tokens"])
    jax.block_until_ready(forward(teacher_params, tokens))  # compiled outside the timing
    t0 = time.perf_counter()
    jax.block_until_ready(forward(teacher_params, tokens))
    return time.perf_counter() - t0

  buckets = agent_io.csv_list(cfg.buckets, int)
  fixed = agent_data.Batches(examples, buckets, cfg.batch_size, seed=1000 + seed)
  batches = agent_on_policy.OnPolicyBatches(
      recipe.config, fixed, sample, run_dir / "pools", data.tokenizer, start=op.init_steps,
      rollout_every=op.rollout_every, seq_lens=buckets + [cfg.max_len],
      teacher_seconds=teacher_seconds)
  return state, lambda s, b: step(s, b, teacher_params), batches


def train_student(cfg, workdir: pathlib.Path, data: agent_data.Data, method: str, seed: int,
                  examples, teacher_graphdef, teacher_params,
                  teacher_cache: np.ndarray | None = None) -> dict | None:
  """Trains and evaluates one student run; returns (and stores) its result.

  Learning curves: success on ``data.curve_tasks`` and per-span KL on
  ``data.kl_batch`` (held-out expert trajectories: ``kl/``) and on the first
  ``num_kl_trajectories`` of ``examples`` (the run's own data: ``kl_train/``; a gap
  between the two is memorization) every ``cfg.student.eval_every`` steps; at the
  end, a rollout evaluation on ``data.eval_tasks``. The result is ``run_dir/result.json``, written
  atomically by this process alone: a run that another process is training
  (its lock is held) is skipped, and None is returned. An on-policy method trains
  from step ``cfg.on_policy.init_steps`` (:func:`on_policy_init`) to
  ``student.steps``, so every student has the same number of steps; its
  ``train_seconds`` include the init phase and the rollouts.

  ``teacher_cache``: :func:`examples.agent_data.teacher_logits` of ``examples``
  (computed here when None and an off-policy phase distills).
  """
  run_dir = agent_io.run_dir(workdir, method, seed)
  result_path = run_dir / "result.json"
  if result_path.exists():
    return json.loads(result_path.read_text())
  with agent_io.try_locked(run_dir.with_name(run_dir.name + ".lock")) as mine:
    if not mine:
      print(f"{method} seed {seed} is being trained by another process; skipped",
            file=sys.stderr)
      return None
    if result_path.exists():  # finished by another process since the check above
      return json.loads(result_path.read_text())
    graphdef, params = model(cfg.student.model, cfg, data.tokenizer, seed)
    apply = lm.make_apply(graphdef)
    teacher_apply = lm.make_apply(teacher_graphdef)
    tx = optimizer(cfg.student)
    evaluator = evaluate.Evaluator(graphdef, cfg, data)

    seen = agent_data.kl_batch(cfg, examples)  # the train-side counterpart of data.kl_batch

    def kls(p):
      """KL on held-out expert trajectories (``kl/``) and on the run's own data (``kl_train/``)."""
      out = {}
      for prefix, batch in (("kl", data.kl_batch), ("kl_train", seen)):
        kl = evaluate.span_kl(apply, p, teacher_apply, teacher_params, batch)
        out.update({f"{prefix}/{k}": v for k, v in kl.items()})
      return out

    def curve(p):
      return dict(evaluator.success(p, data.curve_tasks, f"{method} curve eval"), **kls(p))

    extra = {}
    if method in ON_POLICY_METHODS:
      state, step_fn, batches = _on_policy_run(
          method, cfg, workdir, data, seed, run_dir, apply, params, tx, examples, evaluator,
          teacher_apply, teacher_params, teacher_cache, curve)
      op = cfg.on_policy
      init_dir = workdir / "on_policy_init" / f"{op.init_method}-seed{seed}"
      extra = dict(init_method=op.init_method, init_steps=op.init_steps,
                   init_train_seconds=train_seconds(init_dir))
    else:
      state, step_fn, batches = _off_policy_run(method, cfg, apply, params, tx, seed, examples,
                                                teacher_apply, teacher_params, teacher_cache)
    state = run_training(f"{method} seed {seed}", run_dir, state, step_fn, batches,
                         cfg.student.steps, cfg, cfg.student.eval_every, curve)
    if method in ON_POLICY_METHODS:  # every pool of the run, resumed or not
      pools = [agent_on_policy.load_pool(p, data.tokenizer)
               for p in sorted((run_dir / "pools").glob("pool-*.npz"))]
      extra.update(pools=len(pools), rollout_seconds=sum(p.rollout_seconds for p in pools),
                   on_policy_success=float(np.mean([p.success.mean() for p in pools]))
                   if pools else 0.0)
    final = evaluator.success(state.params, data.eval_tasks, f"{method} eval")
    seconds = train_seconds(run_dir, start=extra.get("init_steps", 0))
    result = dict(final, method=method, seed=seed, params=lm.count_params(state.params),
                  train_steps=cfg.student.steps,
                  train_seconds=seconds + extra.get("init_train_seconds", 0.0),
                  **kls(state.params), **extra)
    agent_io.write_json(result_path, result)
  return result
