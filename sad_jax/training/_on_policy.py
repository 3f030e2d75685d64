r"""On-policy span-aware distillation: the GKD recipe on the student's own episodes.

Off-policy distillation trains the student on the teacher's trajectories; at test
time the student acts on its own and its first mistake puts it in states the
teacher never showed it. On-policy distillation (GKD, Agarwal et al., 2024) trains
it on its own samples, scored by the teacher:

* a fraction :math:`\lambda` (``mixture``) of the batches are the student's own
  episodes, sampled at ``sampling_temperature``; the others come from fixed data
  (:func:`on_policy_batch` draws which, deterministically from the step, so a
  resumed run draws the same);
* the teacher is online: its logits are computed inside the step on the
  student's batch, under ``stop_gradient``, dense or reduced on the fly to a top-k
  :class:`~sad_jax.losses.SparseTeacher` (``teacher_top_k``);
* the divergence is the objective's (reverse KL and the generalized JSD
  :math:`\beta` of GKD are the usual on-policy choices; every divergence works);
* only the agent's tokens train: the episode's span ids
  (:func:`sad_jax.data.episodes.episode_example`) put the environment's tokens in
  ``OBSERVATION`` and the task in ``PROMPT``, and the config refuses a non-zero
  span weight on either;
* turns can be weighted by the rules of :mod:`sad_jax.objective._turns`
  (``turns.rule``), and the number of trained turns can grow with the step (TCOD's
  curriculum, ``turns.depth_*``). Both read the batch's ``turn_ids``
  (:func:`sad_jax.data.episodes.batch_episodes`); a batch without them (fixed data)
  is trained exactly as the off-policy step would train it.

The user writes the loop around their own sampler (see ``docs/on_policy.md``)::

  recipe = OnPolicy(config, optimizer=tx, apply_fn=apply, teacher_apply=teacher_apply)
  state = init_train_state(params, tx, recipe.loss)
  step = jax.jit(recipe.step)
  for n in range(num_steps):
    if recipe.on_policy_batch(n):
      batch = batch_episodes(my_sampler(state.params, recipe.sampling_temperature), T)
    else:
      batch = next(fixed_data)
    state, metrics = step(state, batch, teacher_params)

References:
  * R. Agarwal, N. Vieillard, Y. Zhou, P. Stanczyk, S. Ramos, M. Geist, O. Bachem.
    *On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes.* ICLR 2024, arXiv:2306.13649.
  * J. Wang et al. *TCOD: Exploring Temporal Curriculum in On-Policy Distillation
    for Multi-turn Autonomous Agents.* arXiv:2604.24005, 2026.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sad_jax.losses import _divergences as divergences
from sad_jax.losses import _sparse as sparse
from sad_jax.objective import _config as objective_config
from sad_jax.objective import _loss as loss_lib
from sad_jax.objective import _turns as turns
from sad_jax.objective import _weighting as weighting
from sad_jax.training import _step as step_lib

TURN_RULES = ("none", "position", "balanced", "departure", "accumulated")
"""``turns.rule``: which factor of :mod:`sad_jax.objective._turns` weights the turns."""
TURN_SIGNALS = ("kl_t1", "total_variation")
"""``turns.signal``: the per-token discrepancy of the ``departure`` / ``accumulated`` rules
(teacher statistics at :math:`T = 1`: forward KL, total variation)."""


def default_config() -> ml_collections.ConfigDict:
  r"""The on-policy recipe's config.

  Fields:

  * ``mixture``: :math:`\lambda \in [0, 1]`, the fraction of batches that are the
    student's own episodes (GKD's :math:`\lambda`; 0 is plain off-policy
    distillation on the fixed data, 1 purely on-policy). Default 0.5, as TRL's
    ``GKDConfig.lmbda``.
  * ``seed``: seed of the per-step draw of :func:`on_policy_batch`.
  * ``sampling_temperature``: the temperature the user's sampler samples the
    student at (GKD samples at 1).
  * ``teacher_top_k``: 0 for the dense online teacher; ``K > 0`` reduces its logits
    on the fly to a top-``K`` :class:`~sad_jax.losses.SparseTeacher` with tail policy
    ``teacher_tail`` (the divergence must accept sparse teachers).
  * ``turns``: turn-aware weighting (:mod:`sad_jax.objective._turns`):
    ``rule`` (one of :data:`TURN_RULES`), ``decay`` (:math:`\gamma` of
    ``position`` / ``departure``), ``boost`` (:math:`\beta` of ``departure``),
    ``threshold`` (:math:`\tau` of ``departure``), ``scale`` (:math:`c` of
    ``accumulated``), ``mix`` and ``mix_steps`` (``balanced``: :math:`\alpha`
    ramps linearly from 0 to ``mix`` over ``mix_steps`` optimizer steps; 0 steps:
    ``mix`` from the start), ``signal`` (one of :data:`TURN_SIGNALS`),
    ``normalize`` (each row's factors rescaled to mean 1 over its trained
    tokens); and the TCOD depth curriculum: ``depth_start`` :math:`k_0` (0 turns
    it off), ``depth_every`` :math:`\eta`, ``depth_max`` :math:`k_{max}` (0: none).
  * ``objective``: the objective (:func:`sad_jax.objective.default_config`), here
    with ``divergence = "reverse_kl"``, the mode-seeking choice of on-policy
    distillation; prompt and observation span weights must stay 0.
  """
  c = ml_collections.ConfigDict()
  c.mixture = 0.5
  c.seed = 0
  c.sampling_temperature = 1.0
  c.teacher_top_k = 0
  c.teacher_tail = "tail_bucket"
  c.turns = ml_collections.ConfigDict(dict(
      rule="none", decay=0.8, boost=1.0, threshold=0.5, scale=1.0, mix=1.0, mix_steps=0,
      signal="kl_t1", normalize=True, depth_start=0, depth_every=1, depth_max=0))
  c.objective = objective_config.default_config()
  c.objective.divergence = "reverse_kl"
  return c


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ValueError(f"config.{field} = {value!r} is invalid; allowed: {allowed}")


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
      and math.isfinite(x)


def resolve_config(config=None) -> ml_collections.ConfigDict:
  """A validated on-policy config from a ``ConfigDict`` or a mapping of overrides.

  A mapping is merged onto :func:`default_config` (nested mappings field by field;
  ``objective`` overrides go through the objective's own merge and validation).
  Never modifies its input.

  Raises:
    ValueError: naming the offending field, its value and what is allowed.
  """
  base = default_config()
  if config is None:
    config = {}
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
  for key, value in config.items():
    if key not in base:
      raise ValueError(f"config.{key} is not a known field; allowed: {', '.join(sorted(base))}")
    if key == "objective":
      objective = base.objective.to_dict()
      objective.update(dict(value))
      base.objective = objective_config.resolve(objective)
    elif key == "turns":
      if not isinstance(value, Mapping):
        _fail("turns", value, f"a mapping with fields {', '.join(base.turns)}")
      for k, v in value.items():
        if k not in base.turns:
          raise ValueError(f"config.turns.{k} is not a known field; allowed: "
                           f"{', '.join(sorted(base.turns))}")
        base.turns[k] = v
    else:
      base[key] = value
  _validate(base)
  return base


def _validate(c: ml_collections.ConfigDict) -> None:
  if not _is_number(c.mixture) or not 0 <= c.mixture <= 1:
    _fail("mixture", c.mixture, "a number in [0, 1]")
  if not _is_int(c.seed):
    _fail("seed", c.seed, "an int")
  if not _is_number(c.sampling_temperature) or not c.sampling_temperature > 0:
    _fail("sampling_temperature", c.sampling_temperature, "a finite number > 0")
  if not _is_int(c.teacher_top_k) or c.teacher_top_k < 0:
    _fail("teacher_top_k", c.teacher_top_k, "an int >= 0 (0: dense teacher)")
  if c.teacher_tail not in sparse.TAIL_POLICIES:
    _fail("teacher_tail", c.teacher_tail, ", ".join(sorted(sparse.TAIL_POLICIES)))
  if c.teacher_top_k > 0 and c.objective.divergence not in divergences.SPARSE_DIVERGENCES:
    _fail("teacher_top_k", c.teacher_top_k,
          f"0 with divergence {c.objective.divergence!r}, which takes no sparse teacher "
          f"(sparse divergences: {', '.join(divergences.SPARSE_DIVERGENCES)})")
  for span in ("prompt", "observation"):
    if c.objective.span_weights[span] != 0:
      _fail(f"objective.span_weights.{span}", c.objective.span_weights[span],
            "0: on-policy distillation trains only the student's own tokens (the environment "
            "wrote the observations, the task the prompt)")
  t = c.turns
  if t.rule not in TURN_RULES:
    _fail("turns.rule", t.rule, ", ".join(TURN_RULES))
  if t.signal not in TURN_SIGNALS:
    _fail("turns.signal", t.signal, ", ".join(TURN_SIGNALS))
  for field in ("decay", "boost", "scale"):
    if not _is_number(t[field]) or not t[field] > 0:
      _fail(f"turns.{field}", t[field], "a finite number > 0")
  if not _is_number(t.threshold):
    _fail("turns.threshold", t.threshold, "a finite number")
  if not _is_number(t.mix) or not 0 <= t.mix <= 1:
    _fail("turns.mix", t.mix, "a number in [0, 1]")
  if not isinstance(t.normalize, bool):
    _fail("turns.normalize", t.normalize, "True, False")
  for field, lo in (("mix_steps", 0), ("depth_start", 0), ("depth_every", 1), ("depth_max", 0)):
    if not _is_int(t[field]) or t[field] < lo:
      _fail(f"turns.{field}", t[field], f"an int >= {lo}")
  if t.depth_start and t.depth_max and t.depth_max < t.depth_start:
    _fail("turns.depth_max", t.depth_max, f"0 (no limit) or >= depth_start = {t.depth_start}")


def on_policy_batch(config, step: int) -> bool:
  """Whether batch ``step`` is on-policy (the student's episodes) or fixed data.

  GKD's draw (Agarwal et al., 2024, Algorithm 1): a uniform :math:`u` per step,
  on-policy when :math:`u < \\lambda`. The draw is a pure function of
  ``(config.seed, step)``, so a run resumed at ``step`` draws the same sources;
  :math:`\\lambda = 0` never draws on-policy, :math:`\\lambda = 1` always does.
  Host side (numpy): it decides whether the sampler runs at all.

  Args:
    config: the on-policy config (validated) or a mapping of overrides.
    step: the training step about to run (``TrainState.step``).
  """
  config = config if isinstance(config, ml_collections.ConfigDict) else resolve_config(config)
  if not _is_int(step) or step < 0:
    raise ValueError(f"step must be an int >= 0, got {step!r}")
  u = np.random.default_rng([int(config.seed), int(step)]).random()
  return bool(u < config.mixture)


def online_teacher(teacher_apply: Callable, *, top_k: int = 0,
                   tail: str = "tail_bucket") -> Callable:
  """The teacher as the step runs it: dense logits, or their top-``k`` on the fly.

  Args:
    teacher_apply: ``teacher_apply(teacher_params, batch) -> logits [B, T, V]`` (or an
      output with ``.logits``).
    top_k: 0 keeps the dense logits; ``k > 0`` returns
      :func:`sad_jax.losses.top_k_teacher` of them (``SparseTeacher`` with ``[B, T, k]``
      leaves), so the divergence never sees the teacher's full vocabulary.
    tail: the ``SparseTeacher``'s tail policy.

  Returns:
    ``fn(teacher_params, batch) -> teacher``; the train step applies ``stop_gradient``.
  """
  if not _is_int(top_k) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
  if top_k == 0:
    return teacher_apply

  def sparse_teacher(teacher_params, batch):
    out = teacher_apply(teacher_params, batch)
    logits = out if hasattr(out, "shape") else getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
      logits = out.get("logits")
    if logits is None:
      raise TypeError(f"teacher_apply returned {type(out).__name__}; the top-k teacher needs "
                      "logits [B, T, V] (an array, or an output with .logits)")
    return sparse.top_k_teacher(jax.lax.stop_gradient(logits), top_k, tail=tail)

  return sparse_teacher


def needs_signal(config) -> bool:
  """Whether ``config.turns.rule`` reads a per-token teacher-student discrepancy."""
  return config.turns.rule in ("departure", "accumulated")


def turn_factors(turn_config, turn_ids: jax.Array, where: jax.Array, step: jax.Array,
                 signal: jax.Array | None = None) -> jax.Array | None:
  """The factors ``[B, T]`` of ``turn_config.rule`` (None for ``"none"``).

  Args:
    turn_config: ``config.turns``.
    turn_ids: ``[B, T]`` the labels' turns.
    where: ``[B, T]`` bool, the trained tokens.
    step: ``[]`` optimizer steps taken (``SADState.step``), for the ``balanced`` ramp.
    signal: ``[B, T]`` discrepancy, for ``departure`` / ``accumulated``.
  """
  t = turn_config
  if t.rule == "none":
    return None
  if t.rule == "position":
    f = turns.turn_position_factors(turn_ids, decay=t.decay)
  elif t.rule == "balanced":
    ramp = 1.0 if t.mix_steps == 0 else jnp.minimum(
        jnp.asarray(step, jnp.float32) / t.mix_steps, 1.0)
    f = turns.turn_balanced_factors(turn_ids, where, mix=t.mix * ramp)
  elif signal is None:
    raise ValueError(f"turns.rule = {t.rule!r} needs the per-token signal {t.signal!r}")
  elif t.rule == "departure":
    f = turns.departure_factors(turn_ids, signal, where, threshold=t.threshold, decay=t.decay,
                                boost=t.boost)
  else:
    f = turns.accumulated_discrepancy_factors(turn_ids, signal, where, scale=t.scale)
  return turns.normalize_factors(f, where) if t.normalize else f


def depth_limited(batch, step: jax.Array, turn_config):
  """``batch`` with the span ids of turns beyond TCOD's depth set to ``PAD`` (jittable).

  Unchanged when the curriculum is off (``depth_start == 0``) or the batch has no
  ``turn_ids`` (fixed data).

  Args:
    batch: a mapping or ``NamedTuple`` batch with ``span_ids`` (and ``turn_ids``).
    step: ``[]`` the training step :math:`n` (``TrainState.step``).
    turn_config: ``config.turns``.
  """
  t = turn_config
  turn_ids = loss_lib.batch_field(batch, "turn_ids", required=False)
  if t.depth_start == 0 or turn_ids is None:
    return batch
  depth = turns.turn_depth(step, start=t.depth_start, every=t.depth_every,
                           max_depth=t.depth_max or None)
  limited = turns.limit_turns(loss_lib.batch_field(batch, "span_ids"), turn_ids, depth)
  if isinstance(batch, Mapping):
    return {**batch, "span_ids": limited}
  if hasattr(batch, "_replace"):
    return batch._replace(span_ids=limited)
  raise TypeError(f"batch must be a mapping or a NamedTuple, got {type(batch).__name__}")


class OnPolicyLoss:
  """The objective of the on-policy recipe as a loss object (``sad_jax.objective.Loss``).

  :class:`sad_jax.objective.SADLoss` of ``config.objective``, with the turn factors of
  ``config.turns.rule`` multiplied into the token weights of a batch that has
  ``turn_ids``; a batch without them is the plain ``SADLoss`` (so fixed data trains
  exactly as off-policy). Built once: the config is merged and validated here.

  Args:
    config: the on-policy config (:func:`default_config` or overrides).
    backend: the objective's vocabulary backend (as in ``SADLoss``). The
      ``departure`` / ``accumulated`` rules read the backend's teacher statistics.
  """

  needs_teacher = True

  def __init__(self, config=None, *, backend=None):
    self.config = resolve_config(config)
    self.sad = loss_lib.SADLoss(self.config.objective, backend=backend)
    if needs_signal(self.config) and self.sad.backend.name == "vocab_parallel":
      raise ValueError(f"turns.rule = {self.config.turns.rule!r} reads teacher statistics "
                       "before the objective runs; the vocab_parallel backend computes them "
                       "only inside its mesh: use the dense or fused backend, or the "
                       "'position' / 'balanced' rules")
    if not self.sad.needs_teacher:
      raise ValueError("on-policy distillation needs a teacher: config.objective."
                       f"divergence_weight = {self.config.objective.divergence_weight}")

  def init_state(self):
    return self.sad.init_state()

  def normalizer(self, batch):
    return self.sad.normalizer(batch)

  def update_state(self, state, metrics):
    return self.sad.update_state(state, metrics)

  def skip_state(self, state):
    return self.sad.skip_state(state)

  def factors(self, student, teacher, batch, state):
    """The turn factors ``[B, T]`` of this batch, or None (no rule, or no ``turn_ids``)."""
    turn_ids = loss_lib.batch_field(batch, "turn_ids", required=False)
    if self.config.turns.rule == "none" or turn_ids is None:
      return None
    span_ids = loss_lib.batch_field(batch, "span_ids")
    where = weighting.uniform(span_ids, self.config.objective.span_weights) > 0
    signal = None
    if needs_signal(self.config):
      stats = self.sad.backend.statistics(loss_lib.as_model_output(student),
                                          jax.tree.map(jax.lax.stop_gradient, teacher), where,
                                          (self.config.turns.signal,))
      signal = stats[self.config.turns.signal]
    return turn_factors(self.config.turns, jnp.asarray(turn_ids), where, state.step, signal)

  def __call__(self, student, teacher, batch, state, *, normalizer=None, micro_batches: int = 1):
    return self.sad(student, teacher, batch, state, normalizer=normalizer,
                    micro_batches=micro_batches,
                    token_factors=self.factors(student, teacher, batch, state))

  def __repr__(self):
    return (f"OnPolicyLoss(mixture={self.config.mixture}, turns={self.config.turns.rule!r}, "
            f"{self.sad!r})")


class OnPolicy:
  """The on-policy recipe: its loss, its (jittable) step, its batch-source draw.

  Args:
    config: the on-policy config (:func:`default_config` or overrides).
    optimizer: an optax ``GradientTransformation`` or an ``nnx.Optimizer``.
    apply_fn: the student, as in :func:`sad_jax.training.make_train_step`.
    teacher_apply: the online teacher ``teacher_apply(teacher_params, batch) -> logits``
      (an NNX module works with the dense teacher).
    train_config: the training config (accumulation, precision, guard), as in
      ``make_train_step``.
    mesh: as in ``make_train_step``.
    backend: the objective's vocabulary backend.
  """

  def __init__(self, config=None, *, optimizer, apply_fn=None, teacher_apply,
               train_config=None, mesh=None, backend=None):
    self.loss = OnPolicyLoss(config, backend=backend)
    self.config = self.loss.config
    if self.config.teacher_top_k and _is_module(teacher_apply):
      raise ValueError(f"config.teacher_top_k = {self.config.teacher_top_k} needs teacher_apply "
                       "as a function (teacher_params, batch) -> logits, not a module")
    teacher = online_teacher(teacher_apply, top_k=self.config.teacher_top_k,
                             tail=self.config.teacher_tail)
    self._step = step_lib.make_train_step(self.loss, optimizer, train_config,
                                          apply_fn=apply_fn, teacher_apply=teacher, mesh=mesh)

  @property
  def sampling_temperature(self) -> float:
    """The temperature to sample the student at (``config.sampling_temperature``)."""
    return float(self.config.sampling_temperature)

  def on_policy_batch(self, step: int) -> bool:
    """Whether batch ``step`` should be the student's episodes (see :func:`on_policy_batch`)."""
    return on_policy_batch(self.config, step)

  def step(self, train_state, batch, teacher_params):
    """One training step on ``batch`` (episodes or fixed data); jit it.

    Applies TCOD's depth to the batch's span ids (from ``train_state.step``), then runs
    the generic train step with the online teacher. Returns ``(train_state, metrics)``
    as ``make_train_step`` does, plus ``metrics["turn_depth"]`` when the curriculum is on.
    """
    batch = depth_limited(batch, train_state.step, self.config.turns)
    new_state, metrics = self._step(train_state, batch, teacher_params)
    if self.config.turns.depth_start:
      t = self.config.turns
      metrics = dict(metrics, turn_depth=turns.turn_depth(
          train_state.step, start=t.depth_start, every=t.depth_every,
          max_depth=t.depth_max or None))
    return new_state, metrics


def _is_module(x) -> bool:
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return isinstance(x, nnx.Module)


__all__ = ["OnPolicy", "OnPolicyLoss", "TURN_RULES", "TURN_SIGNALS", "default_config",
           "depth_limited", "needs_signal", "on_policy_batch", "online_teacher",
           "resolve_config", "turn_factors"]
