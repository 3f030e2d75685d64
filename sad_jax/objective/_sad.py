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

This is written once, in :func:`compose`. Every reduction is linear in :math:`\\ell`
once the weights are known, ``loss = sum(c * ell)`` with the per-token coefficients of
:func:`token_coefficients`; what touches the vocabulary (the per-token terms and the
teacher statistics) goes through a backend (:mod:`sad_jax.backends`: dense,
vocab-parallel, fused), so every path gives the same loss, metrics and next state. A
non-finite student or teacher input, or a non-finite weight, on a trained token makes
the loss non-finite (the train step's guard then skips and counts the step).
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sad_jax.losses import _regularizers as regularizers
from sad_jax.losses._cross_entropy import hard_label_ce
from sad_jax.objective import _config as config_lib
from sad_jax.objective import _spans as spans
from sad_jax.objective import _state as state_lib
from sad_jax.objective import _weighting as weighting

Metrics = dict[str, tuple[jax.Array, jax.Array]]
_TEACHER_WEIGHTINGS = ("confidence_based", "difficulty_aware")


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def token_coefficients(weights: chex.Array, span_ids: chex.Array, *, normalization: str,
                       where: chex.Array | None = None, axis_name=None,
                       normalizer: chex.Array | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """Per-token coefficients :math:`c` of the reduction: ``loss = sum(c * per_token)``.

  Every normalization is linear in the per-token loss once the weights are fixed:
  ``tokens`` :math:`c = w / N`; ``span_mean`` :math:`c = w / N_{s}` (the trained
  tokens of the token's span type); ``sequence`` :math:`c = w / (n_b R)` (the row's
  trained tokens, the rows with any). The denominators are psum-ed over ``axis_name``,
  or taken from ``normalizer`` (:func:`loss_normalizer` of the full batch).

  Args:
    weights: ``[B, T]`` token weights :math:`w`.
    span_ids: ``[B, T]`` int span types.
    normalization: ``tokens | span_mean | sequence``.
    where: ``[B, T]`` bool trained tokens (default ``weights > 0``).
    axis_name: mapped axis (or axes) of a batch split.
    normalizer: the full batch's denominator.

  Returns:
    ``(c, counts)``: ``float32 [B, T]`` coefficients (0 off ``where``, no gradient)
    and the ``[NUM_SPAN_TYPES]`` trained-token counts (psum-ed).
  """
  weights = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
  trained = weights > 0 if where is None else jnp.asarray(where, bool)
  counts = _psum(spans.span_counts(span_ids, where=trained), axis_name)
  norm = None if normalizer is None else jnp.asarray(normalizer, jnp.float32)
  if normalization == "tokens":
    c = weights / jnp.maximum(jnp.sum(counts) if norm is None else norm, 1.0)
  elif normalization == "span_mean":
    denom = counts if norm is None else norm
    ids = jnp.clip(jnp.asarray(span_ids), 0, spans.NUM_SPAN_TYPES - 1)
    c = weights / jnp.maximum(denom, 1.0)[ids]
  elif normalization == "sequence":
    row_counts = trained.sum(axis=-1).astype(jnp.float32)
    rows = (_psum(jnp.sum(row_counts > 0).astype(jnp.float32), axis_name)
            if norm is None else norm)
    c = weights / jnp.maximum(row_counts, 1.0)[:, None] / jnp.maximum(rows, 1.0)
  else:
    raise ValueError(f"normalization = {normalization!r} is invalid; allowed: "
                     f"{', '.join(repr(n) for n in config_lib.NORMALIZATIONS)}")
  return jax.lax.stop_gradient(jnp.where(trained, c, 0.0)), counts


def reduce_tokens(per_token: chex.Array, weights: chex.Array, span_ids: chex.Array, *,
                  normalization: str, axis_name: str | None = None,
                  normalizer: chex.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reduces per-token losses to the scalar objective with exact global normalization.

  For a loss computed outside :func:`sad_loss`: compute ``per_token`` and ``weights``
  any way, then call this (it is the reduction :func:`sad_loss` applies).

  Args:
    per_token: ``[B, T]`` per-token loss :math:`\\ell`.
    weights: ``[B, T]`` token weights :math:`w \\ge 0` (e.g. from
      :func:`sad_jax.objective.token_weights`); trained tokens are :math:`w > 0`.
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
  c, counts = token_coefficients(weights, span_ids, normalization=normalization,
                                 where=trained, axis_name=axis_name, normalizer=normalizer)
  loss = _psum(jnp.sum(jnp.where(trained, c * per_token, 0.0)), axis_name)
  sums = _psum(spans.span_sums(jnp.where(trained, weights * per_token, 0.0), span_ids),
               axis_name)
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
  return batch_normalizer(span_ids, config_lib.resolve(config))


def batch_normalizer(span_ids: chex.Array, config) -> jax.Array:
  """:func:`loss_normalizer` for an already validated config (no config work, for traced
  code such as :meth:`sad_jax.objective.SADLoss.normalizer`)."""
  trained = weighting.uniform(span_ids, config.span_weights) > 0
  counts = spans.span_counts(span_ids, where=trained)
  if config.normalization == "tokens":
    return jnp.sum(counts)
  if config.normalization == "span_mean":
    return counts
  return jnp.sum(jnp.any(trained, axis=-1)).astype(jnp.float32)


def _check_span_ids(span_ids, shape):
  if jnp.shape(span_ids) != tuple(shape):
    raise ValueError(f"span_ids shape {jnp.shape(span_ids)} must equal the student's "
                     f"[B, T] = {tuple(shape)}")
  if not jnp.issubdtype(jnp.asarray(span_ids).dtype, jnp.integer):
    raise TypeError(f"span_ids must be integers, got dtype {jnp.asarray(span_ids).dtype}")


def compose(student, teacher: Any, span_ids: chex.Array, state: state_lib.SADState, config,
            *, backend, labels: chex.Array | None = None, axis_name=None,
            normalizer: chex.Array | None = None, update_state: bool = True,
            moe_scale: float = 1.0, token_factors: chex.Array | None = None
            ) -> tuple[jax.Array, tuple[Metrics, state_lib.SADState]]:
  """The one composition of the objective, for a *validated* config and a backend.

  :func:`sad_loss` and :class:`sad_jax.objective.SADLoss` call it; it does no config
  work (the config was merged and validated when the loss was built). ``student`` is
  a :class:`~sad_jax.objective.ModelOutput`; the other arguments are those of
  :func:`sad_loss`, plus ``moe_scale`` (the MoE coefficient's factor, ``1 / M`` for
  ``M`` micro-batches) and ``token_factors``: optional ``[B, T]`` factors, strictly
  positive on trained tokens and without gradient (e.g. the turn-aware factors of
  :mod:`sad_jax.objective._turns`), multiplied into the strategy's token weights.
  """
  from sad_jax.backends import _base as backend_base  # pylint: disable=g-import-not-at-top
  shape = backend.token_shape(student)
  _check_span_ids(span_ids, shape)
  span_ids = jnp.asarray(span_ids)
  terms = backend_base.Terms.from_config(config)
  if terms.divergence is not None:
    if teacher is None:
      raise ValueError(f"config.divergence_weight = {config.divergence_weight} needs a "
                       "teacher (set it to 0 for a loss without one)")
    backend.check(config, backend_base.teacher_kind(teacher))
    teacher = jax.tree.map(jax.lax.stop_gradient, teacher)
  else:
    teacher = None
  if labels is None and config.hard_label_weight > 0:
    raise ValueError(f"config.hard_label_weight = {config.hard_label_weight} needs labels")
  if labels is not None:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape != tuple(shape):
      raise ValueError(f"labels shape {labels.shape} must equal the token shape {tuple(shape)}")
  base = weighting.uniform(span_ids, config.span_weights) > 0
  stats = None
  names = config_lib.statistic_names(config)
  if teacher is not None and config.weighting in _TEACHER_WEIGHTINGS:
    stats = backend.statistics(student, teacher, base, names)
  weights = weighting.token_weights(
      span_ids, config, state,
      teacher_entropy=None if stats is None else stats.get("teacher_entropy"),
      disagreement=None if stats is None else stats.get("total_variation"),
      vocab_size=backend.vocab_size(student))
  if token_factors is not None:
    if jnp.shape(token_factors) != span_ids.shape:
      raise ValueError(f"token_factors shape {jnp.shape(token_factors)} must equal span_ids "
                       f"shape {span_ids.shape}")
    factors = jax.lax.stop_gradient(jnp.asarray(token_factors, jnp.float32))
    weights = jnp.where(base, weights * factors, 0.0)
  coefficients, counts = token_coefficients(
      weights, span_ids, normalization=config.normalization, where=base,
      axis_name=axis_name, normalizer=normalizer)
  temperature = jax.lax.stop_gradient(state.temperature)
  loss, values = backend.terms(
      student, teacher, terms, where=base, coefficients=coefficients,
      temperature=temperature, labels=labels, span_ids=span_ids, axis_name=axis_name,
      statistics=base if teacher is not None and stats is None else None,
      statistic_names=names)
  values = dict(values)
  if teacher is not None and stats is None:
    stats = {k: values.pop(k) for k in names}
  per_token = values.pop("loss")
  # A non-finite teacher / student value or weight on a trained token poisons the
  # step (the guard skips it) instead of vanishing in a mask.
  finite = jnp.isfinite(weights) & values.pop("finite")
  bad = base & ~finite
  poisoned = _psum(jnp.sum(bad), axis_name) > 0
  loss = jnp.where(poisoned, jnp.nan, loss)
  per_token = jnp.where(bad, jnp.nan, per_token)

  def pair(v):
    return (_psum(spans.span_sums(jax.lax.stop_gradient(v), span_ids), axis_name), counts)

  metrics: Metrics = {"loss": pair(jnp.where(base, weights * per_token, 0.0)),
                      "weight": pair(weights)}
  metrics.update({k: pair(v) for k, v in values.items() if k != "entropy"})
  if stats is not None:
    metrics.update({k: pair(v) for k, v in stats.items()})

  reg = config.regularizers
  if reg.moe_load_balance > 0:
    if student.router_logits is None or student.expert_ids is None:
      raise ValueError(f"config.regularizers.moe_load_balance = {reg.moe_load_balance} needs "
                       "router_logits and expert_ids (ModelOutput fields)")
    moe, moe_per_span, moe_counts = regularizers.moe_load_balance(
        student.router_logits, student.expert_ids, span_ids, axis_name=axis_name)
    loss = loss + reg.moe_load_balance * moe_scale * moe
    metrics["moe_load_balance"] = (jax.lax.stop_gradient(moe_per_span * moe_counts), moe_counts)

  new_state = state_lib.update_state(state, metrics, config) if update_state else state
  return loss, (metrics, new_state)


def sad_loss(student_logits: chex.Array, teacher: Any, span_ids: chex.Array,
             state: state_lib.SADState, config, *, labels: chex.Array | None = None,
             axis_name: str | None = None, router_logits: chex.Array | None = None,
             expert_ids: chex.Array | None = None, normalizer: chex.Array | None = None,
             update_state: bool = True, backend=None
             ) -> tuple[jax.Array, tuple[Metrics, state_lib.SADState]]:
  """The Structured Agent Distillation loss, its metrics and the next state.

  Pure and jittable; use with ``jax.value_and_grad(..., has_aux=True)``. The
  config is static (close over it; ``ConfigDict`` is not a pytree); it is merged and
  validated on every call, so inside a training loop build a
  :class:`sad_jax.objective.SADLoss` once instead. See the module docstring for the math.

  Args:
    student_logits: ``[B, T, V]`` student logits (any float dtype), or a
      :class:`~sad_jax.objective.ModelOutput` (e.g. hidden states and head for the
      fused backend).
    teacher: ``[B, T, V]`` teacher logits, or a :class:`~sad_jax.losses.SparseTeacher`
      (``[B, T, K]`` leaves, e.g. from :mod:`sad_jax.data.teacher_cache`) when the
      configured divergence accepts one (``SPARSE_DIVERGENCES``); the teacher
      statistics then live on its tail policy's support (see
      :func:`sad_jax.backends.dense_statistics`). Stop-gradient is applied.
      ``None`` when ``divergence_weight = 0``.
    span_ids: ``[B, T]`` int :class:`~sad_jax.objective.SpanType` per token, per row.
    state: :class:`~sad_jax.objective.SADState` (temperature, running losses, ...).
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
      optimizer step with :func:`sad_jax.objective.update_state` on summed metrics).
    backend: the vocabulary backend (default dense; see :mod:`sad_jax.backends`).

  Returns:
    ``(loss, (metrics, new_state))``: the float32 scalar loss; ``metrics`` maps
    names to ``(sum, count)`` pairs of ``[NUM_SPAN_TYPES]`` arrays over trained
    tokens (see :func:`finalize_metrics`); ``new_state``.

  Examples:
    One row of four tokens (prompt, reasoning, action, observation); the default
    config trains the reasoning and the action token, each with KL = 0.1308:

    >>> import jax.numpy as jnp
    >>> import sad_jax
    >>> from sad_jax import objective
    >>> cfg = objective.default_config()            # span_mean: L_CoT + L_Act
    >>> teacher = jnp.log(jnp.array([0.75, 0.25])) * jnp.ones((1, 4, 2))
    >>> student = jnp.zeros((1, 4, 2))
    >>> span_ids = jnp.array([[1, 2, 3, 4]])
    >>> loss, (metrics, state) = sad_jax.sad_loss(student, teacher, span_ids,
    ...                                           sad_jax.init_state(cfg), cfg)
    >>> f"{float(loss):.4f}"
    '0.2616'
    >>> m = objective.finalize_metrics(metrics)
    >>> f"{m['kl_t1/reasoning']:.4f} {m['kl_t1/action']:.4f}", int(state.step)
    ('0.1308 0.1308', 1)
  """
  from sad_jax import backends as backends_lib  # pylint: disable=g-import-not-at-top
  from sad_jax.objective import _loss as loss_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(config)
  backend = backends_lib.get_backend(backend)
  backend.check(config)
  student = loss_lib.as_model_output(student_logits, what="student_logits")
  if router_logits is not None or expert_ids is not None:
    student = loss_lib.ModelOutput(**dict(vars(student), router_logits=router_logits,
                                          expert_ids=expert_ids))
  return compose(student, teacher, span_ids, state, config, backend=backend, labels=labels,
                 axis_name=axis_name, normalizer=normalizer, update_state=update_state)


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


__all__ = ["compose", "sad_loss", "reduce_tokens", "loss_normalizer", "token_coefficients",
           "hard_label_ce", "merge_metrics", "finalize_metrics"]
