"""Span-weighting strategies: pure functions of per-row span ids -> token weights ``[B, T]``.

The weight of a token is the span weight of its type times the strategy's factor:

.. math::
  w_{bt} = \\lambda_{s_{bt}} \\cdot f_{bt}, \\qquad s_{bt} = \\text{span type of token } (b, t)

with :math:`\\lambda` from ``config.span_weights`` (padding always 0). Every
strategy's factor is strictly positive, so the set of trained tokens
(:math:`w > 0`) depends only on the span ids and :math:`\\lambda` -- which makes
token counts computable without a forward pass (gradient accumulation uses it).
Each row is weighted by its own span ids; weights are returned under
``stop_gradient``. Per-token signals (teacher entropy, disagreement) are inputs,
so any loss path (dense, sparse teacher, fused lm head) can supply them.

Strategies (``config.weighting``):

* ``uniform``: :math:`f = 1`.
* ``reasoning_heavy`` / ``action_heavy``: :math:`f = h` on reasoning (resp.
  action) tokens, 1 elsewhere.
* ``adaptive``: harder span types (larger running loss) weigh more.
* ``curriculum``: one of reasoning/action first, the other ramped in over training.
* ``confidence_based``: tokens where the teacher is confident weigh more.
* ``difficulty_aware``: tokens where student and teacher disagree weigh more.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sad_jax.objective import _config as config_lib
from sad_jax.objective import _spans as spans
from sad_jax.objective._spans import SpanType

STRATEGIES = config_lib.WEIGHTING_STRATEGIES


def span_weight_vector(span_weights: Any) -> np.ndarray:
  """:math:`\\lambda` as a ``float32 [NUM_SPAN_TYPES]`` numpy vector (PAD is 0).

  Args:
    span_weights: a mapping with keys ``prompt, reasoning, action, observation,
      other`` (e.g. ``config.span_weights``), or a length-``NUM_SPAN_TYPES`` sequence.
  """
  if isinstance(span_weights, (Mapping, ml_collections.ConfigDict,
                               ml_collections.FrozenConfigDict)):
    keys = set(span_weights.keys())
    if keys != set(config_lib.SPAN_WEIGHT_KEYS):
      raise ValueError(f"span_weights keys {sorted(keys)} must be exactly "
                       f"{list(config_lib.SPAN_WEIGHT_KEYS)}")
    lam = np.zeros(spans.NUM_SPAN_TYPES, np.float32)
    for name in config_lib.SPAN_WEIGHT_KEYS:
      lam[SpanType[name.upper()]] = span_weights[name]
  else:
    lam = np.asarray(span_weights, np.float32)
    if lam.shape != (spans.NUM_SPAN_TYPES,):
      raise ValueError(f"span_weights must have shape ({spans.NUM_SPAN_TYPES},), got {lam.shape}")
    lam = lam.copy()
    lam[SpanType.PAD] = 0.0
  if not np.all(np.isfinite(lam)) or np.any(lam < 0):
    raise ValueError(f"span_weights must be finite and >= 0, got {lam.tolist()}")
  return lam


def _lambda(span_ids: chex.Array, span_weights: Any) -> jax.Array:
  """Per-token :math:`\\lambda_{s_{bt}}` (0 for ids outside the span types)."""
  lam = jnp.asarray(span_weight_vector(span_weights))
  span_ids = jnp.asarray(span_ids)
  if span_ids.ndim != 2:
    raise ValueError(f"span_ids must be [B, T], got shape {span_ids.shape}")
  onehot = spans.span_masks(span_ids).astype(jnp.float32)
  return onehot @ lam


def _finish(lam_tok: jax.Array, factor: chex.Array) -> jax.Array:
  # A select (not a product) so non-finite signals on untrained tokens cannot leak.
  return jax.lax.stop_gradient(jnp.where(lam_tok > 0, lam_tok * factor, 0.0))


def uniform(span_ids: chex.Array, span_weights: Any) -> jax.Array:
  """:math:`w_{bt} = \\lambda_{s_{bt}}`.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda` (see :func:`span_weight_vector`).

  Returns:
    ``float32 [B, T]`` weights.
  """
  lam_tok = _lambda(span_ids, span_weights)
  return _finish(lam_tok, 1.0)


def _type_factor(span_ids, span_weights, span_type, factor):
  if not factor > 0:
    raise ValueError(f"factor must be > 0, got {factor}")
  lam_tok = _lambda(span_ids, span_weights)
  f = jnp.where(jnp.asarray(span_ids) == span_type, jnp.float32(factor), 1.0)
  return _finish(lam_tok, f)


def reasoning_heavy(span_ids: chex.Array, span_weights: Any, *, factor: float = 2.0) -> jax.Array:
  """Up-weights reasoning tokens: :math:`w = \\lambda_s \\cdot (h \\text{ if } s =
  \\text{REASONING else } 1)`.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    factor: :math:`h > 0` (``weighting_params.heavy_factor``).
  """
  return _type_factor(span_ids, span_weights, SpanType.REASONING, factor)


def action_heavy(span_ids: chex.Array, span_weights: Any, *, factor: float = 2.0) -> jax.Array:
  """Up-weights action tokens: :math:`w = \\lambda_s \\cdot (h \\text{ if } s =
  \\text{ACTION else } 1)`.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    factor: :math:`h > 0` (``weighting_params.heavy_factor``).
  """
  return _type_factor(span_ids, span_weights, SpanType.ACTION, factor)


def adaptive_factors(span_losses: chex.Array, span_weights: Any,
                     span_seen: chex.Array | None = None, *, power: float = 1.0,
                     eps: float = 1e-6) -> jax.Array:
  """Per-span-type factors of the ``adaptive`` strategy, ``[NUM_SPAN_TYPES]``.

  .. math::
    f_k = n \\, \\frac{(\\tilde L_k + \\epsilon)^p}{\\sum_{j \\in A} (\\tilde L_j + \\epsilon)^p},
    \\qquad k \\in A = \\{k : \\lambda_k > 0\\},\\ n = |A|

  :math:`\\tilde L_k` is the running loss of type :math:`k`, or, for a type not seen
  yet, the mean running loss of the seen trained types (so a late type starts at
  factor 1 instead of ~0). The factors of the trained types average to 1; the
  denominator is at least :math:`n\\,\\epsilon^p > 0`.
  """
  if not eps > 0:
    raise ValueError(f"eps must be > 0, got {eps}")
  if not power >= 0:
    raise ValueError(f"power must be >= 0, got {power}")
  losses = jnp.asarray(span_losses, jnp.float32)
  if losses.shape != (spans.NUM_SPAN_TYPES,):
    raise ValueError(f"span_losses must have shape ({spans.NUM_SPAN_TYPES},), got {losses.shape}")
  active = jnp.asarray(span_weight_vector(span_weights)) > 0
  seen = jnp.ones_like(active) if span_seen is None else jnp.asarray(span_seen, bool)
  known = active & seen
  fill = jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(jnp.sum(known), 1)
  filled = jnp.where(seen, jnp.maximum(losses, 0.0), fill)
  score = jnp.where(active, (filled + eps) ** power, 0.0)
  n = jnp.sum(active)
  return jax.lax.stop_gradient(n * score / jnp.maximum(jnp.sum(score), eps ** power))


def adaptive(span_ids: chex.Array, span_weights: Any, span_losses: chex.Array,
             span_seen: chex.Array | None = None, *, power: float = 1.0,
             eps: float = 1e-6) -> jax.Array:
  """Span types with a larger running loss weigh more: :math:`w = \\lambda_s f_s`.

  The factors :math:`f_k` are :func:`adaptive_factors` of the running per-span
  losses kept in :class:`~sad_jax.objective._state.SADState` (``span_losses``, ``span_seen``).

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    span_losses: ``[NUM_SPAN_TYPES]`` running losses.
    span_seen: ``[NUM_SPAN_TYPES]`` bool, which running losses hold a value.
    power: :math:`p \\ge 0` (``weighting_params.adaptive_power``; 0 gives uniform).
    eps: :math:`\\epsilon > 0` (``weighting_params.adaptive_eps``).
  """
  f = adaptive_factors(span_losses, span_weights, span_seen, power=power, eps=eps)
  lam_tok = _lambda(span_ids, span_weights)
  return _finish(lam_tok, spans.span_masks(span_ids).astype(jnp.float32) @ f)


def curriculum_ramp(progress: chex.Array, schedule: str = "linear") -> jax.Array:
  """Ramp :math:`r(s) \\in [0, 1]` of training progress :math:`s \\in [0, 1]`.

  ``linear``: :math:`r = s`; ``cosine``: :math:`r = (1 - \\cos \\pi s) / 2`;
  ``step``: :math:`r = [s \\ge 1]` (two phases).
  """
  s = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if schedule == "linear":
    return s
  if schedule == "cosine":
    return 0.5 * (1.0 - jnp.cos(jnp.pi * s))
  if schedule == "step":
    return (s >= 1.0).astype(jnp.float32)
  raise ValueError(f"schedule = {schedule!r} is invalid; allowed: "
                   f"{', '.join(repr(x) for x in config_lib.CURRICULUM_SCHEDULES)}")


def curriculum(span_ids: chex.Array, span_weights: Any, progress: chex.Array, *,
               schedule: str = "linear", first: str = "action",
               start_factor: float = 0.1) -> jax.Array:
  """Curriculum over training progress: one of reasoning/action first, then both.

  With ``first="action"`` (the default: learn to act, then to reason):

  .. math::
    f = \\begin{cases} 1 & s = \\text{ACTION (or any type but REASONING)} \\\\
    f_0 + (1 - f_0)\\, r(\\text{progress}) & s = \\text{REASONING} \\end{cases}

  and the roles swap with ``first="reasoning"``. :math:`r` is
  :func:`curriculum_ramp`; progress is ``SADState.curriculum_progress``.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    progress: ``[]`` training progress in ``[0, 1]``.
    schedule: ``linear | cosine | step``.
    first: ``action | reasoning``, the span type trained at full weight from the start.
    start_factor: :math:`f_0 \\in (0, 1]`, the factor of the other type at progress 0.
  """
  if first not in config_lib.CURRICULUM_FIRST:
    raise ValueError(f"first = {first!r} is invalid; allowed: 'action', 'reasoning'")
  if not 0 < start_factor <= 1:
    raise ValueError(f"start_factor must lie in (0, 1], got {start_factor}")
  later = SpanType.REASONING if first == "action" else SpanType.ACTION
  ramp = curriculum_ramp(progress, schedule)
  f = jnp.where(jnp.asarray(span_ids) == later, start_factor + (1.0 - start_factor) * ramp, 1.0)
  return _finish(_lambda(span_ids, span_weights), f)


def confidence_based(span_ids: chex.Array, span_weights: Any, teacher_entropy: chex.Array, *,
                     vocab_size: int, floor: float = 0.1) -> jax.Array:
  """Tokens where the teacher is confident weigh more.

  .. math::
    c = 1 - \\frac{H(p_T)}{\\log V} \\in [0, 1], \\qquad f = f_0 + (1 - f_0)\\, c

  so a one-hot teacher gets factor 1 and a uniform one :math:`f_0`.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    teacher_entropy: ``[B, T]`` teacher entropy :math:`H(p_T)` in nats.
    vocab_size: :math:`V \\ge 2`.
    floor: :math:`f_0 \\in (0, 1]` (``weighting_params.confidence_floor``).
  """
  if not 0 < floor <= 1:
    raise ValueError(f"floor must lie in (0, 1], got {floor}")
  if vocab_size < 2:
    raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
  h = jnp.asarray(teacher_entropy, jnp.float32)
  if h.shape != jnp.shape(span_ids):
    raise ValueError(f"teacher_entropy shape {h.shape} must equal span_ids shape "
                     f"{jnp.shape(span_ids)}")
  conf = jnp.clip(1.0 - h / np.log(vocab_size), 0.0, 1.0)
  return _finish(_lambda(span_ids, span_weights), floor + (1.0 - floor) * conf)


def difficulty_aware(span_ids: chex.Array, span_weights: Any, disagreement: chex.Array, *,
                     scale: float = 1.0) -> jax.Array:
  """Tokens where the student disagrees with the teacher weigh more.

  .. math::
    f = 1 + \\gamma\\, d, \\qquad d = \\mathrm{TV}(p_T, p_S) = \\tfrac12 \\lVert p_T - p_S \\rVert_1
    \\in [0, 1]

  (the objective passes the total variation at :math:`T = 1`; any non-negative
  per-token disagreement works). No gradient flows through :math:`d`.

  Args:
    span_ids: ``[B, T]`` int span types.
    span_weights: :math:`\\lambda`.
    disagreement: ``[B, T]`` non-negative disagreement :math:`d`.
    scale: :math:`\\gamma \\ge 0` (``weighting_params.difficulty_scale``).
  """
  if not scale >= 0:
    raise ValueError(f"scale must be >= 0, got {scale}")
  d = jnp.asarray(disagreement, jnp.float32)
  if d.shape != jnp.shape(span_ids):
    raise ValueError(f"disagreement shape {d.shape} must equal span_ids shape "
                     f"{jnp.shape(span_ids)}")
  return _finish(_lambda(span_ids, span_weights), 1.0 + scale * jnp.maximum(d, 0.0))


def token_weights(span_ids: chex.Array, config, state, *,
                  teacher_entropy: chex.Array | None = None,
                  disagreement: chex.Array | None = None,
                  vocab_size: int | None = None) -> jax.Array:
  """Weights ``[B, T]`` of the strategy ``config.weighting`` with its parameters.

  The entry point every loss path shares (dense, sparse teacher, fused lm head).

  Args:
    span_ids: ``[B, T]`` int span types.
    config: the objective config.
    state: :class:`~sad_jax.objective._state.SADState` (running span losses, curriculum progress).
    teacher_entropy: ``[B, T]``, required by ``confidence_based``.
    disagreement: ``[B, T]``, required by ``difficulty_aware``.
    vocab_size: required by ``confidence_based``.

  Returns:
    ``float32 [B, T]`` weights, under ``stop_gradient``.
  """
  name = config.weighting
  p = config.weighting_params
  lam = config.span_weights
  if name == "uniform":
    return uniform(span_ids, lam)
  if name == "reasoning_heavy":
    return reasoning_heavy(span_ids, lam, factor=p.heavy_factor)
  if name == "action_heavy":
    return action_heavy(span_ids, lam, factor=p.heavy_factor)
  if name == "adaptive":
    return adaptive(span_ids, lam, state.span_losses, state.span_seen,
                    power=p.adaptive_power, eps=p.adaptive_eps)
  if name == "curriculum":
    c = config.curriculum
    return curriculum(span_ids, lam, state.curriculum_progress, schedule=c.schedule,
                      first=c.first, start_factor=c.start_factor)
  if name == "confidence_based":
    if teacher_entropy is None or vocab_size is None:
      raise ValueError("weighting 'confidence_based' needs teacher_entropy and vocab_size")
    return confidence_based(span_ids, lam, teacher_entropy, vocab_size=vocab_size,
                            floor=p.confidence_floor)
  if name == "difficulty_aware":
    if disagreement is None:
      raise ValueError("weighting 'difficulty_aware' needs disagreement")
    return difficulty_aware(span_ids, lam, disagreement, scale=p.difficulty_scale)
  raise ValueError(f"config.weighting = {name!r} is invalid; allowed: "
                   f"{', '.join(repr(s) for s in STRATEGIES)}")
