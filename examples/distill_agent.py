r"""End-to-end agent distillation: environment -> teacher -> students -> rollouts -> report.

.. code-block:: bash

  python examples/distill_agent.py --config=configs/agent_distill.py --workdir=/tmp/agent
  python examples/distill_agent.py --config=configs/agent_distill.py:smoke --workdir=/tmp/s
  python examples/distill_agent.py --config=configs/agent_distill.py:study --workdir=/tmp/st \
      --config.methods=sft,token_kd,sad --config.seeds=0,1,2

Phases (each is skipped when the workdir already holds its result, and resumes
from its latest orbax checkpoint when it was interrupted; Ctrl-C / SIGTERM save
a checkpoint first, a hard kill loses at most ``checkpoint_every`` steps):

1. **Data** (:mod:`examples.agent_data`): the tasks of the environment
   ``config.env`` (:mod:`examples.agent_env`), expert ChatML demonstrations, a
   byte-level BPE tokenizer (``tokenizer.json``).
2. **Teacher** (:mod:`examples.agent_train`): a transformer
   (:mod:`examples.agent_lm`) trained with cross-entropy on the reasoning and
   action tokens of the demonstrations; evaluated by rollouts on held-out tasks
   (:mod:`examples.agent_evaluate`; ``teacher/``).
3. **Teacher trajectories**: greedy teacher rollouts on training tasks; the
   successful ones are the students' data (``distill_data.jsonl``).
4. **Students**: one run per (method, seed) in ``students/METHOD-seedS/``: SFT,
   token-level KD, SAD and the SAD weighting strategies, every one through the
   same train step, the distillation methods from the teacher's logits computed
   once over the students' data (an offline teacher). Learning curves every
   ``eval_every`` steps; at the end a rollout evaluation on ``num_eval_tasks``
   held-out tasks, stored in the run's ``result.json``. The on-policy methods
   (``on_policy_*``, :mod:`examples.agent_on_policy`) start from an off-policy
   init run of the seed (``on_policy_init/``) and train on the student's own
   sampled episodes, scored by the online teacher.
5. **Report** (:mod:`examples.agent_report`): ``summary.json``, ``summary.md``
   and PNG plots over every run the workdir holds.

A study can be split across processes sharing one workdir (e.g. one
``--config.methods=...`` each): the shared phases run once under a lock, each
run is trained by one process, and each process's report is the union of the
finished runs (:mod:`examples.agent_io`).
"""
from __future__ import annotations

import pathlib
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import examples.agent_env as agent_env  # noqa: E402
from examples import agent_data, agent_evaluate, agent_io, agent_lm  # noqa: E402
from examples import agent_report, agent_train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "agent_distill.py"), "Experiment config (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output / resume directory.")


def run(cfg, workdir: pathlib.Path) -> dict:
  """Runs (or resumes) every phase for the config's methods and seeds; returns the summary."""
  t0, cpu0 = time.perf_counter(), time.process_time()
  methods = agent_io.csv_list(cfg.methods)
  seeds = agent_io.csv_list(cfg.seeds, int)
  env = agent_env.get(cfg.env)
  agent_data.env_options(cfg, env)
  for m in methods:
    agent_train.method_loss(m, cfg)  # fail on a bad method before any training
  agent_io.claim_workdir(cfg, workdir)
  data = agent_data.prepare_data(cfg, workdir, env)
  t_graphdef, t_params, _ = agent_train.train_teacher(cfg, workdir, data)
  teacher_eval = agent_evaluate.Evaluator(t_graphdef, cfg, data)
  examples, distill_stats = agent_data.distill_examples(
      cfg, workdir, data, lambda tasks: teacher_eval.rollouts(t_params, tasks,
                                                              "teacher trajectories"))
  cache = None
  if any(m != "sft" and not (agent_io.run_dir(workdir, m, s) / "result.json").exists()
         for m in methods for s in seeds):
    batches = agent_data.Batches(examples, agent_io.csv_list(cfg.buckets, int), cfg.batch_size,
                                 seed=0)
    cache = agent_data.teacher_logits(agent_lm.make_apply(t_graphdef), t_params, batches)
  for s in seeds:
    for m in methods:
      agent_train.train_student(cfg, workdir, data, m, s, examples, t_graphdef, t_params, cache)
  return agent_report.write_report(
      workdir, student_steps=cfg.student.steps, distill_stats=distill_stats, order=methods,
      extra={"wall_seconds_this_invocation": time.perf_counter() - t0,
             "cpu_seconds_this_invocation": time.process_time() - cpu0})


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  signal.signal(signal.SIGTERM, _raise_interrupt)
  workdir = pathlib.Path(_WORKDIR.value)
  summary = run(_CONFIG.value, workdir)
  if summary["runs"]:
    print((workdir / "summary.md").read_text())
  print(f"this invocation: {summary['wall_seconds_this_invocation']:.0f} s wall, "
        f"{summary['cpu_seconds_this_invocation']:.0f} s CPU; results in {workdir}")


if __name__ == "__main__":
  app.run(main)
