r"""The vocab-parallel backend: logits split over a mesh axis along the vocabulary.

With an lm-head sharded over the vocabulary (the ``model`` axis), each device holds a
vocabulary *slice* ``[B, T, V / n]`` of the logits. Every vocabulary operation of the
composition is computed from the slices: each softmax is

.. math::
  \log p_v = z_v - m - \log \sum_{\text{shards}} \sum_{u \in \text{shard}} e^{z_u - m},
  \qquad m = \mathrm{pmax}_{\text{shards}} \max_{u \in \text{shard}} z_u

(per-shard max and sum-exp combined with ``pmax`` / ``psum``, as in
mesh-transformer-jax's ``ProjectionShard.loss``); every divergence that is a sum over
the vocabulary of a function of :math:`(p_v, q_v)`
(:data:`sad_jax.losses._registry.VOCAB_TERMS`) is summed per shard and ``psum``-ed;
argmax, cross-entropy, entropies and the span-consistency distance likewise. A sparse
(top-k) teacher is handled by gathering the student's global log-probabilities on the
teacher's support and its tail (``[..., K + 1]``, replicated), on which the dense
divergences then run. Only ``[B, T]``- or ``[B, T, K]``-shaped values cross devices:
neither the loss nor its gradient gathers ``[tokens, V]``.

:func:`vocab_parallel` with a mesh runs the composition in a ``shard_map`` (logits
``P(BATCH_AXES, None, "model")``); without one it expects to be called inside
``shard_map`` / ``pmap`` where ``vocab_axis`` is mapped.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sad_jax.backends import _base as base
from sad_jax.backends import _dense as dense
from sad_jax.losses import _divergences as divergences
from sad_jax.losses import _registry as registry
from sad_jax.losses import _sparse as sparse
from sad_jax.objective import _spans as spans

BATCH_AXES = ("data", "fsdp")
VOCAB_AXIS = "model"
VOCAB_PARALLEL_DIVERGENCES = tuple(registry.VOCAB_TERMS)


def vocab_parallel_log_softmax(logits: chex.Array, vocab_axis) -> jax.Array:
  """Log-softmax over a vocabulary split across ``vocab_axis``.

  Args:
    logits: ``[..., V_local]`` this shard's slice of the logits.
    vocab_axis: the mapped axis name (``shard_map`` / ``pmap``) over which the
      vocabulary is split.

  Returns:
    ``[..., V_local]`` log-probabilities of this slice under the *global* softmax.
    Only ``[...]``-shaped values cross devices. The max is a constant for the
    gradient (it cancels exactly).
  """
  local_max = jnp.max(jax.lax.stop_gradient(logits), axis=-1, keepdims=True)
  m = jax.lax.pmax(local_max, vocab_axis)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - m), axis=-1, keepdims=True), vocab_axis)
  return logits - m - jnp.log(sum_exp)


def _masked_float(x, where):
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x if where is None else jnp.where(where[..., None], x, 0.0)


def _vsum(x, vocab_axis):
  return jax.lax.psum(jnp.sum(x, axis=-1), vocab_axis)


def vocab_parallel_divergence(name: str, student_logits: chex.Array, teacher_logits: chex.Array,
                              *, vocab_axis, temperature=1.0, where: chex.Array | None = None,
                              **params) -> jax.Array:
  """A per-token divergence from vocabulary slices, equal to ``sad_jax.losses.<name>``.

  Args:
    name: one of :data:`VOCAB_PARALLEL_DIVERGENCES`.
    student_logits: ``[..., V_local]`` this shard's student logits.
    teacher_logits: ``[..., V_local]`` this shard's teacher logits (same slice).
    vocab_axis: the mapped axis the vocabulary is split over.
    temperature: softmax temperature (may be traced).
    where: optional ``[...]`` bool token mask; masked tokens give 0.
    **params: the divergence's parameters (``beta``, ``alpha``, ``ratio``).

  Returns:
    ``[...]`` float32 per-token divergence, identical on every vocabulary shard.
  """
  if name not in registry.VOCAB_TERMS:
    raise ValueError(f"divergence {name!r} has no vocab-parallel form; available: "
                     f"{', '.join(VOCAB_PARALLEL_DIVERGENCES)}")
  if jnp.shape(student_logits) != jnp.shape(teacher_logits):
    raise ValueError(f"student_logits shape {jnp.shape(student_logits)} and teacher_logits "
                     f"shape {jnp.shape(teacher_logits)} differ")
  if where is not None:
    where = jnp.asarray(where, bool)
  s = _masked_float(student_logits, where)
  t = _masked_float(teacher_logits, where)
  log_q = vocab_parallel_log_softmax(s / temperature, vocab_axis)
  log_p = vocab_parallel_log_softmax(t / temperature, vocab_axis)
  value = _vsum(registry.VOCAB_TERMS[name](log_q, log_p, **params), vocab_axis)
  return value if where is None else jnp.where(where, value, 0.0)


def _global_argmax(x, vocab_axis, offset):
  """First global index of the max of ``x`` ``[..., V_local]`` split over ``vocab_axis``."""
  local_max = jnp.max(x, axis=-1)
  local_arg = jnp.argmax(x, axis=-1).astype(jnp.int32) + offset
  global_max = jax.lax.pmax(local_max, vocab_axis)
  big = jnp.iinfo(jnp.int32).max
  return jax.lax.pmin(jnp.where(local_max == global_max, local_arg, big), vocab_axis)


def _entropy(log_p, vocab_axis):
  p = jnp.exp(log_p)
  return -_vsum(p * jnp.where(p > 0, log_p, 0.0), vocab_axis)


def _support_logits(s, teacher: sparse.SparseTeacher, temperature, vocab_axis):
  r"""The student on a sparse teacher's support, from vocabulary slices.

  Returns ``[..., K + 1]`` pseudo-logits :math:`T \log q_T` on the teacher's ``K``
  indices and on the rest of the vocabulary (``-inf`` when the rest is empty), and the
  :class:`SparseTeacher` re-indexed onto them (indices ``0..K-1``, vocabulary ``K + 1``):
  any divergence of the dense API on these equals the one on the full logits.
  """
  log_q = vocab_parallel_log_softmax(s / temperature, vocab_axis)
  v_local = s.shape[-1]
  idx = jnp.asarray(teacher.indices, jnp.int32) - jax.lax.axis_index(vocab_axis) * v_local
  mine = (idx >= 0) & (idx < v_local)
  local = jnp.clip(idx, 0, v_local - 1)
  picked = jnp.take_along_axis(log_q, local, axis=-1)
  log_q_top = jax.lax.psum(jnp.where(mine, picked, 0.0), vocab_axis)
  flat = log_q.reshape(-1, v_local)
  rows = jnp.arange(flat.shape[0])[:, None]
  hit = jnp.zeros(flat.shape, jnp.int32).at[rows, local.reshape(flat.shape[0], -1)].add(
      mine.reshape(flat.shape[0], -1).astype(jnp.int32)).reshape(log_q.shape) > 0
  rest = jnp.where(hit, -jnp.inf, log_q)
  m = jax.lax.pmax(jnp.max(jax.lax.stop_gradient(rest), axis=-1, keepdims=True), vocab_axis)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  total = jax.lax.psum(jnp.sum(jnp.exp(rest - m), axis=-1, keepdims=True), vocab_axis)
  log_tail = jnp.where(total > 0, m + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
  pseudo = temperature * jnp.concatenate([log_q_top, log_tail], axis=-1)
  k = teacher.indices.shape[-1]
  local_teacher = teacher.replace(
      indices=jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), teacher.indices.shape),
      vocab_size=k + 1)
  return pseudo, local_teacher


def vocab_parallel_statistics(student_logits: chex.Array, teacher, where: chex.Array, *,
                              vocab_axis, names="all") -> dict[str, jax.Array]:
  """:func:`sad_jax.backends.dense_statistics` from vocabulary slices.

  Args:
    student_logits: ``[B, T, V_local]`` slice.
    teacher: the teacher's ``[B, T, V_local]`` slice, or a SparseTeacher (replicated
      ``[B, T, K]`` leaves with global indices).
    where: ``[B, T]`` bool trained tokens.
    vocab_axis: the mapped axis the vocabulary is split over.
    names: which statistics to return (``"all"`` or names); all are computed.

  Returns:
    ``float32 [B, T]`` ``teacher_entropy``, ``student_entropy``, ``kl_t1``,
    ``agreement`` and ``total_variation`` (those in ``names``), without gradient, 0
    outside ``where``.
  """
  names = divergences.statistic_names(names)
  return {k: v for k, v in _all_statistics(student_logits, teacher, where,
                                           vocab_axis).items() if k in names}


def _all_statistics(student_logits, teacher, where, vocab_axis) -> dict[str, jax.Array]:
  """Every statistic of :func:`vocab_parallel_statistics`."""
  where = jnp.asarray(where, bool)
  s = _masked_float(jax.lax.stop_gradient(student_logits), where)
  log_q = vocab_parallel_log_softmax(s, vocab_axis)
  offset = jax.lax.axis_index(vocab_axis) * s.shape[-1]
  student_arg = _global_argmax(s, vocab_axis, offset)
  if isinstance(teacher, sparse.SparseTeacher):
    teacher = jax.lax.stop_gradient(teacher)
    pseudo, local_teacher = _support_logits(s, teacher, 1.0, vocab_axis)
    stats = dense.dense_statistics(pseudo, local_teacher, where)
    logprobs = jnp.asarray(teacher.logprobs, jnp.float32)
    top = jnp.take_along_axis(jnp.asarray(teacher.indices),
                              jnp.argmax(logprobs, axis=-1)[..., None], axis=-1)[..., 0]
    stats["student_entropy"] = _entropy(log_q, vocab_axis)
    stats["agreement"] = (student_arg == top).astype(jnp.float32)
    return {k: jnp.where(where, v, 0.0) for k, v in stats.items()}
  t = _masked_float(jax.lax.stop_gradient(teacher), where)
  log_p = vocab_parallel_log_softmax(t, vocab_axis)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  stats = dict(
      teacher_entropy=_entropy(log_p, vocab_axis),
      student_entropy=_entropy(log_q, vocab_axis),
      kl_t1=_vsum(divergences.kl_terms(log_p, log_q), vocab_axis),
      agreement=(student_arg == _global_argmax(t, vocab_axis, offset)).astype(jnp.float32),
      total_variation=0.5 * _vsum(jnp.abs(p - q), vocab_axis),
  )
  return {k: jnp.where(where, v, 0.0) for k, v in stats.items()}


def _cross_entropy(s, labels, where, *, vocab_axis, label_smoothing):
  """:func:`sad_jax.objective.hard_label_ce` from vocabulary slices (``s`` masked)."""
  vocab_local = s.shape[-1]
  log_q = vocab_parallel_log_softmax(s, vocab_axis)
  vocab = vocab_local * jax.lax.psum(1, vocab_axis)
  idx = jnp.clip(jnp.asarray(labels), 0, vocab - 1) - jax.lax.axis_index(vocab_axis) * vocab_local
  mine = (idx >= 0) & (idx < vocab_local)
  picked = jnp.take_along_axis(log_q, jnp.clip(idx, 0, vocab_local - 1)[..., None], axis=-1)[..., 0]
  ce = -jax.lax.psum(jnp.where(mine, picked, 0.0), vocab_axis)
  if label_smoothing > 0:
    finite = jnp.isfinite(log_q)
    log_sum = _vsum(jnp.where(finite, log_q, 0.0), vocab_axis)
    n_finite = _vsum(finite, vocab_axis)
    ce = (1.0 - label_smoothing) * ce - label_smoothing * log_sum / jnp.maximum(n_finite, 1)
  return jnp.where(where, ce, 0.0)


def _span_consistency(log_p, span_ids, where, vocab_axis):
  """:func:`sad_jax.losses.span_consistency` from vocabulary slices."""
  p = jnp.exp(log_p)
  onehot = spans.span_masks(span_ids).astype(p.dtype) * where[..., None]
  means = (jnp.einsum("btk,btv->bkv", onehot, p)
           / jnp.maximum(onehot.sum(axis=1), 1.0)[..., None])
  ids = jnp.clip(jnp.asarray(span_ids), 0, spans.NUM_SPAN_TYPES - 1)
  own = jnp.take_along_axis(means, ids[..., None], axis=1)
  value = _vsum(jnp.square(p - own), vocab_axis)
  return jnp.where(where & (onehot.sum(axis=-1) > 0), value, 0.0)


def vocab_parallel_terms(student_logits, teacher, terms: base.Terms, *, where, temperature,
                         labels=None, span_ids=None, vocab_axis) -> dict[str, jax.Array]:
  """:func:`sad_jax.backends.dense_terms` from vocabulary slices."""
  where = jnp.asarray(where, bool)
  values = {}
  if terms.divergence is not None:
    if isinstance(teacher, sparse.SparseTeacher):
      s = _masked_float(student_logits, where)
      pseudo, local_teacher = _support_logits(s, teacher, temperature, vocab_axis)
      values["divergence"] = divergences.get_divergence(terms.divergence)(
          pseudo, local_teacher, temperature=temperature, where=where, **terms.kwargs)
    else:
      values["divergence"] = vocab_parallel_divergence(
          terms.divergence, student_logits, teacher, vocab_axis=vocab_axis,
          temperature=temperature, where=where, **terms.kwargs)
  s = _masked_float(student_logits, where)
  if labels is not None:
    values["hard_label_ce"] = _cross_entropy(s, labels, where, vocab_axis=vocab_axis,
                                             label_smoothing=terms.label_smoothing)
  if terms.entropy != 0 or terms.confidence_penalty > 0 or terms.span_consistency > 0:
    log_q = vocab_parallel_log_softmax(s, vocab_axis)
    h = jnp.where(where, _entropy(log_q, vocab_axis), 0.0)
    if terms.entropy != 0:
      values["entropy"] = -h
    if terms.confidence_penalty > 0:
      vocab = s.shape[-1] * jax.lax.psum(1, vocab_axis)
      tau = min(terms.confidence_threshold, math.log(vocab))
      values["confidence_penalty"] = jnp.where(where, jax.nn.relu(tau - h), 0.0)
    if terms.span_consistency > 0:
      values["span_consistency"] = _span_consistency(log_q, span_ids, where, vocab_axis)
  return values


def _batch_spec(x, batch_axes, vocab_axis=None):
  """``P`` with the batch axis at ``ndim - 3`` for ``[..., B, T, X]`` leaves (``ndim - 2``
  for ``[B, T]``) and the vocabulary on the last axis when ``vocab_axis``."""
  nd = jnp.ndim(x)
  lead = max(nd - 3, 0) if nd >= 3 else 0
  spec = [None] * nd
  spec[lead] = batch_axes
  if vocab_axis is not None:
    spec[-1] = vocab_axis
  return P(*spec)


class VocabParallel:
  """The vocab-parallel backend (see the module docstring).

  Args:
    mesh: the device mesh: the composition then runs in a ``shard_map`` over it; or
      ``None`` when the caller is already inside ``shard_map`` / ``pmap``.
    vocab_axis: the mesh axis the vocabulary (lm-head output) is split over.
    batch_axes: the mesh axes the batch is split over (with a mesh).
  """

  name = "vocab_parallel"

  def __init__(self, mesh=None, *, vocab_axis=VOCAB_AXIS, batch_axes=BATCH_AXES):
    self.mesh = mesh
    self.vocab_axis = vocab_axis
    if mesh is not None:
      missing = [a for a in (vocab_axis, *batch_axes) if a not in mesh.shape]
      if missing:
        raise ValueError(f"the vocab-parallel backend needs mesh axes {missing}; the mesh has "
                         f"{dict(mesh.shape)}")
    self.batch_axes = tuple(batch_axes)

  def check(self, config, teacher_kind: str | None = None) -> None:
    registry.check(config, self.name, teacher_kind)

  logits = dense.Dense.logits

  def token_shape(self, student):
    return self.logits(student).shape[:2]

  def vocab_size(self, student):
    return self.logits(student).shape[-1] * jax.lax.psum(1, self.vocab_axis)

  def run(self, fn, student, teacher, span_ids, labels, state, normalizer):
    """``fn(student, teacher, span_ids, labels, state, normalizer, axis_name)`` over the
    mesh (or directly, without one)."""
    if self.mesh is None:
      return fn(student, teacher, span_ids, labels, state, normalizer, None)
    b, v = self.batch_axes, self.vocab_axis
    student_spec = jax.tree.map(lambda x: _batch_spec(x, b), student)
    student_spec = type(student)(**dict(vars(student_spec),
                                        logits=P(b, None, v)))
    if isinstance(teacher, sparse.SparseTeacher):
      teacher_spec = jax.tree.map(lambda x: P(b), teacher)
    else:
      teacher_spec = None if teacher is None else P(b, None, v)
    in_specs = (student_spec, teacher_spec, P(b), None if labels is None else P(b), P(), P())
    return jax.shard_map(lambda *a: fn(*a, b), mesh=self.mesh, in_specs=in_specs, out_specs=P())(
        student, teacher, span_ids, labels, state, normalizer)

  def statistics(self, student, teacher, where, names="all"):
    return vocab_parallel_statistics(self.logits(student), teacher, where,
                                     vocab_axis=self.vocab_axis, names=names)

  def terms(self, student, teacher, terms: base.Terms, *, where, coefficients, temperature,
            labels=None, span_ids=None, axis_name=None, statistics=None,
            statistic_names="all"):
    s = self.logits(student)
    values = vocab_parallel_terms(s, teacher, terms, where=where, temperature=temperature,
                                  labels=labels, span_ids=span_ids, vocab_axis=self.vocab_axis)
    per_token = terms.combine(values, temperature)
    total = base.weighted_total(per_token, coefficients, where, axis_name)
    finite = jax.lax.pmin(dense.inputs_finite(s, teacher).astype(jnp.int32),
                          self.vocab_axis) > 0
    values = dict(values, loss=per_token, finite=finite)
    if statistics is not None:
      values.update(vocab_parallel_statistics(s, teacher, statistics,
                                              vocab_axis=self.vocab_axis,
                                              names=statistic_names))
    return total, jax.lax.stop_gradient(values)


__all__ = ["BATCH_AXES", "VOCAB_AXIS", "VOCAB_PARALLEL_DIVERGENCES", "VocabParallel",
           "vocab_parallel_divergence", "vocab_parallel_log_softmax",
           "vocab_parallel_statistics", "vocab_parallel_terms"]
