"""Configs of the agent distillation example: ``--config=configs/agent_distill.py:PRESET``.

Used by ``examples/distill_agent.py`` through ``ml_collections.config_flags``, so
any field can be overridden: ``--config.student.steps=500``,
``--config.methods=sft,sad`` (a comma-separated string), ``--config.seeds=0,1,2``.

The argument is ``PRESET`` or ``PRESET,env=NAME``: ``env`` names the environment
module under ``examples/agent_env`` (:func:`examples.agent_env.get`; default
``calculator``); ``config.env_options`` (the options of its task generator),
``config.max_turns`` and the models' ``positions`` start from that module's ``OPTIONS``,
``MAX_TURNS`` and ``POSITIONS`` (calculator: learned, lookup: rotary), so select the
environment here rather than with ``--config.env``.

Presets:

* ``smoke`` -- tiny models, a few dozen steps, a handful of evaluation tasks;
  checks the whole pipeline, the on-policy methods included (used by the test
  suite). Success is meaningless.
* ``default`` -- the README command: data, tokenizer, a 0.49M-parameter teacher
  (30000 demonstrations, 1500 steps: 84.5% held-out success when measured), then a
  5.4x smaller student distilled with SFT, token-level KD and SAD (one seed, 500
  steps each), each evaluated on 1000 held-out tasks. 14 min 26 s from scratch on
  the 2-core CPU when measured (README, "Two commands"). A demonstration of the
  pipeline: its students stop before the jump in success that longer training
  makes; the ``study`` preset compares methods.
* ``study`` -- the method comparison: every method (SFT, token-level KD, SAD
  ``paper``, the other SAD weighting strategies and the on-policy methods) x 5
  seeds, the ``default`` teacher trained the environment's ``STUDY_TEACHER_STEPS``
  (calculator 3500, lookup 6000), its rollouts on 20000
  training tasks as the students' data (2000 steps of batch 32 see each
  trajectory ~3.4 times; over 2000 rollouts, ~34 times), students trained for
  2000 steps, learning curves, 1000 held-out tasks per run: 60 runs
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

On-policy methods (:class:`sad_jax.training.OnPolicy`, GKD; Agarwal et al., ICLR
2024, arXiv:2306.13649): the student trains on its own episodes, sampled in the
environment and scored token by token by the online teacher; only its own
reasoning and action tokens train (observations and prompt masked). Each starts
from an off-policy init run (below) and trains the remaining steps to
``student.steps``, so every student takes the same number of optimizer steps.

* ``on_policy_kd`` -- token-level: one uniform weight over the student's
  reasoning and action tokens, ``tokens`` normalization.
* ``on_policy_sad`` -- span-aware: the SAD ``paper`` objective (a separate mean
  over the reasoning and the action tokens).
* ``on_policy_sad_turns`` -- ``on_policy_sad`` with the turn rule
  ``on_policy.turns`` (default ``balanced``: TurnOPD, Zhou et al.,
  arXiv:2607.05804, every turn the same total weight). In these episodes the turn
  that decides success, the final answer, and each tool call are a few tokens
  next to the reasoning of the turn, and the reasoning length varies by turn, so
  token-level weight lets the long turns dominate; the balanced rule gives each
  decision its share, reads no teacher statistics (every backend) and is
  deterministic.

``config.on_policy`` fields:

* ``init_method``, ``init_steps`` -- the off-policy init: ``init_method`` (an
  off-policy method) trains ``init_steps`` steps once per seed
  (``WORKDIR/on_policy_init/``), exactly as that method's own run starts; the
  on-policy methods of the seed continue from its train state (optimizer and
  learning-rate schedule included) for ``student.steps - init_steps`` steps.
* ``mixture`` -- GKD's λ: the fraction of steps on the student's
  episodes; the others train on the teacher's trajectories (the off-policy
  students' data) with the same loss and online teacher.
* ``divergence`` -- of the teacher and student distributions (any
  :data:`sad_jax.losses.DIVERGENCES` name). ``forward_kl``: from a 200-step init
  (success ~0) the student's own episodes are far from the teacher's, and
  ``reverse_kl`` (mode-seeking, the usual on-policy choice) stalled there at
  35% held-out success on the calculator study's seed 0 while ``forward_kl``
  reached 84% (token-level KD: 84%; ``docs/agent_study.md``).
* ``sampling_temperature`` -- the temperature the student samples its episodes at.
* ``rollout_every``, ``pool_size`` -- every ``rollout_every`` steps (at the first
  on-policy step of the window) the current student rolls out ``pool_size``
  fresh training-split tasks (tasks and sampling key a function of the data
  seed, the run seed and the refresh index); the window's on-policy batches are
  drawn from that pool (``students/METHOD-seedS/pools/pool-RRRRR.npz``, stored
  before use so a resumed run reuses it). A pool of ``rollout_batch`` episodes
  (the default) is one batched rollout.
* ``teacher_top_k`` -- 0: the dense online teacher; ``K``: its top-``K`` on the fly.
* ``turns`` -- the turn rule of ``on_policy_sad_turns``
  (:func:`sad_jax.training.on_policy_config`'s ``turns`` fields).
"""
from __future__ import annotations

import ml_collections

import examples.agent_env as agent_env

PRESETS = ("smoke", "default", "study")
SAD_STRATEGIES = ("reasoning_heavy", "action_heavy", "adaptive", "curriculum",
                  "confidence_based", "difficulty_aware")
ALL_METHODS = ("sft", "token_kd", "sad") + tuple(f"sad_{s}" for s in SAD_STRATEGIES)
ON_POLICY_METHODS = ("on_policy_kd", "on_policy_sad", "on_policy_sad_turns")


def _model(d_model, num_layers, num_heads, d_ff, positions):
  return ml_collections.ConfigDict(dict(d_model=d_model, num_layers=num_layers,
                                        num_heads=num_heads, d_ff=d_ff, positions=positions))


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
  c.teacher.model = _model(128, 2, 4, 512, env.POSITIONS)
  c.teacher.steps = 1500
  c.teacher.learning_rate = 3e-3
  c.teacher.warmup_steps = 100
  c.teacher.eval_every = 500
  c.teacher.seed = 0
  c.teacher.min_success = 0.9  # a warning (not an error) below it

  c.student = ml_collections.ConfigDict()
  c.student.model = _model(48, 2, 4, 192, env.POSITIONS)
  c.student.steps = 500
  c.student.learning_rate = 3e-3
  c.student.warmup_steps = 100
  c.student.eval_every = 100
  c.student.temperature = 1.0

  c.methods = "sft,token_kd,sad"
  c.seeds = "0"

  # ---- on-policy methods (see the module docstring); kept apart from the presets above.
  c.on_policy = ml_collections.ConfigDict(dict(
      init_method="token_kd", init_steps=200, mixture=0.5, divergence="forward_kl",
      sampling_temperature=1.0, rollout_every=50, pool_size=250, teacher_top_k=0,
      turns=ml_collections.ConfigDict(dict(rule="balanced", mix=1.0, mix_steps=0))))
  if preset == "smoke":
    c.on_policy.init_steps = 10
    c.on_policy.rollout_every = 5
    c.on_policy.pool_size = 8

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
    c.teacher.model = _model(64, 1, 2, 128, env.POSITIONS)
    c.teacher.steps = 20
    c.teacher.eval_every = 20
    c.student.model = _model(16, 1, 2, 32, env.POSITIONS)
    c.student.steps = 20
    c.student.eval_every = 20
    c.methods = "sft,sad," + ",".join(ON_POLICY_METHODS)
  elif preset == "study":
    c.methods = ",".join(ALL_METHODS + ON_POLICY_METHODS)
    c.seeds = "0,1,2,3,4"
    c.num_distill_tasks = 20000  # float16 teacher logits: 4 GB
    c.teacher.steps = env.STUDY_TEACHER_STEPS  # calculator 3500 (91.2%), lookup 6000
    c.student.steps = 2000  # at 1000 steps one seed in three has not made the jump yet
    c.student.eval_every = 250
  return c
