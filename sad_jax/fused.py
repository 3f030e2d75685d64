r"""Fused lm-head + distillation loss that never materializes ``[N, V]`` logits.

:func:`fused_distill_loss` takes the final hidden states and the lm-head weights of
student and teacher and computes, chunk by chunk over the tokens,

.. math::
  z^S_c = h^S_c W^S, \quad z^T_c = h^T_c W^T, \quad
  L = \frac{\sum_n w_n \, D(z^T_n, z^S_n)}{\sum_n [w_n > 0]}

with any divergence of :mod:`sad_jax.divergences`. As in Liger-Kernel's fused
distillation, the gradients are formed in the forward pass: per chunk,
:math:`G_c = \partial (\sum w D) / \partial z^S_c` (the divergence's fused VJP),
then :math:`\partial L / \partial h^S_c = G_c W^{S\top}` and
:math:`\partial L / \partial W^S \mathrel{+}= h^{S\top}_c G_c`. The backward pass only
scales these by the incoming cotangent, so the cost is the same four matmuls as
autodiff of the naive composition while the working memory is a few
``[chunk_size, V]`` blocks plus one ``[d, V]`` gradient accumulator instead of
several ``[N, V]`` arrays.

The teacher receives no gradient (zero cotangents for ``teacher_hidden`` and
``teacher_head``), and neither do ``temperature`` and ``weights``.
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from sad_jax import divergences

CHUNK_ELEMENTS = 1 << 23
"""Default chunk: about this many logits (32 MiB in float32) per ``[chunk, V]`` block."""


def default_chunk_size(num_tokens: int, vocab: int) -> int:
  """Tokens per chunk: ``CHUNK_ELEMENTS // vocab`` rounded down to a multiple of 8.

  Args:
    num_tokens: ``N``.
    vocab: ``V``.

  Returns:
    A chunk size in ``[1, N]``.
  """
  size = max(8, (CHUNK_ELEMENTS // vocab) // 8 * 8)
  return max(1, min(size, num_tokens))


def _check_matrix(name, x, rank):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
  if x.ndim != rank:
    raise ValueError(f"{name} must have rank {rank}, got shape {x.shape}")
  return x


def fused_distill_loss(student_hidden: chex.Array, student_head: chex.Array,
                       teacher_hidden: chex.Array, teacher_head: chex.Array, *,
                       divergence: str | Callable[..., jax.Array] = "forward_kl",
                       temperature=1.0, where: chex.Array | None = None,
                       weights: chex.Array | None = None, chunk_size: int | None = None,
                       reduction: str = "mean", **params) -> jax.Array:
  r"""Chunked lm-head projection + divergence + weighted mean over tokens.

  Equal (within float32 tolerance) to

  .. code-block:: python

    d = divergence(student_hidden @ student_head, teacher_hidden @ teacher_head,
                   temperature=temperature, where=where & (weights > 0), **params)
    loss = (weights * d).sum() / (where & (weights > 0)).sum()

  but with peak working memory ``O(chunk_size * V + d * V)`` instead of
  ``O(N * V)``.

  Args:
    student_hidden: ``[N, d]`` student final hidden states.
    student_head: ``[d, V]`` student lm-head (unembedding) matrix.
    teacher_hidden: ``[N, d_T]`` teacher final hidden states.
    teacher_head: ``[d_T, V]`` teacher lm-head matrix (same ``V``).
    divergence: a name from ``sad_jax.divergences.DIVERGENCES`` or a function with
      the divergence signature.
    temperature: softmax temperature (may be traced; no gradient).
    where: optional ``[N]`` bool mask of trained tokens.
    weights: optional ``[N]`` non-negative token weights (no gradient); tokens with
      weight 0 are not trained and not counted.
    chunk_size: tokens per chunk (default :func:`default_chunk_size`).
    reduction: ``"mean"`` divides the weighted sum by the number of trained tokens
      (the ``tokens`` normalization of :mod:`sad_jax.objective`); ``"sum"`` returns
      :math:`\sum_n w_n D_n`, for weights that already hold the normalization.
    **params: static divergence parameters (e.g. ``beta`` for ``generalized_jsd``).

  Returns:
    A float32 scalar; 0 (with zero gradients) when no token is trained.
  """
  hs = _check_matrix("student_hidden", student_hidden, 2)
  ws = _check_matrix("student_head", student_head, 2)
  ht = _check_matrix("teacher_hidden", teacher_hidden, 2)
  wt = _check_matrix("teacher_head", teacher_head, 2)
  n, d = hs.shape
  if ws.shape[0] != d:
    raise ValueError(f"student_head must be [d={d}, V], got shape {ws.shape}")
  if ht.shape[0] != n:
    raise ValueError(f"teacher_hidden has {ht.shape[0]} tokens, student_hidden {n}")
  if wt.shape[0] != ht.shape[1]:
    raise ValueError(f"teacher_head must be [d_T={ht.shape[1]}, V], got shape {wt.shape}")
  if ws.shape[1] != wt.shape[1]:
    raise ValueError(f"student vocab size {ws.shape[1]} != teacher vocab size "
                     f"{wt.shape[1]}; pad the smaller head's logits with -inf "
                     "(sad_jax.divergences.pad_vocab)")
  if reduction not in ("mean", "sum"):
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
  fn = divergences.get_divergence(divergence) if isinstance(divergence, str) else divergence
  if not callable(fn):
    raise TypeError(f"divergence must be a name or a function, got {divergence!r}")
  if chunk_size is None:
    chunk_size = default_chunk_size(n, ws.shape[1])
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (n,):
    raise ValueError(f"weights must have shape ({n},), got {w.shape}")
  if where is not None:
    where = jnp.asarray(where)
    if where.shape != (n,):
      raise ValueError(f"where must have shape ({n},), got {where.shape}")
    w = jnp.where(where.astype(bool), w, 0.0)
  w = jax.lax.stop_gradient(w)

  def chunk_loss(s, t, wc):
    return jnp.sum(wc * fn(s, t, temperature=temperature, where=wc > 0, **params))

  specs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (hs, ws, ht, wt, w))
  loss = _make_fused(chunk_loss, min(chunk_size, n), reduction == "mean", specs)
  return loss(hs, ws, ht, wt, w)


def _make_fused(chunk_loss, chunk, mean, specs):
  """Builds the custom-VJP loss for one divergence, chunking, reduction and input specs."""

  def forward(hs, ws, ht, wt, w):
    n, d = hs.shape
    pad = (-n) % chunk
    trained = w > 0
    # Zero untrained rows so NaN hidden states cannot reach the head gradient.
    hs = jnp.where(trained[:, None], hs, 0).astype(hs.dtype)
    ht = jnp.where(trained[:, None], ht, 0).astype(ht.dtype)
    if pad:
      hs, ht = jnp.pad(hs, ((0, pad), (0, 0))), jnp.pad(ht, ((0, pad), (0, 0)))
      w = jnp.pad(w, (0, pad))
    m = (n + pad) // chunk

    def body(carry, xs):
      total, grad_head = carry
      h_s, h_t, wc = xs
      s = jnp.dot(h_s, ws, preferred_element_type=jnp.float32)
      t = jnp.dot(h_t, wt, preferred_element_type=jnp.float32)
      value, vjp = jax.vjp(lambda s: chunk_loss(s, t, wc), s)
      (g,) = vjp(jnp.ones_like(value))
      grad_h = jnp.dot(g.astype(ws.dtype), ws.T, preferred_element_type=jnp.float32)
      grad_head = grad_head + jnp.dot(h_s.T, g.astype(h_s.dtype),
                                      preferred_element_type=jnp.float32)
      return (total + value, grad_head), grad_h

    init = (jnp.zeros((), jnp.float32), jnp.zeros(ws.shape, jnp.float32))
    (total, grad_head), grad_h = jax.lax.scan(
        body, init, (hs.reshape(m, chunk, -1), ht.reshape(m, chunk, -1), w.reshape(m, chunk)))
    grad_h = grad_h.reshape(m * chunk, -1)[:n]
    scale = 1.0 / jnp.maximum(jnp.sum(trained), 1).astype(jnp.float32) if mean else 1.0
    return total * scale, (grad_h * scale, grad_head * scale)

  @jax.custom_vjp
  def loss(hs, ws, ht, wt, w):
    return forward(hs, ws, ht, wt, w)[0]

  def fwd(hs, ws, ht, wt, w):
    return forward(hs, ws, ht, wt, w)

  def bwd(res, g):
    grad_h, grad_head = res
    hs, ws, ht, wt, w = specs
    return ((g * grad_h).astype(hs.dtype), (g * grad_head).astype(ws.dtype),
            jnp.zeros(ht.shape, ht.dtype), jnp.zeros(wt.shape, wt.dtype),
            jnp.zeros(w.shape, w.dtype))

  loss.defvjp(fwd, bwd)
  return loss


__all__ = ["fused_distill_loss", "default_chunk_size", "CHUNK_ELEMENTS"]
