"""Presets of the SAD objective: ``--config=configs/sad.py:PRESET``.

Usable with ``ml_collections.config_flags.DEFINE_config_file`` (overrides such as
``--config.temperature=2.0`` then apply on top) or with
``sad_jax.objective._config.load_config("configs/sad.py:research")``.

Presets (``get_config()`` without an argument gives ``paper``):

* ``paper`` -- the objective of Liu et al. (2025), "Structured Agent Distillation
  for Large Language Model": forward KL on the teacher's trajectories, a separate
  mean per span type combined as :math:`\\lambda_r L_{CoT} + \\lambda_a L_{Act}`
  with :math:`\\lambda_r = \\lambda_a = 1`, prompt and observation tokens masked
  (the environment wrote them, not the agent). Use it to reproduce the paper and
  as the baseline every other preset is compared against.
* ``production`` -- for long, large-batch runs. ``tokens`` normalization gives
  every trained token the same gradient weight whatever the span mix of a batch
  (``span_mean`` lets a batch with three action tokens weigh them as much as
  three thousand reasoning tokens), which keeps the gradient scale steady; a
  small hard-label term (teacher trajectories are the labels) with label
  smoothing anchors the student on the sampled actions when a cached teacher is
  top-k truncated; actions weigh 1.5x because a wrong tool call ends an episode
  while a clumsy thought rarely does; the plateau detector is tuned to trigger
  learning-rate decisions on a ~1k-step horizon. No adaptive rule is on, so runs
  are reproducible and resumable bit-for-bit from a checkpoint.
* ``research`` -- every adaptive mechanism on, for ablations: generalized JSD
  (:math:`\\beta = 0.5`, bounded and symmetric, robust to a student that puts
  mass where the teacher has none), temperature adapted to teacher-student
  agreement in :math:`[1, 4]`, ``adaptive`` span weights from the running
  per-span losses, and small entropy and span-consistency terms. Expect to tune
  it; it is the starting point for experiments, not a recommendation.
* ``fast`` -- for smoke tests, CI and debugging: plain forward KL, ``tokens``
  normalization, no extra term that needs another pass over the vocabulary, and a
  short ring buffer / patience so the state rules are exercised within a few
  dozen steps.
"""
from __future__ import annotations

from sad_jax.objective import _config as config_lib

PRESETS = ("paper", "production", "research", "fast")


def get_config(arg: str | None = None):
  """Returns the ``ConfigDict`` of a preset (``paper`` when ``arg`` is None or empty)."""
  preset = (arg or "paper").strip()
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
  c = config_lib.default_config()
  if preset == "production":
    c.normalization = "tokens"
    c.span_weights.action = 1.5
    c.hard_label_weight = 0.1
    c.label_smoothing = 0.1
    c.plateau.history_size = 100
    c.plateau.patience = 1000
  elif preset == "research":
    c.divergence = "generalized_jsd"
    c.divergence_kwargs.beta = 0.5
    c.temperature = 2.0
    c.adaptive_temperature.enabled = True
    c.adaptive_temperature.min = 1.0
    c.adaptive_temperature.max = 4.0
    c.weighting = "adaptive"
    c.regularizers.entropy = 0.01
    c.regularizers.span_consistency = 0.05
  elif preset == "fast":
    c.normalization = "tokens"
    c.plateau.history_size = 8
    c.plateau.patience = 16
    c.curriculum.total_steps = 100
  config_lib.validate(c)
  return c
