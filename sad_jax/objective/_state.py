"""Training state of the SAD objective and its pure update rules.

Everything that changes while training -- the temperature, the running loss per
span type, the curriculum progress, a ring buffer of recent losses, the plateau
detector and the count of skipped steps -- lives in :class:`SADState`, a
``flax.struct`` pytree. :func:`sad_jax.sad_loss` returns the next state; the
train step threads it through (and checkpoints it). Each rule below is a pure
function ``state -> state``; none keeps Python-side history.

The state advances once per *optimizer step*: :func:`update_state` consumes the
(sum, count) metrics of the whole step, so with gradient accumulation the train
step calls ``sad_loss(..., update_state=False)`` per micro-batch, adds the
metrics, and calls :func:`update_state` once.
"""
from __future__ import annotations

from typing import Mapping

import chex
import flax.struct
import jax
import jax.numpy as jnp

from sad_jax.objective import _spans as spans

Metrics = Mapping[str, tuple[chex.Array, chex.Array]]


@flax.struct.dataclass
class SADState:
  """Mutable-by-replacement state of the SAD objective (a pytree of arrays).

  Attributes:
    step: ``int32 []`` optimizer steps taken (skipped steps not included).
    temperature: ``float32 []`` distillation temperature used by the next step.
    span_losses: ``float32 [NUM_SPAN_TYPES]`` EMA of the mean divergence of each
      span type over its trained tokens.
    span_seen: ``bool [NUM_SPAN_TYPES]`` whether ``span_losses[k]`` holds a value.
    curriculum_progress: ``float32 []`` in ``[0, 1]``, ``step / total_steps``.
    loss_history: ``float32 [H]`` ring buffer of the last ``H`` step losses
      (mean forward KL at :math:`T=1` over trained tokens).
    history_count: ``int32 []`` values written to the ring buffer so far; the
      next one goes to slot ``history_count % H``.
    best_loss: ``float32 []`` best ring-buffer mean so far (``inf`` before any).
    plateau_count: ``int32 []`` steps since the ring-buffer mean last improved.
    plateaued: ``bool []`` ``plateau_count >= patience``; the train loop may act on
      it (decay the learning rate, stop) and call :func:`reset_plateau`.
    skipped_steps: ``int32 []`` steps skipped because of non-finite values.
  """
  step: jax.Array
  temperature: jax.Array
  span_losses: jax.Array
  span_seen: jax.Array
  curriculum_progress: jax.Array
  loss_history: jax.Array
  history_count: jax.Array
  best_loss: jax.Array
  plateau_count: jax.Array
  plateaued: jax.Array
  skipped_steps: jax.Array


def init_state(config) -> SADState:
  """Returns the initial :class:`SADState` for a (validated) objective config."""
  from sad_jax.objective import _config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(config)
  k = spans.NUM_SPAN_TYPES
  return SADState(
      step=jnp.zeros((), jnp.int32),
      temperature=jnp.asarray(config.temperature, jnp.float32),
      span_losses=jnp.zeros((k,), jnp.float32),
      span_seen=jnp.zeros((k,), bool),
      curriculum_progress=jnp.zeros((), jnp.float32),
      loss_history=jnp.zeros((config.plateau.history_size,), jnp.float32),
      history_count=jnp.zeros((), jnp.int32),
      best_loss=jnp.full((), jnp.inf, jnp.float32),
      plateau_count=jnp.zeros((), jnp.int32),
      plateaued=jnp.zeros((), bool),
      skipped_steps=jnp.zeros((), jnp.int32),
  )


def _safe_mean(sums: jax.Array, counts: jax.Array) -> jax.Array:
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)


def update_span_losses(state: SADState, span_means: chex.Array, present: chex.Array,
                       decay: float) -> SADState:
  """EMA of the per-span losses; span types absent from the step keep their value.

  .. math::
    L_k \\leftarrow \\begin{cases} \\ell_k & \\text{first time type } k \\text{ is seen} \\\\
    \\rho L_k + (1-\\rho)\\,\\ell_k & \\text{otherwise} \\end{cases}

  Args:
    state: current state.
    span_means: ``[NUM_SPAN_TYPES]`` mean loss of each type in this step.
    present: ``[NUM_SPAN_TYPES]`` bool, whether the type had trained tokens.
    decay: :math:`\\rho \\in [0, 1)`.
  """
  ema = decay * state.span_losses + (1.0 - decay) * span_means
  new = jnp.where(state.span_seen, ema, span_means)
  return state.replace(span_losses=jnp.where(present, new, state.span_losses),
                       span_seen=state.span_seen | present)


def update_temperature(state: SADState, agreement: chex.Array, min_temperature: float,
                       max_temperature: float, rate: float) -> SADState:
  """Moves the temperature toward a target set by teacher-student top-1 agreement.

  .. math::
    T^\\star = T_{min} + (T_{max} - T_{min})\\,(1 - a), \\qquad
    T \\leftarrow \\mathrm{clip}\\big(T + r\\,(T^\\star - T),\\ T_{min},\\ T_{max}\\big)

  where :math:`a \\in [0, 1]` is the fraction of trained tokens on which the
  student's and the teacher's most likely token agree. While the student often
  disagrees, targets are soft (high :math:`T`); as it agrees, the temperature
  anneals toward :math:`T_{min}`. The agreement is invariant to the temperature
  (an argmax), so the rule never chases the loss scale that :math:`T` itself
  creates; :math:`T` stays in :math:`[T_{min}, T_{max}]` by construction.

  Args:
    state: current state.
    agreement: ``[]`` top-1 agreement in ``[0, 1]`` of this step.
    min_temperature: :math:`T_{min} > 0`.
    max_temperature: :math:`T_{max} \\ge T_{min}`.
    rate: :math:`r \\in (0, 1]`.
  """
  target = min_temperature + (max_temperature - min_temperature) * (1.0 - agreement)
  t = state.temperature + rate * (target - state.temperature)
  return state.replace(temperature=jnp.clip(t, min_temperature, max_temperature))


def push_loss(state: SADState, loss: chex.Array) -> SADState:
  """Writes ``loss`` into the fixed-size ring buffer ``loss_history``."""
  size = state.loss_history.shape[0]
  slot = state.history_count % size
  return state.replace(
      loss_history=state.loss_history.at[slot].set(jnp.asarray(loss, jnp.float32)),
      history_count=state.history_count + 1)


def history_mean(state: SADState) -> jax.Array:
  """Mean of the values in the ring buffer (0 when empty)."""
  size = state.loss_history.shape[0]
  valid = jnp.arange(size) < state.history_count
  n = jnp.sum(valid)
  return jnp.where(n > 0, jnp.sum(jnp.where(valid, state.loss_history, 0.0)) / jnp.maximum(n, 1),
                   0.0)


def update_plateau(state: SADState, patience: int, min_delta: float) -> SADState:
  """Plateau detection on the ring-buffer mean (call after :func:`push_loss`).

  Once the buffer is full, the mean :math:`\\bar\\ell` of its ``H`` values is
  compared with the best mean so far: it improves when
  :math:`\\bar\\ell < \\ell_{best}\\,(1 - \\delta)` (relative ``min_delta``
  :math:`\\delta`). Each non-improving step increments ``plateau_count``;
  ``plateaued`` is set once it reaches ``patience``.
  """
  full = state.history_count >= state.loss_history.shape[0]
  mean = history_mean(state)
  improved = ~jnp.isfinite(state.best_loss) | (mean < state.best_loss * (1.0 - min_delta))
  count = jnp.where(full, jnp.where(improved, 0, state.plateau_count + 1), state.plateau_count)
  best = jnp.where(full & improved, mean, state.best_loss)
  return state.replace(plateau_count=count.astype(jnp.int32), best_loss=best,
                       plateaued=count >= patience)


def reset_plateau(state: SADState) -> SADState:
  """Clears the plateau counter and flag (e.g. after the train loop decayed the LR)."""
  return state.replace(plateau_count=jnp.zeros_like(state.plateau_count),
                       plateaued=jnp.zeros_like(state.plateaued),
                       best_loss=jnp.full_like(state.best_loss, jnp.inf))


def curriculum_progress(step: chex.Array, total_steps: int) -> jax.Array:
  """Training progress :math:`\\min(\\text{step} / \\text{total\\_steps}, 1)`."""
  return jnp.clip(jnp.asarray(step, jnp.float32) / float(total_steps), 0.0, 1.0)


def skip_step(state: SADState) -> SADState:
  """The state after a skipped step: only ``skipped_steps`` changes.

  The train step calls this on the *old* state when it drops an update (e.g.
  non-finite gradients) instead of keeping the state ``sad_loss`` returned.
  """
  return state.replace(skipped_steps=state.skipped_steps + 1)


def update_state(state: SADState, metrics: Metrics, config) -> SADState:
  """Advances the state by one optimizer step from that step's metrics.

  Reads ``metrics["divergence"]``, ``metrics["agreement"]`` and
  ``metrics["kl_t1"]`` -- ``(sum, count)`` pairs per span type over trained
  tokens, as returned by :func:`sad_jax.sad_loss` (summed over micro-batches when
  accumulating); a loss without a teacher (``divergence_weight = 0``) has none of
  them, and its running span losses and plateau follow ``metrics["loss"]``. If any
  of these or ``metrics["loss"]`` is not finite the step counts as skipped
  (:func:`skip_step`) and nothing else changes, so one bad batch cannot poison the
  running values. A step without trained tokens advances ``step`` (and the
  curriculum) only.

  Args:
    state: current state.
    metrics: the step's metrics.
    config: the objective config.

  Returns:
    The next state.
  """
  def pair(name, fallback="loss"):
    return tuple(jnp.asarray(x, jnp.float32)
                 for x in (metrics[name] if name in metrics else metrics[fallback]))

  div_sums, div_counts = pair("divergence")
  kl_sums, kl_counts = pair("kl_t1")
  finite = jnp.all(jnp.isfinite(div_sums)) & jnp.all(jnp.isfinite(kl_sums))
  if "loss" in metrics:
    finite &= jnp.all(jnp.isfinite(pair("loss")[0]))
  if "agreement" in metrics:
    agree_sums, agree_counts = pair("agreement")
    finite &= jnp.all(jnp.isfinite(agree_sums))
  present = div_counts > 0
  any_tokens = jnp.any(present)

  new = update_span_losses(state, _safe_mean(div_sums, div_counts), present, config.ema_decay)
  if config.adaptive_temperature.enabled:  # validated: then there is a teacher
    at = config.adaptive_temperature
    agreement = jnp.sum(agree_sums) / jnp.maximum(jnp.sum(agree_counts), 1.0)
    moved = update_temperature(new, agreement, at.min, at.max, at.rate)
    new = new.replace(temperature=jnp.where(any_tokens, moved.temperature, new.temperature))
  kl = jnp.sum(kl_sums) / jnp.maximum(jnp.sum(kl_counts), 1.0)
  tracked = update_plateau(push_loss(new, kl), config.plateau.patience, config.plateau.min_delta)
  new = jax.tree.map(lambda a, b: jnp.where(any_tokens, a, b), tracked, new)
  step = state.step + 1
  new = new.replace(step=step,
                    curriculum_progress=curriculum_progress(step, config.curriculum.total_steps))
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, skip_step(state))
