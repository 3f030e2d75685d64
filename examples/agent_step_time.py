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

import jax  # noqa: E402
import numpy as np  # noqa: E402

import examples.agent_env as agent_env  # noqa: E402
from configs import agent_distill  # noqa: E402
from examples import agent_data, agent_io, agent_train  # noqa: E402
from examples import agent_lm as lm  # noqa: E402


def _timed(fn) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def measure(methods, *, preset: str = "default", num_examples: int = 256, steps: int = 60,
            buckets: str | None = None, seed: int = 0) -> dict:
  """``{"loop": {...}, "device": {...}}``, each ``{"median_seconds": {method: s},
  "ratio_to_sft": {method: r}}``, plus the shapes measured. ``buckets``: padded lengths
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

  runs = {}
  for method in methods:
    batches = agent_data.Batches(examples, buckets, cfg.batch_size, seed=seed)
    if method != "sft":
      batches.attach_teacher(teacher)
    state, step = agent_train.make_method_step(method, cfg, apply, params, tx, seed)
    for b in sorted(batches.members):  # compile every bucket before timing
      i = next(s for s in range(10_000) if batches.get(s)["tokens"].shape[1] == b)
      state, metrics = step(state, batches.get(i))
    jax.block_until_ready(metrics)
    fixed = jax.device_put(batches.get(0))
    runs[method] = {"state": state, "step": step, "batches": batches, "fixed": fixed,
                    "loop": [], "device": []}

  def one(run, batch):
    run["state"], metrics = run["step"](run["state"], batch)
    return metrics

  for i in range(steps):
    for run in runs.values():
      run["loop"].append(_timed(lambda: one(run, run["batches"].get(i))))
      run["device"].append(_timed(lambda: one(run, run["fixed"])))
  out = {"preset": preset, "backend": jax.default_backend(), "batch_size": cfg.batch_size,
         "buckets": buckets, "vocab": vocab, "examples": len(examples), "steps": steps}
  for kind in ("loop", "device"):
    median = {m: float(np.median(r[kind])) for m, r in runs.items()}
    out[kind] = {"median_seconds": median}
    if "sft" in median:
      out[kind]["ratio_to_sft"] = {m: v / median["sft"] for m, v in median.items()}
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
