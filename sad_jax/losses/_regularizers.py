"""Optional regularizers of the SAD objective.

Per-token terms (``[B, T]``, reduced by the objective with the same token
weights and normalization as the divergence) and a span-aware MoE
load-balancing loss. Signs are part of the contract:

* :func:`entropy_regularizer` returns :math:`-H(p_S)`; the objective adds
  ``config.regularizers.entropy`` times it, so a **positive coefficient raises the
  student's entropy** and a negative one sharpens it.
* :func:`confidence_penalty` returns :math:`\\max(0, \\tau - H(p_S)) \\ge 0`,
  penalizing over-confident tokens only (Pereyra et al., 2017).
* :func:`span_consistency` returns the squared distance of each token's
  distribution to its span's mean distribution (computed in :math:`O(T)`).
* :func:`moe_load_balance` is the Switch Transformer auxiliary loss, balanced
  within each span type.

Masked tokens (``where=False``) give exactly 0 with zero gradient, even with
non-finite logits there; logits of :math:`-\\infty` (impossible tokens) are
handled with :math:`0 \\log 0 = 0`.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from sad_jax.objective import _spans as spans


def _masked_log_softmax(logits: chex.Array, where: chex.Array | None):
  x = jnp.asarray(logits)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"logits must be a floating-point array, got dtype {x.dtype}")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if where is not None:
    where = jnp.asarray(where, bool)
    if where.shape != x.shape[:-1]:
      raise ValueError(f"where shape {where.shape} must equal the token shape {x.shape[:-1]}")
    x = jnp.where(where[..., None], x, 0.0)
  return jax.nn.log_softmax(x, axis=-1), where


def _mask(value: jax.Array, where) -> jax.Array:
  return value if where is None else jnp.where(where, value, 0.0)


def entropy(logits: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  """Shannon entropy of ``softmax(logits)`` in nats.

  .. math::
    H(p) = -\\sum_i p_i \\log p_i, \\qquad 0 \\log 0 = 0

  Args:
    logits: ``[..., V]`` logits.
    where: optional ``[...]`` bool mask; masked tokens give 0 (zero gradient).

  Returns:
    ``float32 [...]`` entropies in :math:`[0, \\log V]`.
  """
  log_p, where = _masked_log_softmax(logits, where)
  p = jnp.exp(log_p)
  safe = jnp.where(p > 0, log_p, 0.0)
  return _mask(-jnp.sum(p * safe, axis=-1), where)


def entropy_regularizer(logits: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  """Per-token entropy term :math:`-H(p_S)` (to be *minimized*).

  Minimizing :math:`c \\cdot (-H)` with :math:`c > 0` increases the entropy;
  ``config.regularizers.entropy`` is :math:`c`.
  """
  return -entropy(logits, where=where)


def confidence_penalty(logits: chex.Array, *, threshold: float = float("inf"),
                       where: chex.Array | None = None) -> jax.Array:
  """Hinged confidence penalty (Pereyra et al., 2017, "Regularizing Neural Networks
  by Penalizing Confident Output Distributions").

  .. math::
    \\mathrm{CP}(p) = \\max\\big(0,\\ \\min(\\tau, \\log V) - H(p)\\big) \\ge 0

  Only tokens whose entropy is below :math:`\\tau` nats are penalized. With
  :math:`\\tau \\ge \\log V` (the default) it is :math:`\\log V - H(p) =
  KL(p \\| u)`, the un-hinged penalty.

  Args:
    logits: ``[..., V]`` student logits.
    threshold: :math:`\\tau \\ge 0` in nats (``regularizers.confidence_threshold``).
    where: optional ``[...]`` bool mask.

  Returns:
    ``float32 [...]`` non-negative penalties.
  """
  if not threshold >= 0:
    raise ValueError(f"threshold must be >= 0, got {threshold}")
  tau = min(float(threshold), math.log(jnp.shape(logits)[-1]))
  return _mask(jax.nn.relu(tau - entropy(logits, where=where)), where)


def span_consistency(logits: chex.Array, span_ids: chex.Array, *,
                     where: chex.Array | None = None) -> jax.Array:
  """Distance of each token's distribution to the mean distribution of its span type in its row.

  .. math::
    \\bar p_{bk} = \\frac{1}{n_{bk}} \\sum_{t: s_{bt} = k} p_{bt}, \\qquad
    c_{bt} = \\lVert p_{bt} - \\bar p_{b s_{bt}} \\rVert_2^2

  Summed over a span, :math:`\\sum_t c_{bt} = \\frac{1}{2 n_{bk}} \\sum_{t, t'}
  \\lVert p_{bt} - p_{bt'} \\rVert^2`: the pairwise agreement of the span's tokens,
  computed linearly in the number of tokens (``O(B T V)`` memory, never
  ``[T, T]``). Gradients flow through both :math:`p_{bt}` and the mean.

  Args:
    logits: ``[B, T, V]`` student logits.
    span_ids: ``[B, T]`` int span types (each row has its own).
    where: optional ``[B, T]`` bool; tokens outside it neither get a value nor
      enter the means.

  Returns:
    ``float32 [B, T]`` values in :math:`[0, 2]`.
  """
  if jnp.ndim(logits) != 3 or jnp.shape(span_ids) != jnp.shape(logits)[:2]:
    raise ValueError(f"span_consistency needs logits [B, T, V] and span_ids [B, T], got "
                     f"{jnp.shape(logits)} and {jnp.shape(span_ids)}")
  log_p, where = _masked_log_softmax(logits, where)
  p = jnp.exp(log_p)
  onehot = spans.span_masks(span_ids).astype(p.dtype)                 # [B, T, K]
  if where is not None:
    onehot = onehot * where[..., None]
  totals = jnp.einsum("btk,btv->bkv", onehot, p)                     # [B, K, V]
  means = totals / jnp.maximum(onehot.sum(axis=1), 1.0)[..., None]
  ids = jnp.clip(jnp.asarray(span_ids), 0, spans.NUM_SPAN_TYPES - 1)
  own = jnp.take_along_axis(means, ids[..., None], axis=1)            # [B, T, V]
  value = jnp.sum(jnp.square(p - own), axis=-1)
  in_type = onehot.sum(axis=-1) > 0
  return _mask(value, in_type if where is None else where & in_type)


def moe_load_balance(router_logits: chex.Array, expert_ids: chex.Array, span_ids: chex.Array,
                     *, where: chex.Array | None = None,
                     axis_name: str | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Switch-Transformer load-balancing loss, balanced within each span type.

  For span type :math:`k` with :math:`n_k` tokens, :math:`E` experts and top-:math:`K`
  routing (Fedus et al., 2021, eq. 4):

  .. math::
    f_{ke} = \\frac{1}{K n_k} \\sum_{t \\in k} \\sum_{j=1}^{K} [e_{tj} = e], \\quad
    P_{ke} = \\frac{1}{n_k} \\sum_{t \\in k} \\mathrm{softmax}(r_t)_e, \\quad
    L_k = E \\sum_e f_{ke} P_{ke}

  and the loss is the token-share-weighted :math:`\\sum_k \\frac{n_k}{N} L_k` (with a
  leading layer axis: the mean over layers). Each :math:`L_k` is 1 when type
  :math:`k`'s tokens are spread uniformly, so a router that sends, say, all action
  tokens to one expert is penalized even when the batch-level load looks balanced.
  With one span type it is the plain Switch loss. Gradients flow through
  :math:`P` only (:math:`f` counts discrete assignments).

  Args:
    router_logits: ``[..., B, T, E]`` router logits (optional leading layer axes).
    expert_ids: ``[..., B, T, K]`` int experts chosen per token (same leading axes).
    span_ids: ``[B, T]`` int span types.
    where: optional ``[B, T]`` bool tokens to include; default: all non-PAD tokens.
    axis_name: if given, token statistics are psum-ed over it (exact global loss).

  Returns:
    ``(loss, per_span, counts)``: scalar loss, ``[NUM_SPAN_TYPES]`` :math:`L_k`
    (0 for absent types) and ``[NUM_SPAN_TYPES]`` token counts :math:`n_k`.
  """
  r = jnp.asarray(router_logits)
  ids = jnp.asarray(expert_ids)
  span_ids = jnp.asarray(span_ids)
  if r.ndim < 3 or r.shape[-3:-1] != span_ids.shape:
    raise ValueError(f"router_logits must be [..., B, T, E] with [B, T] = span_ids shape "
                     f"{span_ids.shape}, got {r.shape}")
  if ids.ndim != r.ndim or ids.shape[:-1] != r.shape[:-1]:
    raise ValueError(f"expert_ids must be [..., B, T, K] matching router_logits {r.shape}, "
                     f"got {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"expert_ids must be integers, got dtype {ids.dtype}")
  num_experts, top_k = r.shape[-1], ids.shape[-1]
  if where is None:
    where = span_ids != spans.SpanType.PAD
  onehot = spans.span_masks(span_ids).astype(jnp.float32) * jnp.asarray(where, jnp.float32)[
      ..., None]                                                       # [B, T, S]
  probs = jax.nn.softmax(r.astype(jnp.float32), axis=-1)             # [..., B, T, E]
  dispatch = jax.nn.one_hot(ids, num_experts, dtype=jnp.float32).sum(-2) / top_k
  prob_sums = jnp.einsum("...bte,bts->...se", probs, onehot)
  dispatch_sums = jnp.einsum("...bte,bts->...se", dispatch, onehot)
  counts = onehot.sum(axis=(0, 1))                                   # [S]
  if axis_name is not None:
    prob_sums, dispatch_sums, counts = jax.lax.psum((prob_sums, dispatch_sums, counts),
                                                    axis_name)
  denom = jnp.maximum(counts, 1.0)[:, None]
  per_span = num_experts * jnp.sum((dispatch_sums / denom) * (prob_sums / denom), axis=-1)
  per_span = per_span.reshape(-1, spans.NUM_SPAN_TYPES).mean(axis=0)
  per_span = jnp.where(counts > 0, per_span, 0.0)
  loss = jnp.sum(per_span * counts) / jnp.maximum(jnp.sum(counts), 1.0)
  return loss, per_span, counts
