"""The Structured Agent Distillation objective.

:func:`sad_loss` composes a divergence (:mod:`sad_jax.losses._divergences`), span
weights (:mod:`sad_jax.objective._weighting`), optional terms (:mod:`sad_jax.losses._regularizers`,
hard-label cross-entropy) and the state rules (:mod:`sad_jax.objective._state`) into one pure,
jittable function:

.. math::
  \\ell_{bt} = s_T\\, D_T(p_T \\| p_S)_{bt} + \\alpha\\, \\mathrm{CE}_\\epsilon(y_{bt}, p_S)
  - c_H\\, H(p_S)_{bt} + c_{CP}\\, \\mathrm{CP}_{bt} + c_{SC}\\, \\mathrm{SC}_{bt},
  \\qquad s_T = T^2 \\text{ if scale\\_by\\_t2 else } 1

with token weights :math:`w_{bt} = \\lambda_{s_{bt}} f_{bt}` (:mod:`sad_jax.objective._weighting`),
reduced by ``config.normalization`` (:func:`reduce_tokens`):

* ``tokens``: :math:`\\sum_{bt} w_{bt} \\ell_{bt} / \\sum_{bt} [w_{bt} > 0]`;
* ``span_mean``: :math:`\\sum_k \\big(\\sum_{s_{bt} = k} w_{bt} \\ell_{bt}\\big) /
  \\sum_{s_{bt} = k} [w_{bt} > 0]`, i.e. :math:`\\sum_k \\lambda_k \\cdot
  \\mathrm{mean}_k(f \\ell)` -- the paper's :math:`\\lambda_r L_{CoT} + \\lambda_a L_{Act}`;
* ``sequence``: each row's ``tokens`` mean, averaged over the rows with a trained token;

plus :math:`c_{MoE} L_{MoE}` (:func:`sad_jax.losses._regularizers.moe_load_balance`) for MoE
students. A batch without trained tokens gives exactly 0 (and zero gradients).
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as divergences
from sad_jax.losses import _regularizers as regularizers
from sad_jax.losses import _sparse as sparse
from sad_jax.objective import _spans as spans
from sad_jax.objective import _state as state_lib
from sad_jax.objective import _weighting as weighting

Metrics = dict[str, tuple[jax.Array, jax.Array]]


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def teacher_statistics(student_logits: chex.Array, teacher: Any,
                       where: chex.Array) -> dict[str, jax.Array]:
  """Per-token statistics at :math:`T = 1`, all ``float32 [B, T]`` without gradient.

  ``teacher_entropy`` :math:`H(p_T)`, ``student_entropy`` :math:`H(p_S)`,
  ``kl_t1`` :math:`KL(p_T \\| p_S)`, ``agreement`` :math:`[\\arg\\max p_S =
  \\arg\\max p_T]` and ``total_variation`` :math:`\\tfrac12 \\lVert p_T - p_S \\rVert_1`.
  They feed the metrics, the adaptive temperature and the ``confidence_based`` /
  ``difficulty_aware`` strategies. Tokens outside ``where`` give 0.

  For a :class:`~sad_jax.losses._sparse.SparseTeacher`, ``teacher_entropy``, ``kl_t1`` and
  ``total_variation`` are computed on the support of its tail policy at
  :math:`T = 1` (:func:`sad_jax.losses._sparse.reduce_to_support`: the top-k entries, plus
  the tail bucket for ``tail_bucket`` / ``renormalize_teacher``), where the tail
  counts as one token; the teacher entropy is therefore a lower bound of the full
  one. ``student_entropy`` (full vocabulary) and ``agreement`` (the teacher's
  argmax is its most likely stored index) are exact. With ``K = V`` every
  statistic equals the dense one.

  Args:
    student_logits: ``[B, T, V]``.
    teacher: dense teacher logits ``[B, T, V]`` or a
      :class:`~sad_jax.losses._sparse.SparseTeacher` with ``[B, T, K]`` leaves.
    where: ``[B, T]`` bool, the trained tokens.
  """
  where = jnp.asarray(where, bool)
  s = jnp.where(where[..., None], jax.lax.stop_gradient(student_logits), 0.0)
  log_q = jax.nn.log_softmax(s.astype(jnp.float32), axis=-1)
  student_entropy = _entropy(log_q)
  if isinstance(teacher, sparse.SparseTeacher):
    teacher = jax.lax.stop_gradient(teacher)
    log_q_support, log_p = sparse.reduce_to_support(s.astype(jnp.float32), teacher, 1.0,
                                                    where)
    top = jnp.take_along_axis(jnp.asarray(teacher.indices),
                              jnp.argmax(teacher.logprobs, axis=-1)[..., None], axis=-1)
    agreement = jnp.argmax(s, axis=-1) == top[..., 0]
  else:
    if not (hasattr(teacher, "shape") and hasattr(teacher, "dtype")):
      raise TypeError(f"teacher statistics need dense teacher logits [B, T, V] or a "
                      f"SparseTeacher, got {type(teacher).__name__}")
    if teacher.shape[-1] != student_logits.shape[-1]:
      raise ValueError(f"student vocab size {student_logits.shape[-1]} != teacher vocab "
                       f"size {teacher.shape[-1]}; pad the smaller one with sad_jax.pad_vocab")
    if teacher.shape != student_logits.shape:
      raise ValueError(f"teacher shape {teacher.shape} must equal student_logits shape "
                       f"{student_logits.shape}")
    t = jnp.where(where[..., None], jax.lax.stop_gradient(teacher), 0.0)
    log_q_support = log_q
    log_p = jax.nn.log_softmax(t.astype(jnp.float32), axis=-1)
    agreement = jnp.argmax(s, axis=-1) == jnp.argmax(t, axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q_support)
  safe_p = jnp.where(p > 0, log_p, 0.0)
  stats = dict(
      teacher_entropy=_entropy(log_p),
      student_entropy=student_entropy,
      kl_t1=jnp.sum(jnp.where(p > 0, p * (safe_p - jnp.where(p > 0, log_q_support, 0.0)),
                              0.0), axis=-1),
      agreement=agreement.astype(jnp.float32),
      total_variation=0.5 * jnp.sum(jnp.abs(p - q), axis=-1),
  )
  return {k: jnp.where(where, v, 0.0) for k, v in stats.items()}


def _entropy(log_p: jax.Array) -> jax.Array:
  """:math:`-\\sum_i p_i \\log p_i` over the last axis, with :math:`0 \\log 0 = 0`."""
  p = jnp.exp(log_p)
  return -jnp.sum(p * jnp.where(p > 0, log_p, 0.0), axis=-1)


def hard_label_ce(student_logits: chex.Array, labels: chex.Array, *,
                  label_smoothing: float = 0.0, where: chex.Array | None = None) -> jax.Array:
  """Cross-entropy with the hard labels, with label smoothing, per token.

  .. math::
    \\mathrm{CE}_\\epsilon = -(1 - \\epsilon) \\log q_y - \\frac{\\epsilon}{|\\mathcal V|}
    \\sum_{v \\in \\mathcal V} \\log q_v

  where :math:`\\mathcal V` are the vocabulary entries with finite logits (tokens
  masked with :math:`-\\infty` get no smoothing mass).

  Args:
    student_logits: ``[B, T, V]``.
    labels: ``[B, T]`` int targets (any value on masked tokens).
    label_smoothing: :math:`\\epsilon \\in [0, 1)`.
    where: optional ``[B, T]`` bool; masked tokens give 0 with zero gradient.

  Returns:
    ``float32 [B, T]``.
  """
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.shape != jnp.shape(student_logits)[:-1]:
    raise ValueError(f"labels shape {labels.shape} must equal the token shape "
                     f"{jnp.shape(student_logits)[:-1]}")
  if not 0 <= label_smoothing < 1:
    raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
  x = jnp.asarray(student_logits).astype(jnp.float32)
  if where is not None:
    where = jnp.asarray(where, bool)
    x = jnp.where(where[..., None], x, 0.0)
  vocab = x.shape[-1]
  log_q = jax.nn.log_softmax(x, axis=-1)
  idx = jnp.clip(labels, 0, vocab - 1)[..., None]
  ce = -jnp.take_along_axis(log_q, idx, axis=-1)[..., 0]
  if label_smoothing > 0:
    finite = jnp.isfinite(log_q)
    mean_log = jnp.sum(jnp.where(finite, log_q, 0.0), -1) / jnp.maximum(finite.sum(-1), 1)
    ce = (1.0 - label_smoothing) * ce - label_smoothing * mean_log
  return ce if where is None else jnp.where(where, ce, 0.0)


def reduce_tokens(per_token: chex.Array, weights: chex.Array, span_ids: chex.Array, *,
                  normalization: str, axis_name: str | None = None,
                  normalizer: chex.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reduces per-token losses to the scalar objective with exact global normalization.

  Shared by every loss path (dense, sparse teacher, fused lm head): compute
  ``per_token`` and ``weights`` any way, then call this.

  Args:
    per_token: ``[B, T]`` per-token loss :math:`\\ell`.
    weights: ``[B, T]`` token weights :math:`w \\ge 0` (e.g. from
      :func:`sad_jax.objective._weighting.token_weights`); trained tokens are :math:`w > 0`.
    span_ids: ``[B, T]`` int span types.
    normalization: ``tokens | span_mean | sequence`` (see the module docstring).
    axis_name: if given, sums and counts are psum-ed over it, so every device gets
      the exact global loss.
    normalizer: optional denominator from :func:`loss_normalizer` on the *full*
      (global) batch; used instead of this call's counts (not psum-ed). With it,
      the losses and gradients of micro-batches add up exactly to the full batch's.

  Returns:
    ``(loss, sums, counts)``: the scalar loss and, per span type
    (``[NUM_SPAN_TYPES]``), :math:`\\sum w \\ell` and :math:`\\sum [w > 0]` (psum-ed).
  """
  per_token = jnp.asarray(per_token, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if per_token.shape != weights.shape or per_token.shape != jnp.shape(span_ids):
    raise ValueError(f"per_token {per_token.shape}, weights {weights.shape} and span_ids "
                     f"{jnp.shape(span_ids)} must have the same [B, T] shape")
  trained = weights > 0
  contrib = jnp.where(trained, weights * per_token, 0.0)
  sums = _psum(spans.span_sums(contrib, span_ids), axis_name)
  counts = _psum(spans.span_counts(span_ids, where=trained), axis_name)
  if normalization == "tokens":
    denom = jnp.sum(counts) if normalizer is None else jnp.asarray(normalizer, jnp.float32)
    loss = jnp.sum(sums) / jnp.maximum(denom, 1.0)
  elif normalization == "span_mean":
    denom = counts if normalizer is None else jnp.asarray(normalizer, jnp.float32)
    loss = jnp.sum(sums / jnp.maximum(denom, 1.0))
  elif normalization == "sequence":
    row_sums = contrib.sum(axis=-1)
    row_counts = trained.sum(axis=-1).astype(jnp.float32)
    row_means = row_sums / jnp.maximum(row_counts, 1.0)
    total = _psum(jnp.sum(row_means), axis_name)
    rows = (_psum(jnp.sum(row_counts > 0).astype(jnp.float32), axis_name)
            if normalizer is None else jnp.asarray(normalizer, jnp.float32))
    loss = total / jnp.maximum(rows, 1.0)
  else:
    raise ValueError(f"normalization = {normalization!r} is invalid; allowed: "
                     f"{', '.join(repr(n) for n in config_lib.NORMALIZATIONS)}")
  return loss, sums, counts


def loss_normalizer(span_ids: chex.Array, config) -> jax.Array:
  """The denominator of ``config.normalization`` for a (full, global) batch.

  Depends only on the span ids and :math:`\\lambda` (every strategy's factor is
  positive), so the train step computes it once per step, before splitting the
  batch into micro-batches, and passes it to each ``sad_loss(..., normalizer=)``.

  Returns:
    ``tokens``: ``[]`` number of trained tokens; ``span_mean``:
    ``[NUM_SPAN_TYPES]`` trained tokens per type; ``sequence``: ``[]`` rows with a
    trained token.
  """
  config = config_lib.resolve(config)
  trained = weighting.uniform(span_ids, config.span_weights) > 0
  counts = spans.span_counts(span_ids, where=trained)
  if config.normalization == "tokens":
    return jnp.sum(counts)
  if config.normalization == "span_mean":
    return counts
  return jnp.sum(jnp.any(trained, axis=-1)).astype(jnp.float32)


def _check_inputs(student_logits, span_ids):
  s = jnp.asarray(student_logits)
  if not jnp.issubdtype(s.dtype, jnp.floating):
    raise TypeError(f"student_logits must be floating point, got dtype {s.dtype}")
  if s.ndim != 3:
    raise ValueError(f"student_logits must be [B, T, V], got shape {s.shape}")
  if jnp.shape(span_ids) != s.shape[:2]:
    raise ValueError(f"span_ids shape {jnp.shape(span_ids)} must equal student_logits' "
                     f"[B, T] = {s.shape[:2]}")
  if not jnp.issubdtype(jnp.asarray(span_ids).dtype, jnp.integer):
    raise TypeError(f"span_ids must be integers, got dtype {jnp.asarray(span_ids).dtype}")
  return s


def sad_loss(student_logits: chex.Array, teacher: Any, span_ids: chex.Array,
             state: state_lib.SADState, config, *, labels: chex.Array | None = None,
             axis_name: str | None = None, router_logits: chex.Array | None = None,
             expert_ids: chex.Array | None = None, normalizer: chex.Array | None = None,
             update_state: bool = True) -> tuple[jax.Array, tuple[Metrics, state_lib.SADState]]:
  """The Structured Agent Distillation loss, its metrics and the next state.

  Pure and jittable; use with ``jax.value_and_grad(..., has_aux=True)``. The
  config is static (close over it; ``ConfigDict`` is not a pytree). See the module
  docstring for the math.

  Args:
    student_logits: ``[B, T, V]`` student logits (any float dtype).
    teacher: ``[B, T, V]`` teacher logits, or a :class:`~sad_jax.losses._sparse.SparseTeacher`
      (``[B, T, K]`` leaves, e.g. from :mod:`sad_jax.data.teacher_cache`) when the
      configured divergence accepts one (``divergences.SPARSE_DIVERGENCES``); the
      teacher statistics then live on its tail policy's support (see
      :func:`teacher_statistics`). Stop-gradient is applied.
    span_ids: ``[B, T]`` int :class:`~sad_jax.objective._spans.SpanType` per token, per row.
    state: :class:`~sad_jax.objective._state.SADState` (temperature, running losses, ...).
    config: the objective config (``ConfigDict`` or a mapping of overrides).
    labels: ``[B, T]`` int hard labels; required when ``hard_label_weight > 0``
      (when given, their cross-entropy is reported in the metrics either way).
    axis_name: under ``shard_map``/``pmap`` over the batch, the mapped axis name:
      sums and counts are psum-ed, so the loss and metrics are the exact global
      ones on every device (and the state stays replicated).
    router_logits: ``[..., B, T, E]`` MoE router logits, required when
      ``regularizers.moe_load_balance > 0``.
    expert_ids: ``[..., B, T, K]`` chosen experts, with ``router_logits``.
    normalizer: the full batch's :func:`loss_normalizer` when this call sees a
      micro-batch (gradient accumulation). The MoE term is per call: with ``M``
      micro-batches scale its coefficient by ``1 / M``.
    update_state: if False, ``new_state`` is ``state`` (advance it once per
      optimizer step with :func:`sad_jax.objective._state.update_state` on summed metrics).

  Returns:
    ``(loss, (metrics, new_state))``: the float32 scalar loss; ``metrics`` maps
    names to ``(sum, count)`` pairs of ``[NUM_SPAN_TYPES]`` arrays over trained
    tokens (see :func:`finalize_metrics`); ``new_state``.
  """
  config = config_lib.resolve(config)
  s = _check_inputs(student_logits, span_ids)
  span_ids = jnp.asarray(span_ids)
  teacher = jax.tree.map(jax.lax.stop_gradient, teacher)
  base = weighting.uniform(span_ids, config.span_weights) > 0
  stats = teacher_statistics(s, teacher, base)
  weights = weighting.token_weights(
      span_ids, config, state, teacher_entropy=stats["teacher_entropy"],
      disagreement=stats["total_variation"], vocab_size=s.shape[-1])
  trained = weights > 0
  temperature = jax.lax.stop_gradient(state.temperature)

  divergence = divergences.get_divergence(config.divergence)(
      s, teacher, temperature=temperature, where=trained, **dict(config.divergence_kwargs))
  scale = jnp.square(temperature) if config.scale_by_t2 else 1.0
  per_token = scale * divergence
  extra: dict[str, jax.Array] = {}
  if labels is not None:
    extra["hard_label_ce"] = hard_label_ce(s, labels, label_smoothing=config.label_smoothing,
                                           where=trained)
    if config.hard_label_weight > 0:
      per_token = per_token + config.hard_label_weight * extra["hard_label_ce"]
  elif config.hard_label_weight > 0:
    raise ValueError(f"config.hard_label_weight = {config.hard_label_weight} needs labels")
  reg = config.regularizers
  if reg.entropy != 0:
    per_token = per_token + reg.entropy * regularizers.entropy_regularizer(s, where=trained)
  if reg.confidence_penalty > 0:
    extra["confidence_penalty"] = regularizers.confidence_penalty(
        s, threshold=reg.confidence_threshold, where=trained)
    per_token = per_token + reg.confidence_penalty * extra["confidence_penalty"]
  if reg.span_consistency > 0:
    extra["span_consistency"] = regularizers.span_consistency(s, span_ids, where=trained)
    per_token = per_token + reg.span_consistency * extra["span_consistency"]

  loss, loss_sums, counts = reduce_tokens(per_token, weights, span_ids,
                                          normalization=config.normalization,
                                          axis_name=axis_name, normalizer=normalizer)

  def pair(values):
    return (_psum(spans.span_sums(jax.lax.stop_gradient(values), span_ids), axis_name), counts)

  metrics: Metrics = {"loss": (jax.lax.stop_gradient(loss_sums), counts),
                      "weight": pair(weights), "divergence": pair(divergence)}
  metrics.update({k: pair(v) for k, v in stats.items()})
  metrics.update({k: pair(v) for k, v in extra.items()})

  if reg.moe_load_balance > 0:
    if router_logits is None or expert_ids is None:
      raise ValueError(f"config.regularizers.moe_load_balance = {reg.moe_load_balance} needs "
                       "router_logits and expert_ids")
    moe, moe_per_span, moe_counts = regularizers.moe_load_balance(
        router_logits, expert_ids, span_ids, axis_name=axis_name)
    loss = loss + reg.moe_load_balance * moe
    metrics["moe_load_balance"] = (jax.lax.stop_gradient(moe_per_span * moe_counts), moe_counts)

  new_state = state_lib.update_state(state, metrics, config) if update_state else state
  return loss, (metrics, new_state)


def merge_metrics(a: Metrics, b: Metrics) -> Metrics:
  """Adds two metric dicts (e.g. of two micro-batches); exact for (sum, count) pairs."""
  return jax.tree.map(jnp.add, a, b)


def finalize_metrics(metrics: Metrics) -> dict[str, float]:
  """Turns (sum, count) metrics into plain numbers for logging (host side).

  For each metric ``name`` and span type with a trained token:
  ``"{name}/{span}"`` = sum / count; ``"{name}/all"`` = the total sum / total count
  over span types; and ``"tokens/{span}"`` = the trained-token count. Span types
  without trained tokens are left out (rather than reported as 0).
  """
  out: dict[str, float] = {}
  token_counts = None
  for name, (sums, counts) in metrics.items():
    sums = np.asarray(jax.device_get(sums), np.float64)
    counts = np.asarray(jax.device_get(counts), np.float64)
    if token_counts is None and name == "loss":
      token_counts = counts
    for k, span in enumerate(spans.SPAN_NAMES):
      if counts[k] > 0:
        out[f"{name}/{span}"] = float(sums[k] / counts[k])
    if counts.sum() > 0:
      out[f"{name}/all"] = float(sums.sum() / counts.sum())
  if token_counts is not None:
    for k, span in enumerate(spans.SPAN_NAMES):
      if token_counts[k] > 0:
        out[f"tokens/{span}"] = float(token_counts[k])
  return out


__all__ = ["sad_loss", "reduce_tokens", "loss_normalizer", "teacher_statistics",
           "hard_label_ce", "merge_metrics", "finalize_metrics"]
