r"""Where a lookup agent fails: the first error of each failed held-out episode.

.. code-block:: bash

  python examples/lookup_failures.py --config=configs/agent_distill.py:default,env=lookup \
      --workdir=/tmp/lookup --tasks=500

Loads the teacher of a finished ``examples/distill_agent.py`` workdir (same
config), rolls it out greedily on the first ``--tasks`` held-out tasks and
prints its success and, over the failed episodes, the counts of
:func:`examples.agent_env.lookup.first_failure` (hop and kind of the first
error) and, for reading errors (``distractor``, ``digits``), which digit
positions of the id were read wrong (:func:`examples.agent_env.lookup.failure_counts`).
"""
from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import examples.agent_env as agent_env  # noqa: E402
from examples import agent_data, agent_evaluate, agent_train  # noqa: E402
from examples.agent_env import lookup  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs" / "agent_distill.py"), "The workdir's config (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir with a finished teacher.")
_TASKS = flags.DEFINE_integer("tasks", 500, "Held-out tasks to roll out.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value or "")
  if cfg.env != "lookup":
    raise app.UsageError(f"--config selects env {cfg.env!r}; use ...:PRESET,env=lookup")
  if not (workdir / "teacher" / "result.json").exists():
    raise app.UsageError(f"--workdir={workdir} holds no finished teacher (teacher/result.json)")
  logging.set_verbosity(logging.WARNING)
  cfg.num_eval_tasks = max(cfg.num_eval_tasks, _TASKS.value)
  data = agent_data.prepare_data(cfg, workdir, agent_env.get(cfg.env))
  graphdef, params, _ = agent_train.train_teacher(cfg, workdir, data)
  episodes = agent_evaluate.Evaluator(graphdef, cfg, data).rollouts(
      params, data.eval_tasks[:_TASKS.value], "teacher rollouts")
  print(json.dumps(lookup.failure_counts(episodes), indent=2))


if __name__ == "__main__":
  app.run(main)
