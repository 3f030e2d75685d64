r"""Fused lm-head + distillation loss that never materializes ``[N, V]`` logits.

:func:`fused_distill_loss` takes the final hidden states and the lm-head weights of
student and teacher and computes, chunk by chunk over the tokens,

.. math::
  z^S_c = h^S_c W^S, \quad z^T_c = h^T_c W^T, \quad
  L = \frac{\sum_n w_n \, D(z^T_n, z^S_n)}{\sum_n [w_n > 0]}

with any divergence of :mod:`sad_jax.losses._divergences`. As in Liger-Kernel's fused
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

:func:`fused_sad_loss` evaluates the SAD objective (:func:`sad_jax.objective._sad.sad_loss`)
this way. Its reduction is linear in the per-token loss for every normalization, so
it is :math:`\sum_n c_n \ell_n` with per-token coefficients (see
:func:`sad_token_coefficients`)

.. math::
  c_n = s_T \, \frac{w_n}{\text{normalizer}(n)}, \qquad s_T = T^2 \text{ or } 1,

which become the ``weights`` of :func:`fused_distill_loss` with ``reduction="sum"``.
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as divergences
from sad_jax.objective import _sad as objective
from sad_jax.objective import _state as state_lib
from sad_jax.objective import _weighting as weighting

CHUNK_ELEMENTS = 1 << 24
"""Default chunk: about this many logits (64 MiB in float32) per ``[chunk, V]`` block."""


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
    divergence: a name from ``sad_jax.losses._divergences.DIVERGENCES`` or a function with
      the divergence signature.
    temperature: softmax temperature (may be traced; no gradient).
    where: optional ``[N]`` bool mask of trained tokens.
    weights: optional ``[N]`` non-negative token weights (no gradient); tokens with
      weight 0 are not trained and not counted.
    chunk_size: tokens per chunk (default :func:`default_chunk_size`).
    reduction: ``"mean"`` divides the weighted sum by the number of trained tokens
      (the ``tokens`` normalization of :mod:`sad_jax.objective._sad`); ``"sum"`` returns
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
                     "(sad_jax.losses._divergences.pad_vocab)")
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
    # The mean's 1/count scales each chunk's cotangent, so the [d, V] head gradient
    # is never rescaled (which would copy it).
    scale = 1.0 / jnp.maximum(jnp.sum(trained), 1).astype(jnp.float32) if mean else 1.0
    # Zero untrained rows so NaN hidden states cannot reach the head gradient.
    hs = jnp.where(trained[:, None], hs, 0).astype(hs.dtype)
    ht = jnp.where(trained[:, None], ht, 0).astype(ht.dtype)
    if pad:
      hs, ht = jnp.pad(hs, ((0, pad), (0, 0))), jnp.pad(ht, ((0, pad), (0, 0)))
      w = jnp.pad(w, (0, pad))
    m = (n + pad) // chunk
    block = _vocab_block(d, ws.shape[1])

    def body(carry, xs):
      total, grad_head = carry
      h_s, h_t, wc = xs
      s = jnp.dot(h_s, ws, preferred_element_type=jnp.float32)
      t = jnp.dot(h_t, wt, preferred_element_type=jnp.float32)
      value, vjp = jax.vjp(lambda s: chunk_loss(s, t, wc), s)
      (g,) = vjp(jnp.asarray(scale, value.dtype))
      grad_h = jax.lax.dot_general(g.astype(ws.dtype), ws, (((1,), (1,)), ((), ())),
                                   preferred_element_type=jnp.float32)  # g @ ws.T
      grad_head = _add_outer_product(grad_head, h_s, g.astype(h_s.dtype), block)
      return (total + value, grad_head), grad_h

    init = (jnp.zeros((), jnp.float32), jnp.zeros(ws.shape, jnp.float32))
    (total, grad_head), grad_h = jax.lax.scan(
        body, init, (hs.reshape(m, chunk, -1), ht.reshape(m, chunk, -1), w.reshape(m, chunk)))
    grad_h = grad_h.reshape(m * chunk, -1)[:n]
    return total * scale, (grad_h, grad_head)

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


def _vocab_block(d: int, vocab: int) -> int:
  """Columns per head-gradient update: about ``CHUNK_ELEMENTS`` entries of ``[d, V]``."""
  return max(1, min(vocab, CHUNK_ELEMENTS // max(d, 1)))


def _add_outer_product(acc: jax.Array, h: jax.Array, g: jax.Array, block: int) -> jax.Array:
  r"""``acc + h.T @ g`` for ``acc [d, V]``, in place, ``block`` columns at a time.

  A plain ``acc + h.T @ g`` builds the ``[d, V]`` product before adding it (on CPU
  the dot does not fuse with the add), doubling the memory of the head gradient.
  Here each step updates ``acc[:, j:j+block]`` with ``dynamic_update_slice``, which
  XLA performs in place on the loop carry. The last block is shifted left to fit
  in ``V`` and its columns already covered are zeroed in ``g``.
  """
  vocab = acc.shape[1]
  if block >= vocab:
    return acc + jax.lax.dot_general(h, g, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32)

  def step(j, acc):
    start = jnp.minimum(j * block, vocab - block)
    g_j = jax.lax.dynamic_slice_in_dim(g, start, block, axis=1)
    g_j = jnp.where(start + jnp.arange(block) >= j * block, g_j, 0).astype(g.dtype)
    update = jax.lax.dot_general(h, g_j, (((0,), (0,)), ((), ())),  # h.T @ g_j
                                 preferred_element_type=jnp.float32)
    current = jax.lax.dynamic_slice_in_dim(acc, start, block, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + update, start, axis=1)

  return jax.lax.fori_loop(0, -(-vocab // block), step, acc)


_NEEDS_LOGITS = ("confidence_based", "difficulty_aware")


def sad_token_coefficients(span_ids: chex.Array, state: state_lib.SADState, config, *,
                           normalizer: chex.Array | None = None) -> jax.Array:
  r"""Per-token coefficients :math:`c` with ``sad_loss = sum(c * divergence)``.

  For a config whose per-token loss is :math:`s_T D` alone (no hard labels, no
  regularizers) and whose weights need no logits, the objective's reduction
  (:func:`sad_jax.objective._sad.reduce_tokens`, any ``normalization``) is linear in the
  divergence :math:`D`; :math:`c` is its gradient, times :math:`s_T = T^2` when
  ``scale_by_t2``. E.g. for ``tokens``, :math:`c_n = s_T w_n / \sum_m [w_m > 0]`.

  Args:
    span_ids: ``[B, T]`` int span types.
    state: :class:`~sad_jax.objective._state.SADState` (temperature, running span losses, ...).
    config: the objective config.
    normalizer: the full batch's :func:`sad_jax.objective._sad.loss_normalizer` when this
      call sees a micro-batch.

  Returns:
    ``float32 [B, T]`` coefficients, zero exactly on untrained tokens; no gradient.
  """
  config = config_lib.resolve(config)
  span_ids = jnp.asarray(span_ids)
  if span_ids.ndim != 2 or not jnp.issubdtype(span_ids.dtype, jnp.integer):
    raise ValueError(f"span_ids must be an int [B, T] array, got "
                     f"{span_ids.dtype}{list(span_ids.shape)}")
  _check_fusable(config)
  weights = weighting.token_weights(span_ids, config, state)

  def reduced(per_token):
    return objective.reduce_tokens(per_token, weights, span_ids,
                                   normalization=config.normalization,
                                   normalizer=normalizer)[0]

  coefficients = jax.grad(reduced)(jnp.zeros(weights.shape, jnp.float32))
  if config.scale_by_t2:
    coefficients = coefficients * jnp.square(state.temperature)
  return jax.lax.stop_gradient(coefficients)


def _check_fusable(config) -> None:
  reg = config.regularizers
  unsupported = [f"{name} = {value}" for name, value in (
      ("hard_label_weight", config.hard_label_weight), ("regularizers.entropy", reg.entropy),
      ("regularizers.confidence_penalty", reg.confidence_penalty),
      ("regularizers.span_consistency", reg.span_consistency),
      ("regularizers.moe_load_balance", reg.moe_load_balance)) if value != 0]
  if config.weighting in _NEEDS_LOGITS:
    unsupported.append(f"weighting = {config.weighting!r} (needs teacher statistics)")
  if unsupported:
    raise ValueError("the fused SAD loss computes only the weighted divergence; these "
                     f"settings need the full logits, use sad_jax.sad_loss: "
                     f"{', '.join(unsupported)}")


def fused_sad_loss(student_hidden: chex.Array, student_head: chex.Array,
                   teacher_hidden: chex.Array, teacher_head: chex.Array,
                   span_ids: chex.Array, state: state_lib.SADState, config, *,
                   normalizer: chex.Array | None = None,
                   chunk_size: int | None = None) -> jax.Array:
  r"""The SAD objective from final hidden states, never materializing ``[B, T, V]``.

  Equal (value and gradients w.r.t. the student's hidden states and head, within
  float32 tolerance) to

  .. code-block:: python

    sad_loss(student_hidden @ student_head, teacher_hidden @ teacher_head,
             span_ids, state, config, normalizer=normalizer)[0]

  for configs where that loss is the weighted divergence alone (see
  :func:`sad_token_coefficients`): it is :func:`fused_distill_loss` with
  ``weights = sad_token_coefficients(...)`` and ``reduction="sum"``. Metrics and
  the next :class:`~sad_jax.objective._state.SADState` are not computed (they need the
  per-token divergence); a ValueError names the settings that need the logits.

  Args:
    student_hidden: ``[B, T, d]`` student final hidden states.
    student_head: ``[d, V]`` student lm-head matrix.
    teacher_hidden: ``[B, T, d_T]`` teacher final hidden states.
    teacher_head: ``[d_T, V]`` teacher lm-head matrix.
    span_ids: ``[B, T]`` int span types.
    state: :class:`~sad_jax.objective._state.SADState`; its temperature is used.
    config: the objective config.
    normalizer: as in :func:`sad_jax.objective._sad.sad_loss`.
    chunk_size: tokens per chunk (default :func:`default_chunk_size`).

  Returns:
    The float32 scalar loss.
  """
  config = config_lib.resolve(config)
  hs = _check_matrix("student_hidden", student_hidden, 3)
  ht = _check_matrix("teacher_hidden", teacher_hidden, 3)
  if hs.shape[:2] != jnp.shape(span_ids) or ht.shape[:2] != jnp.shape(span_ids):
    raise ValueError(f"student_hidden {hs.shape} and teacher_hidden {ht.shape} must start "
                     f"with the span_ids shape {jnp.shape(span_ids)}")
  coefficients = sad_token_coefficients(span_ids, state, config, normalizer=normalizer)
  return fused_distill_loss(
      hs.reshape(-1, hs.shape[-1]), student_head, ht.reshape(-1, ht.shape[-1]),
      teacher_head, divergence=config.divergence,
      temperature=jax.lax.stop_gradient(state.temperature),
      weights=coefficients.reshape(-1), reduction="sum", chunk_size=chunk_size,
      **dict(config.divergence_kwargs))


__all__ = ["fused_distill_loss", "fused_sad_loss", "sad_token_coefficients",
           "default_chunk_size", "CHUNK_ELEMENTS"]
