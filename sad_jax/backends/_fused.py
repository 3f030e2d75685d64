r"""The fused backend: chunked lm-head + objective that never materializes ``[B, T, V]``.

The student (and, optionally, the teacher) come as final hidden states and lm-head
weights; the logits are formed chunk by chunk over the sequence,

.. math::
  z^S_c = h^S_c W^S, \quad z^T_c = h^T_c W^T, \quad
  L = \sum_n c_n \, \ell(z^S_n, z^T_n)

where :math:`\ell` is the objective's per-token loss (:class:`~sad_jax.backends.Terms`:
the divergence, hard-label cross-entropy, entropy and confidence regularizers -- the
same per-token functions as the dense backend, applied to each chunk) and :math:`c`
the reduction's per-token coefficients (every normalization is linear in
:math:`\ell` once the weights are known, :func:`sad_jax.objective.token_coefficients`).
As in Liger-Kernel's fused distillation, the gradients are formed in the forward
pass: per chunk, :math:`G_c = \partial (\sum c \ell) / \partial z^S_c`, then
:math:`\partial L / \partial h^S_c = G_c W^{S\top}` and
:math:`\partial L / \partial W^S \mathrel{+}= h^{S\top}_c G_c`. The backward pass only
scales these by the incoming cotangent, so the cost is the same four matmuls as
autodiff of the naive composition while the working memory is a few
``[B, chunk, V]`` blocks plus one ``[d, V]`` gradient accumulator instead of several
``[B, T, V]`` arrays. Chunks are taken along the sequence axis with the whole batch
axis in each, so a batch-sharded (data-parallel) input stays on its devices: no
device gathers another's hidden states.

The per-token terms and statistics come back from the same pass (no gradient), so
metrics and the next :class:`~sad_jax.objective.SADState` are the dense path's. A
weighting strategy that reads the teacher statistics (``confidence_based``,
``difficulty_aware``) costs one more forward pass over the chunks (weights must be
known before the gradient pass). The teacher is its hidden states and head
(``ModelOutput(hidden=, head=)``), dense logits, or a ``SparseTeacher``; it receives
no gradient, and neither do the temperature and the coefficients.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sad_jax.backends import _base as base
from sad_jax.backends import _dense as dense
from sad_jax.losses import _divergences as divergences
from sad_jax.losses import _registry as registry
from sad_jax.losses import _sparse as sparse

CHUNK_ELEMENTS = 1 << 24
"""Default chunk: about this many logits (64 MiB in float32) per ``[B, chunk, V]`` block."""


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


def _check_chunk_size(chunk_size):
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                 or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _zero_cotangent(x):
  if x is None:
    return None
  if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
    return jnp.zeros(jnp.shape(x), jnp.asarray(x).dtype)
  return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _to_chunks(x, tc, pad):
  """``[B, T, ...]`` -> ``[M, B, tc, ...]`` (the sequence padded by ``pad``)."""
  if pad:
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, t // tc, tc) + x.shape[2:]), 1, 0)


def _from_chunks(x, t):
  """``[M, B, tc, ...]`` -> ``[B, T, ...]``."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :t]


def _layout(b, t, vocab, chunk_size):
  tokens = default_chunk_size(b * t, vocab) if chunk_size is None else chunk_size
  tc = max(1, min(t, tokens // max(b, 1)))
  return tc, (-t) % tc


def _prepare(hs, ht, xs, tc, pad):
  """Zeroes untrained rows (NaN hidden states there cannot reach a gradient) and chunks."""
  keep = xs["where"]
  hs = jnp.where(keep[..., None], hs, 0).astype(hs.dtype)
  if ht is not None:
    ht = jnp.where(keep[..., None], ht, 0).astype(ht.dtype)
  chunk = lambda x: None if x is None else _to_chunks(x, tc, pad)  # noqa: E731
  return chunk(hs), chunk(ht), jax.tree.map(chunk, xs)


def _logits(h, w):
  return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)


def fused_map(fn: Callable, hs, ws, ht, wt, xs, consts, *, chunk_size=None):
  """Per-token outputs of ``fn(s, t, x, consts) -> dict [B, tc]`` over the chunks (no
  gradient): the statistics pass."""
  b, t, _ = hs.shape
  tc, pad = _layout(b, t, ws.shape[1], chunk_size)
  hs_c, ht_c, xs_c = _prepare(hs, ht, xs, tc, pad)

  def body(_, c):
    h_s, h_t, x = c
    s = _logits(h_s, ws)
    tt = None if h_t is None else _logits(h_t, wt)
    return None, fn(s, tt, x, consts)

  _, out = jax.lax.scan(body, None, (hs_c, ht_c, xs_c))
  return jax.lax.stop_gradient(jax.tree.map(lambda a: _from_chunks(a, t), out))


def fused_value(fn: Callable, hs, ws, ht, wt, xs, consts, *, chunk_size=None):
  """``sum`` over chunks of ``fn(s, t, x, consts) -> (value, aux dict [B, tc])``, with the
  gradient w.r.t. ``hs [B, T, d]`` and ``ws [d, V]`` formed in the forward pass.

  ``ht``/``wt`` (teacher hidden states and head, or ``None``), ``xs`` (a dict of
  ``[B, T, ...]`` per-token inputs with a bool ``"where"``) and ``consts`` get zero
  cotangents. Returns ``(total, aux)`` with ``aux`` ``[B, T]`` leaves, no gradient.
  """
  b, t, d = hs.shape
  tc, pad = _layout(b, t, ws.shape[1], chunk_size)
  block = _vocab_block(d, ws.shape[1])

  def forward(hs, ws, ht, wt, xs, consts):
    hs_c, ht_c, xs_c = _prepare(hs, ht, xs, tc, pad)

    def body(carry, c):
      total, grad_head = carry
      h_s, h_t, x = c
      s = _logits(h_s, ws)
      tt = None if h_t is None else _logits(h_t, wt)
      value, vjp, aux = jax.vjp(lambda s: fn(s, tt, x, consts), s, has_aux=True)
      (g,) = vjp(jnp.ones((), value.dtype))
      grad_h = jnp.einsum("btv,dv->btd", g.astype(ws.dtype), ws,
                          preferred_element_type=jnp.float32)  # g @ ws.T
      grad_head = _add_outer_product(grad_head, h_s.reshape(-1, d),
                                     g.reshape(-1, g.shape[-1]).astype(h_s.dtype), block)
      return (total + value, grad_head), (grad_h, jax.lax.stop_gradient(aux))

    init = (jnp.zeros((), jnp.float32), jnp.zeros(ws.shape, jnp.float32))
    (total, grad_head), (grad_h, aux) = jax.lax.scan(body, init, (hs_c, ht_c, xs_c))
    aux = jax.tree.map(lambda a: _from_chunks(a, t), aux)
    return (total, aux), (_from_chunks(grad_h, t), grad_head)

  @jax.custom_vjp
  def run(hs, ws, ht, wt, xs, consts):
    return forward(hs, ws, ht, wt, xs, consts)[0]

  def fwd(hs, ws, ht, wt, xs, consts):
    out, (grad_h, grad_head) = forward(hs, ws, ht, wt, xs, consts)
    zeros = jax.tree.map(_zero_cotangent, (ht, wt, xs, consts))
    return out, (grad_h, grad_head, zeros)

  def bwd(res, cotangents):
    grad_h, grad_head, zeros = res
    g = cotangents[0]
    return ((g * grad_h).astype(hs.dtype), (g * grad_head).astype(ws.dtype)) + zeros

  run.defvjp(fwd, bwd)
  return run(hs, ws, ht, wt, xs, consts)


def _vocab_block(d: int, vocab: int) -> int:
  """Columns per head-gradient update: about ``CHUNK_ELEMENTS`` entries of ``[d, V]``."""
  return max(1, min(vocab, CHUNK_ELEMENTS // max(d, 1)))


def _replicated_if_explicit(x) -> dict:
  """``{"out_sharding": replicated}`` when ``x`` is sharded over explicit mesh axes."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or not any(
      t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    return {}
  return {"out_sharding": jax.sharding.NamedSharding(mesh, P())}


def _add_outer_product(acc: jax.Array, h: jax.Array, g: jax.Array, block: int) -> jax.Array:
  r"""``acc + h.T @ g`` for ``acc [d, V]``, in place, ``block`` columns at a time.

  A plain ``acc + h.T @ g`` builds the ``[d, V]`` product before adding it (on CPU
  the dot does not fuse with the add), doubling the memory of the head gradient.
  Here each step updates ``acc[:, j:j+block]`` with ``dynamic_update_slice``, which
  XLA performs in place on the loop carry. The last block is shifted left to fit
  in ``V`` and its columns already covered are zeroed in ``g``.
  """
  vocab = acc.shape[1]
  # On a mesh with explicit axes a contraction over the (batch-sharded) tokens must say
  # where its result goes: replicated, like the head it is the gradient of.
  out = _replicated_if_explicit(h)
  if block >= vocab:
    return acc + jax.lax.dot_general(h, g, (((0,), (0,)), ((), ())),
                                     preferred_element_type=jnp.float32, **out)

  def step(j, acc):
    start = jnp.minimum(j * block, vocab - block)
    g_j = jax.lax.dynamic_slice_in_dim(g, start, block, axis=1)
    g_j = jnp.where(start + jnp.arange(block) >= j * block, g_j, 0).astype(g.dtype)
    update = jax.lax.dot_general(h, g_j, (((0,), (0,)), ((), ())),  # h.T @ g_j
                                 preferred_element_type=jnp.float32, **out)
    current = jax.lax.dynamic_slice_in_dim(acc, start, block, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + update, start, axis=1)

  return jax.lax.fori_loop(0, -(-vocab // block), step, acc)


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
  ``O(N * V)``. The SAD objective on this path is ``sad_loss(...,
  backend=backends.fused())``.

  Args:
    student_hidden: ``[N, d]`` student final hidden states.
    student_head: ``[d, V]`` student lm-head (unembedding) matrix.
    teacher_hidden: ``[N, d_T]`` teacher final hidden states.
    teacher_head: ``[d_T, V]`` teacher lm-head matrix (same ``V``).
    divergence: a name from ``sad_jax.losses.DIVERGENCES`` or a function with the
      divergence signature.
    temperature: softmax temperature (may be traced; no gradient).
    where: optional ``[N]`` bool mask of trained tokens.
    weights: optional ``[N]`` non-negative token weights (no gradient); tokens with
      weight 0 are not trained and not counted.
    chunk_size: tokens per chunk (default :func:`default_chunk_size`).
    reduction: ``"mean"`` divides the weighted sum by the number of trained tokens
      (the ``tokens`` normalization of the objective); ``"sum"`` returns
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
                     "(sad_jax.losses.pad_vocab)")
  if reduction not in ("mean", "sum"):
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
  fn = divergences.get_divergence(divergence) if isinstance(divergence, str) else divergence
  if not callable(fn):
    raise TypeError(f"divergence must be a name or a function, got {divergence!r}")
  _check_chunk_size(chunk_size)
  w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (n,):
    raise ValueError(f"weights must have shape ({n},), got {w.shape}")
  if where is not None:
    where = jnp.asarray(where)
    if where.shape != (n,):
      raise ValueError(f"where must have shape ({n},), got {where.shape}")
    w = jnp.where(where.astype(bool), w, 0.0)
  w = jax.lax.stop_gradient(w)
  trained = w > 0
  if reduction == "mean":
    w = w / jnp.maximum(jnp.sum(trained), 1).astype(jnp.float32)

  def chunk_loss(s, t, x, temp):
    value = fn(s, t, temperature=temp, where=x["where"], **params)
    return jnp.sum(jnp.where(x["where"], x["c"] * value, 0.0)), {}

  xs = {"c": w[None], "where": trained[None]}
  total, _ = fused_value(chunk_loss, hs[None], ws, ht[None], wt, xs,
                         jnp.asarray(temperature, jnp.float32), chunk_size=chunk_size)
  return total


def _teacher_inputs(teacher, shape):
  """``(hidden [B, T, d_T] | None, head | None, per-token teacher leaves | None)``."""
  if isinstance(teacher, sparse.SparseTeacher):
    return None, None, teacher
  if teacher is not None and getattr(teacher, "hidden", None) is not None:
    ht = _check_matrix("teacher hidden", teacher.hidden, 3)
    wt = _check_matrix("teacher head", teacher.head, 2)
    if ht.shape[:2] != tuple(shape):
      raise ValueError(f"teacher hidden {ht.shape} must start with the student's [B, T] = "
                       f"{tuple(shape)}")
    if wt.shape[0] != ht.shape[-1]:
      raise ValueError(f"teacher head must be [d_T={ht.shape[-1]}, V], got {wt.shape}")
    return ht, wt, None
  return None, None, teacher


class Fused:
  """The fused lm-head backend (see the module docstring).

  The student is ``ModelOutput(hidden=[B, T, d], head=[d, V])``.

  Args:
    chunk_size: tokens per chunk (split as ``chunk_size // B`` positions of every
      row); default :func:`default_chunk_size`.
  """

  name = "fused"

  def __init__(self, chunk_size: int | None = None):
    _check_chunk_size(chunk_size)
    self.chunk_size = chunk_size

  def check(self, config, teacher_kind: str | None = None) -> None:
    registry.check(config, self.name, teacher_kind)

  def _student(self, student):
    if student.hidden is None or student.head is None:
      raise ValueError("the fused backend needs the student's hidden states [B, T, d] and "
                       "lm-head [d, V] (ModelOutput(hidden=..., head=...)); for logits use the "
                       "dense backend")
    hs = _check_matrix("student hidden", student.hidden, 3)
    ws = _check_matrix("student head", student.head, 2)
    if ws.shape[0] != hs.shape[-1]:
      raise ValueError(f"student head must be [d={hs.shape[-1]}, V], got shape {ws.shape}")
    return hs, ws

  def token_shape(self, student):
    return self._student(student)[0].shape[:2]

  def vocab_size(self, student):
    return self._student(student)[1].shape[1]

  def run(self, fn, student, teacher, span_ids, labels, state, normalizer):
    return fn(student, teacher, span_ids, labels, state, normalizer, None)

  def _inputs(self, student, teacher, where, extra):
    hs, ws = self._student(student)
    ht, wt, teacher_tokens = _teacher_inputs(teacher, hs.shape[:2])
    vocab = ws.shape[1]
    if wt is not None and wt.shape[1] != vocab:
      raise ValueError(f"student vocab size {vocab} != teacher vocab size {wt.shape[1]}; pad "
                       "the smaller head's logits with -inf (sad_jax.losses.pad_vocab)")
    xs = dict(extra, where=jnp.asarray(where, bool))
    if teacher_tokens is not None:
      xs["teacher"] = teacher_tokens
    return hs, ws, ht, wt, xs

  def statistics(self, student, teacher, where, names="all"):
    hs, ws, ht, wt, xs = self._inputs(student, teacher, where, {})

    def fn(s, t, x, _):
      return dense.dense_statistics(s, t if t is not None else x["teacher"], x["where"],
                                    names)

    return fused_map(fn, hs, ws, ht, wt, xs, (), chunk_size=self.chunk_size)

  def terms(self, student, teacher, terms: base.Terms, *, where, coefficients, temperature,
            labels=None, span_ids=None, axis_name=None, statistics=None,
            statistic_names="all"):
    extra = {"c": coefficients}
    if labels is not None:
      extra["labels"] = labels
    if statistics is not None:
      extra["stats_where"] = jnp.asarray(statistics, bool)
    hs, ws, ht, wt, xs = self._inputs(student, teacher, where, extra)

    def fn(s, t, x, temp):
      t = t if t is not None else x.get("teacher")
      values = dense.dense_terms(s, t, terms, where=x["where"], temperature=temp,
                                 labels=x.get("labels"), statistics=x.get("stats_where"),
                                 statistic_names=statistic_names)
      per_token = terms.combine(values, temp)
      return base.weighted_total(per_token, x["c"], x["where"]), dict(values, loss=per_token)

    total, values = fused_value(fn, hs, ws, ht, wt, xs, jnp.asarray(temperature, jnp.float32),
                                chunk_size=self.chunk_size)
    if axis_name is not None:
      total = jax.lax.psum(total, axis_name)
    return total, values


def fused_sad_loss(student_hidden: chex.Array, student_head: chex.Array,
                   teacher_hidden: chex.Array, teacher_head: chex.Array,
                   span_ids: chex.Array, state, config, *, labels: chex.Array | None = None,
                   normalizer: chex.Array | None = None, chunk_size: int | None = None,
                   update_state: bool = True) -> tuple[jax.Array, Any]:
  r"""The SAD objective from final hidden states, never materializing ``[B, T, V]``.

  ``sad_loss`` on the fused backend: equal (value, gradients w.r.t. the student's
  hidden states and head, metrics and next state, within float32 tolerance) to

  .. code-block:: python

    sad_loss(student_hidden @ student_head, teacher_hidden @ teacher_head,
             span_ids, state, config, labels=labels, normalizer=normalizer)

  Settings the fused backend cannot compute (see the capability table) are refused
  with a ValueError naming them.

  Args:
    student_hidden: ``[B, T, d]`` student final hidden states.
    student_head: ``[d, V]`` student lm-head matrix.
    teacher_hidden: ``[B, T, d_T]`` teacher final hidden states.
    teacher_head: ``[d_T, V]`` teacher lm-head matrix.
    span_ids: ``[B, T]`` int span types.
    state: :class:`~sad_jax.objective.SADState`.
    config: the objective config.
    labels: ``[B, T]`` int hard labels (``hard_label_weight``).
    normalizer: as in :func:`sad_jax.objective.sad_loss`.
    chunk_size: tokens per chunk (default :func:`default_chunk_size`).
    update_state: as in :func:`sad_jax.objective.sad_loss`.

  Returns:
    ``(loss, (metrics, new_state))`` as :func:`sad_jax.objective.sad_loss`.
  """
  from sad_jax.objective import _loss as loss_lib  # pylint: disable=g-import-not-at-top
  from sad_jax.objective import _sad as objective  # pylint: disable=g-import-not-at-top
  return objective.sad_loss(
      loss_lib.ModelOutput(hidden=student_hidden, head=student_head),
      loss_lib.ModelOutput(hidden=teacher_hidden, head=teacher_head), span_ids, state, config,
      labels=labels, normalizer=normalizer, update_state=update_state,
      backend=Fused(chunk_size))


__all__ = ["CHUNK_ELEMENTS", "Fused", "default_chunk_size", "fused_distill_loss",
           "fused_map", "fused_sad_loss", "fused_value"]
