"""Span types and device-side span helpers (pure jax).

Every token of a trajectory carries a span id (:class:`SpanType`): what the agent
*reasoned* (``REASONING``), what it *did* (``ACTION``), what the environment or the
user wrote (``OBSERVATION``, ``PROMPT``), template glue (``OTHER``) and padding
(``PAD``). Span ids are per row, ``[B, T]`` int arrays; they are never shared
across the batch.
"""
from __future__ import annotations

import enum

import chex
import jax
import jax.numpy as jnp


class SpanType(enum.IntEnum):
  """Type of a token (or a character range) in an agent trajectory."""
  PAD = 0
  PROMPT = 1
  REASONING = 2
  ACTION = 3
  OBSERVATION = 4
  OTHER = 5


NUM_SPAN_TYPES = len(SpanType)
SPAN_NAMES = tuple(t.name.lower() for t in SpanType)


def _check_span_ids(span_ids: chex.Array) -> None:
  if not jnp.issubdtype(jnp.asarray(span_ids).dtype, jnp.integer):
    raise TypeError(
        f"span_ids must be an integer array, got dtype {jnp.asarray(span_ids).dtype}")


def span_masks(span_ids: chex.Array) -> jax.Array:
  """One-hot masks of the span ids.

  Args:
    span_ids: ``[...]`` int array of :class:`SpanType` values.

  Returns:
    ``[..., NUM_SPAN_TYPES]`` bool array; entry ``[..., k]`` is ``span_ids == k``.
    Ids outside ``[0, NUM_SPAN_TYPES)`` belong to no type.
  """
  _check_span_ids(span_ids)
  return jnp.asarray(span_ids)[..., None] == jnp.arange(NUM_SPAN_TYPES)


def span_mask(span_ids: chex.Array, types) -> jax.Array:
  """Bool mask ``[...]`` of the tokens whose span type is in ``types``."""
  _check_span_ids(span_ids)
  types = [int(SpanType(t)) for t in (types if isinstance(types, (list, tuple, set)) else [types])]
  span_ids = jnp.asarray(span_ids)
  return jnp.isin(span_ids, jnp.asarray(types, dtype=span_ids.dtype))


def span_sums(values: chex.Array, span_ids: chex.Array, *, per_row: bool = False) -> jax.Array:
  """Sums ``values`` over the tokens of each span type.

  .. math::
    S_k = \\sum_{b,t} v_{bt} \\, [\\mathrm{span}_{bt} = k]

  Args:
    values: ``[B, T]`` (or any shape equal to ``span_ids``) per-token values.
    span_ids: int array of the same shape.
    per_row: if True, keep the leading (row) axis: ``[B, NUM_SPAN_TYPES]``.

  Returns:
    ``[NUM_SPAN_TYPES]`` float32 sums, or ``[B, NUM_SPAN_TYPES]`` with ``per_row``.
  """
  values = jnp.asarray(values)
  if values.shape != jnp.shape(span_ids):
    raise ValueError(
        f"values shape {values.shape} must equal span_ids shape {jnp.shape(span_ids)}")
  masks = span_masks(span_ids).astype(jnp.float32)
  # Zero out masked tokens with a select, so NaN/inf there cannot leak as 0 * inf.
  contrib = jnp.where(masks > 0, values.astype(jnp.float32)[..., None], 0.0)
  if per_row:
    if values.ndim < 1:
      raise ValueError("per_row=True needs values with a leading row axis")
    return contrib.reshape(values.shape[0], -1, NUM_SPAN_TYPES).sum(axis=1)
  return contrib.reshape(-1, NUM_SPAN_TYPES).sum(axis=0)


def span_counts(span_ids: chex.Array, *, per_row: bool = False,
                where: chex.Array | None = None) -> jax.Array:
  """Number of tokens of each span type (optionally only where ``where``).

  Returns ``[NUM_SPAN_TYPES]`` float32 counts, or ``[B, NUM_SPAN_TYPES]`` with ``per_row``.
  """
  ones = jnp.ones(jnp.shape(span_ids), jnp.float32)
  if where is not None:
    ones = ones * jnp.asarray(where, jnp.float32)
  return span_sums(ones, span_ids, per_row=per_row)
