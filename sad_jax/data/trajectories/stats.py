"""Per-trajectory statistics: span counts and the SAD curriculum complexity score."""
from __future__ import annotations

import numpy as np

from sad_jax.objective._spans import NUM_SPAN_TYPES, SpanType
from sad_jax.data.trajectories.segmented import Segmented


def span_token_counts(span_ids: np.ndarray) -> np.ndarray:
  """Tokens of each span type: ``[..., T]`` span ids -> ``[..., NUM_SPAN_TYPES]`` int64."""
  span_ids = np.asarray(span_ids)
  if not np.issubdtype(span_ids.dtype, np.integer):
    raise TypeError(f"span_ids must be an integer array, got dtype {span_ids.dtype}")
  return (span_ids[..., None] == np.arange(NUM_SPAN_TYPES)).sum(axis=-2, dtype=np.int64)


def span_char_counts(segmented: Segmented) -> np.ndarray:
  """Characters of each span type (``OTHER`` includes unlabelled text): ``[NUM_SPAN_TYPES]``."""
  counts = np.zeros(NUM_SPAN_TYPES, np.int64)
  for start, end, typ in segmented.pieces():
    counts[typ] += end - start
  return counts


def complexity(span_ids: np.ndarray, *, alpha: float = 1.0, beta: float = 1.0,
               gamma: float = 1.0, teacher_entropy: np.ndarray | None = None) -> np.ndarray:
  """Curriculum complexity of trajectories (SAD, Liu et al. 2025).

  .. math::
    C(\\tau) = \\alpha \\, \\#\\mathrm{reasoning} + \\beta \\, \\#\\mathrm{action}
      + \\gamma \\, \\bar H_{\\mathrm{teacher}}

  where the counts are tokens and :math:`\\bar H` is the teacher's mean
  per-token entropy over the non-``PAD`` tokens (the term is dropped when
  ``teacher_entropy`` is None). Counts and entropies have different scales;
  pick ``gamma`` accordingly.

  Args:
    span_ids: ``[..., T]`` int span ids of one trajectory or a batch of rows.
    alpha: weight of the reasoning-token count.
    beta: weight of the action-token count.
    gamma: weight of the mean teacher entropy.
    teacher_entropy: optional ``[..., T]`` per-token teacher entropies (nats).

  Returns:
    ``[...]`` float64 scores (a 0-d array for a single trajectory).
  """
  mean = None
  if teacher_entropy is not None:
    entropy = np.asarray(teacher_entropy, np.float64)
    if entropy.shape != np.shape(span_ids):
      raise ValueError(f"teacher_entropy shape {entropy.shape} must equal span_ids shape "
                       f"{np.shape(span_ids)}")
    valid = np.asarray(span_ids) != SpanType.PAD
    mean = np.where(valid, entropy, 0.0).sum(-1) / np.maximum(valid.sum(-1), 1)
  return complexity_from_counts(span_token_counts(span_ids), alpha=alpha, beta=beta,
                                gamma=gamma, mean_entropy=mean)


def complexity_from_counts(counts: np.ndarray, *, alpha: float = 1.0, beta: float = 1.0,
                           gamma: float = 1.0, mean_entropy: np.ndarray | None = None) -> np.ndarray:
  """:func:`complexity` from ``[..., NUM_SPAN_TYPES]`` counts (tokens, or characters).

  ``mean_entropy`` is ``[...]`` (the teacher's mean entropy per trajectory) or None.
  Returns ``[...]`` float64 scores.
  """
  counts = np.asarray(counts)
  if counts.shape[-1:] != (NUM_SPAN_TYPES,):
    raise ValueError(f"counts must have a last axis of {NUM_SPAN_TYPES} span types, got shape {counts.shape}")
  score = alpha * counts[..., SpanType.REASONING] + beta * counts[..., SpanType.ACTION]
  if mean_entropy is not None:
    score = score + gamma * np.asarray(mean_entropy, np.float64)
  return np.asarray(score, np.float64)
