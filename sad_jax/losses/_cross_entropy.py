r"""Hard-label cross-entropy with label smoothing, per token.

The supervised term of the objective (``hard_label_weight``) and the whole of SFT
(:func:`sad_jax.objective.cross_entropy_loss`). Like the divergences it reduces over
the vocabulary only; reducing over tokens is the objective's job.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


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


__all__ = ["hard_label_ce"]
