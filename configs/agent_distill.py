"""Configs of the agent distillation example: ``--config=configs/agent_distill.py:PRESET``.

Used by ``examples/distill_agent.py`` through ``ml_collections.config_flags``, so
any field can be overridden: ``--config.student.steps=500``,
``--config.methods=sft,sad`` (a comma-separated string), ``--config.seeds=0,1,2``.

The argument is ``PRESET`` or ``PRESET,env=NAME``: ``env`` names the environment
module under ``examples/agent_env`` (:func:`examples.agent_env.get`; default
``calculator``); ``config.env_options`` (the options of its task generator) and
``config.max_turns`` start from that module's ``OPTIONS`` and ``MAX_TURNS``, so
select the environment here rather than with ``--config.env``.

Presets:

* ``smoke`` -- tiny models, a few dozen steps, a handful of evaluation tasks;
  checks the whole pipeline (used by the test suite). Success is meaningless.
* ``default`` -- the README command: data, tokenizer, a 0.49M-parameter teacher
  (30000 demonstrations, 3250 steps: 91.7% held-out success when measured), then a
  5.4x smaller student distilled with SFT, token-level KD and SAD (one seed, 1000
  steps each), each evaluated on 1000 held-out tasks. 13 min 52 s from scratch on
  the 2-core CPU when measured (README, "End-to-end agent distillation").
* ``study`` -- the method comparison: every method (SFT, token-level KD, SAD
  ``paper`` and the other SAD weighting strategies) x 5 seeds, the ``default``
  teacher trained 3500 steps, its rollouts on 20000 training tasks as the
  students' data (2000 steps of batch 32 see each trajectory ~3.4 times; over
  2000 rollouts, ~34 times), students trained for 2000 steps, learning curves,
  1000 held-out tasks per run: 45 runs
  (``docs/agent_study.md``: how they are run and what they measured).

Methods (``config.methods``):

* ``sft`` -- cross-entropy on the teacher's trajectories (hard labels), reasoning
  and action tokens.
* ``token_kd`` -- forward KL(teacher || student) with one uniform weight over all
  assistant tokens (``tokens`` normalization): token-level KD.
* ``sad`` -- ``configs/sad.py:paper``: forward KL, separate means over reasoning
  and action spans, :math:`L_{CoT} + L_{Act}`.
* ``sad_<strategy>`` -- the paper objective with the weighting strategy
  ``<strategy>`` (``reasoning_heavy``, ``action_heavy``, ``adaptive``,
  ``curriculum``, ``confidence_based``, ``difficulty_aware``).
"""
from __future__ import annotations

import ml_collections

import examples.agent_env as agent_env

PRESETS = ("smoke", "default", "study")
SAD_STRATEGIES = ("reasoning_heavy", "action_heavy", "adaptive", "curriculum",
                  "confidence_based", "difficulty_aware")
ALL_METHODS = ("sft", "token_kd", "sad") + tuple(f"sad_{s}" for s in SAD_STRATEGIES)


def _model(d_model, num_layers, num_heads, d_ff):
  return ml_collections.ConfigDict(dict(d_model=d_model, num_layers=num_layers,
                                        num_heads=num_heads, d_ff=d_ff))


def parse_arg(arg: str | None) -> tuple[str, str]:
  """``"PRESET[,env=NAME]"`` (either part may be left out) -> ``(preset, env)``."""
  preset, env = "default", "calculator"
  for i, item in enumerate(p.strip() for p in (arg or "").split(",") if p.strip()):
    if item.startswith("env="):
      env = item[len("env="):]
    elif "=" not in item and i == 0:
      preset = item
    else:
      raise ValueError(f"bad config argument {arg!r}: expected PRESET[,env=NAME], e.g. "
                       "'study,env=calculator'")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
  return preset, env


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the ``ConfigDict`` of ``PRESET[,env=NAME]`` (``default``, ``calculator``)."""
  preset, env_name = parse_arg(arg)
  env = agent_env.get(env_name)
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.env = env_name
  c.env_options = ml_collections.ConfigDict(dict(env.OPTIONS))
  c.data_seed = 0
  c.max_turns = env.MAX_TURNS  # episode turn limit (calculator: 3 tool calls + answer need 4)
  c.num_train_tasks = 30000   # expert demonstrations for the teacher (8000: 88.2% held-out)
  c.num_distill_tasks = 2000  # teacher rollouts on train tasks: the students' data
  c.num_eval_tasks = 1000     # held-out tasks of the final evaluations
  c.num_curve_tasks = 200     # held-out tasks of the learning-curve evaluations
  c.num_kl_trajectories = 256  # held-out expert trajectories for the per-span KL
  c.keep_failed_trajectories = False  # students learn from the teacher's solved tasks only
  c.vocab_size = 512          # BPE target (the corpus saturates below it)
  c.max_len = 256
  c.buckets = "128,144,160,176,192,208"  # padded lengths (length bucketing), <= max_len
  c.batch_size = 32
  c.rollout_batch = 250
  c.max_turn_tokens = 64
  c.log_every = 25
  c.checkpoint_every = 200

  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = _model(128, 2, 4, 512)
  c.teacher.steps = 3250
  c.teacher.learning_rate = 3e-3
  c.teacher.warmup_steps = 100
  c.teacher.eval_every = 500
  c.teacher.seed = 0
  c.teacher.min_success = 0.9  # a warning (not an error) below it

  c.student = ml_collections.ConfigDict()
  c.student.model = _model(48, 2, 4, 192)
  c.student.steps = 1000
  c.student.learning_rate = 3e-3
  c.student.warmup_steps = 100
  c.student.eval_every = 200
  c.student.temperature = 1.0

  c.methods = "sft,token_kd,sad"
  c.seeds = "0"

  if preset == "smoke":
    c.num_train_tasks = 300
    c.num_distill_tasks = 64
    c.num_eval_tasks = 32
    c.num_curve_tasks = 16
    c.num_kl_trajectories = 16
    c.keep_failed_trajectories = True  # the smoke teacher solves nothing
    c.buckets = "208"
    c.batch_size = 8
    c.rollout_batch = 32
    c.max_turn_tokens = 24
    c.log_every = 5
    c.checkpoint_every = 10
    c.teacher.model = _model(64, 1, 2, 128)
    c.teacher.steps = 20
    c.teacher.eval_every = 20
    c.student.model = _model(16, 1, 2, 32)
    c.student.steps = 20
    c.student.eval_every = 20
    c.methods = "sft,sad"
  elif preset == "study":
    c.methods = ",".join(ALL_METHODS)
    c.seeds = "0,1,2,3,4"
    c.num_distill_tasks = 20000  # float16 teacher logits: 4 GB
    c.teacher.steps = 3500  # the README study's teacher (91.0%)
    c.student.steps = 2000  # at 1000 steps one seed in three has not made the jump yet
    c.student.eval_every = 250
  return c
