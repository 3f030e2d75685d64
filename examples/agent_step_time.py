r"""Median train-step time of each method of the agent example, measured in one process.

.. code-block:: bash

  python examples/agent_step_time.py --preset=default --steps=60 --buckets=176

Every method's step (:func:`examples.agent_train.make_method_step`: the one
library train step with the method's loss) trains the same student
(``config.student.model`` of the preset) on the same data: the expert's
calculator trajectories (``--examples`` of them, tokenized with a tokenizer
trained on them) in the preset's length buckets and batch size, with an offline
teacher (random logits, the shape the real run attaches). Two timings per step:

* ``loop``: what :func:`examples.agent_train.run_training` does per step --
  :meth:`examples.agent_data.Batches.get` (the teacher-logit gather for the
  distillation methods), the transfer, the step;
* ``device``: the step alone on one batch already on the device.

After a warmup that compiles every bucket, the methods take turns, one step each
per round, so that a change in the machine's load hits all of them alike. The
output (JSON on stdout) is each method's median step time and its ratio to SFT's.

On-policy methods (``--methods=...,on_policy_sad``) are timed the same way, on
batches of a pool of episodes (:class:`examples.agent_on_policy.OnPolicyBatches`,
cut to the largest bucket like the fixed data) with the online teacher in the
step (the preset's teacher shape); their ``loop`` step includes drawing the
batch from the pool. The pool comes from one measured rollout of
``on_policy.pool_size`` tasks by the batched KV-cache policy at the sampling
temperature, whose emitted ids are replaced by the expert's (the decode step
runs and samples as in training, but an untrained student's episodes would end
at its first turn: forced, the episodes have a trained student's lengths and
turns). ``on_policy`` in the output: that rollout's seconds, its share per step
(``rollout_seconds / on_policy.rollout_every``), the median of one teacher
forward on a batch, and each on-policy method's ``loop`` step plus that share,
against token-level KD's ``loop`` step.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import examples.agent_env as agent_env  # noqa: E402
from configs import agent_distill  # noqa: E402
from examples import agent_data, agent_io, agent_on_policy  # noqa: E402
from examples import agent_lm as lm  # noqa: E402
from examples import agent_train  # noqa: E402
from sad_jax import training  # noqa: E402


def _timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def _expert_pool(cfg, env, graphdef, params, tokenizer, seed: int) -> agent_on_policy.Pool:
  """One rollout of ``on_policy.pool_size`` training tasks by the sampling policy, the
  emitted ids replaced by the expert's (see the module docstring)."""
  tasks = env.generate_tasks("train", cfg.on_policy.pool_size, seed + 1, **cfg.env_options)
  expert = [lm.encode_trajectory(env.expert_trajectory(t), tokenizer).ids for t in tasks]
  sample = lm.make_decode_step(graphdef, cfg.on_policy.sampling_temperature)
  chunk = {"start": 0}

  def forced(p, cache, tokens, pos, key, count):
    ids, cache = sample(p, cache, tokens, pos, key, count)
    np.asarray(ids)  # the sample is computed (and waited for) as in training
    rows = expert[chunk["start"]:chunk["start"] + cfg.rollout_batch]
    return np.asarray([r[min(q + 1, len(r) - 1)] if b < len(rows) else 0
                       for b, (r, q) in enumerate(zip(rows + [[0]] * len(pos), pos))]), cache

  policy = lm.ModelPolicy(graphdef, params, tokenizer, batch_size=cfg.rollout_batch,
                          max_turn_tokens=cfg.max_turn_tokens, step_fn=forced,
                          temperature=cfg.on_policy.sampling_temperature,
                          key=jax.random.key(seed))
  agent_env.rollout(policy, tasks[:1], env=env, max_turns=cfg.max_turns)  # compiles the step
  policy.rollouts.clear()
  t0 = time.perf_counter()
  successes = []
  for start in range(0, len(tasks), cfg.rollout_batch):
    chunk["start"] = start
    successes += [e.success for e in agent_env.rollout(
        policy, tasks[start:start + cfg.rollout_batch], env=env, max_turns=cfg.max_turns)]
  seconds = time.perf_counter() - t0
  return agent_on_policy.Pool(policy.rollouts, np.asarray(successes), seconds,
                              [r.example(tokenizer) for r in policy.rollouts])


def measure(methods, *, preset: str = "default", num_examples: int = 256, steps: int = 60,
            buckets: str | None = None, seed: int = 0) -> dict:
  """``{"loop": {...}, "device": {...}}``, each ``{"median_seconds": {method: s},
  "ratio_to_sft": {method: r}}``, plus the shapes measured (and ``on_policy``, see the
  module docstring, when an on-policy method is measured). ``buckets``: padded lengths
  (``"176"``: one compilation per method), default the preset's."""
  cfg = agent_distill.get_config(preset)
  if buckets:
    cfg.buckets = buckets
  env = agent_env.get(cfg.env)
  tasks = env.generate_tasks("train", num_examples, seed, **cfg.env_options)
  texts = [env.expert_trajectory(t) for t in tasks]
  tokenizer = lm.train_tokenizer(texts, cfg.vocab_size)
  examples = [lm.encode_trajectory(t, tokenizer) for t in texts]
  buckets = agent_io.csv_list(cfg.buckets, int)
  vocab = tokenizer.get_vocab_size()
  graphdef, params = agent_train.model(cfg.student.model, cfg, tokenizer, seed)
  apply = lm.make_apply(graphdef)
  tx = agent_train.optimizer(cfg.student)
  rng = np.random.default_rng(seed)
  teacher = rng.normal(size=(len(examples), max(buckets), vocab)).astype(np.float32)
  for i, ex in enumerate(examples):
    teacher[i, len(ex.ids):] = 0.0

  on_policy = [m for m in methods if m in agent_train.ON_POLICY_METHODS]
  if on_policy:
    t_graphdef, t_params = agent_train.model(cfg.teacher.model, cfg, tokenizer, seed + 1)
    t_apply = lm.make_apply(t_graphdef)
    pool = _expert_pool(cfg, env, graphdef, params, tokenizer, seed)
    pool_dir = pathlib.Path(tempfile.mkdtemp())

  runs = {}
  for method in methods:
    fixed_data = agent_data.Batches(examples, buckets, cfg.batch_size, seed=seed)
    if method in on_policy:
      recipe = training.OnPolicy(dict(agent_train.on_policy_config(method, cfg, seed),
                                      mixture=1.0),
                                 optimizer=tx, apply_fn=lambda p, b: apply(p, b["tokens"]),
                                 teacher_apply=lambda tp, b: t_apply(tp, b["tokens"]))
      state = training.init_train_state(params, tx, recipe.loss)
      step = lambda s, b, jitted=jax.jit(recipe.step): jitted(s, b, t_params)
      batches = agent_on_policy.OnPolicyBatches(
          {"mixture": 1.0}, fixed_data, lambda p, r: pool, pool_dir / method, tokenizer,
          start=0, rollout_every=10**9, seq_lens=buckets)  # one pool for the whole timing
      batches.prepare(0, params)
    else:
      batches = fixed_data
      if method != "sft":
        batches.attach_teacher(teacher)
      state, step = agent_train.make_method_step(method, cfg, apply, params, tx, seed)
    first = {}
    for i in range(steps):  # compile every shape the timed steps see, before timing
      first.setdefault(batches.get(i)["tokens"].shape[1], i)
    for i in first.values():
      state, metrics = step(state, batches.get(i))
    jax.block_until_ready(metrics)
    fixed = jax.device_put(batches.get(0))
    runs[method] = {"state": state, "step": step, "batches": batches, "fixed": fixed,
                    "loop": [], "device": []}

  def one(run, batch):
    run["state"], metrics = run["step"](run["state"], batch)
    return metrics

  teacher_forward = []
  if on_policy:
    forward = jax.jit(t_apply)
    tokens = runs[on_policy[0]]["fixed"]["tokens"]
    jax.block_until_ready(forward(t_params, tokens))
  for i in range(steps):
    for run in runs.values():
      run["loop"].append(_timed(lambda: one(run, run["batches"].get(i))))
      run["device"].append(_timed(lambda: one(run, run["fixed"])))
    if on_policy:
      teacher_forward.append(_timed(lambda: forward(t_params, tokens)))
  out = {"preset": preset, "backend": jax.default_backend(), "batch_size": cfg.batch_size,
         "buckets": buckets, "vocab": vocab, "examples": len(examples), "steps": steps}
  for kind in ("loop", "device"):
    median = {m: float(np.median(r[kind])) for m, r in runs.items()}
    out[kind] = {"median_seconds": median}
    if "sft" in median:
      out[kind]["ratio_to_sft"] = {m: v / median["sft"] for m, v in median.items()}
  if on_policy:
    share = pool.rollout_seconds / cfg.on_policy.rollout_every
    loop = out["loop"]["median_seconds"]
    total = {m: loop[m] + share for m in on_policy}
    out["on_policy"] = {
        "pool_size": len(pool.examples), "rollout_every": cfg.on_policy.rollout_every,
        "rollout_seconds": pool.rollout_seconds, "rollout_seconds_per_step": share,
        "episode_tokens": float(np.mean([len(e.ids) for e in pool.examples])),
        "pool_success": float(pool.success.mean()),
        "teacher_forward_median_seconds": float(np.median(teacher_forward)),
        "loop_plus_rollout_seconds": total}
    if "token_kd" in loop:
      out["on_policy"]["ratio_to_token_kd_loop"] = {m: v / loop["token_kd"]
                                                    for m, v in total.items()}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="default", choices=agent_distill.PRESETS)
  p.add_argument("--methods", default="sft,token_kd,sad")
  p.add_argument("--examples", type=int, default=256, help="training trajectories")
  p.add_argument("--steps", type=int, default=60, help="timed steps per method and kind")
  p.add_argument("--buckets", default=None, help="padded lengths, default the preset's")
  args = p.parse_args(argv)
  print(json.dumps(measure(agent_io.csv_list(args.methods), preset=args.preset,
                           num_examples=args.examples, steps=args.steps,
                           buckets=args.buckets), indent=2))


if __name__ == "__main__":
  main()
