r"""The dense backend: full logits ``[B, T, V]`` on each device.

The reference implementation of the backend interface (:mod:`sad_jax.backends._base`):
the divergences of :mod:`sad_jax.losses` on the logits, the regularizers and the
hard-label cross-entropy, and the teacher statistics. The fused backend applies the
same per-token functions (:func:`dense_terms`, :func:`dense_statistics`) to each chunk
of tokens.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from sad_jax.backends import _base as base
from sad_jax.losses import _cross_entropy as cross_entropy
from sad_jax.losses import _divergences as divergences
from sad_jax.losses import _registry as registry
from sad_jax.losses import _regularizers as regularizers
from sad_jax.losses import _sparse as sparse


def _entropy(log_p: jax.Array) -> jax.Array:
  """:math:`-\\sum_i p_i \\log p_i` over the last axis, with :math:`0 \\log 0 = 0`."""
  p = jnp.exp(log_p)
  return -jnp.sum(p * jnp.where(p > 0, log_p, 0.0), axis=-1)


def _check_teacher(student_logits, teacher):
  if isinstance(teacher, sparse.SparseTeacher):
    return
  if not (hasattr(teacher, "shape") and hasattr(teacher, "dtype")):
    raise TypeError(f"the teacher must be dense logits [..., V] or a SparseTeacher, got "
                    f"{type(teacher).__name__}")
  if teacher.shape[-1] != student_logits.shape[-1]:
    raise ValueError(f"student vocab size {student_logits.shape[-1]} != teacher vocab "
                     f"size {teacher.shape[-1]}; pad the smaller one with sad_jax.pad_vocab")
  if teacher.shape != student_logits.shape:
    raise ValueError(f"teacher shape {teacher.shape} must equal student_logits shape "
                     f"{student_logits.shape}")


def dense_statistics(student_logits: chex.Array, teacher: Any,
                     where: chex.Array, names="all") -> dict[str, jax.Array]:
  """Per-token statistics at :math:`T = 1`, all ``float32 [...]`` without gradient.

  ``names``: which (``"all"`` or names of :data:`~sad_jax.backends.STATISTICS`); only
  those are computed and returned.

  ``teacher_entropy`` :math:`H(p_T)`, ``student_entropy`` :math:`H(p_S)`,
  ``kl_t1`` :math:`KL(p_T \\| p_S)`, ``agreement`` :math:`[\\arg\\max p_S =
  \\arg\\max p_T]` and ``total_variation`` :math:`\\tfrac12 \\lVert p_T - p_S \\rVert_1`.
  They feed the metrics, the adaptive temperature and the ``confidence_based`` /
  ``difficulty_aware`` strategies. Tokens outside ``where`` give 0; a non-finite
  teacher or student logit on a token in ``where`` makes its entropies non-finite.
  Dense teachers take one blocked pass over both logits
  (:func:`sad_jax.losses._divergences.statistics`).

  For a :class:`~sad_jax.losses.SparseTeacher`, ``teacher_entropy``, ``kl_t1`` and
  ``total_variation`` are computed on the support of its tail policy at :math:`T = 1`
  (:func:`sad_jax.losses._sparse.reduce_to_support`: the top-k entries, plus the tail
  bucket for ``tail_bucket`` / ``renormalize_teacher``), where the tail counts as one
  token; the teacher entropy is therefore a lower bound of the full one.
  ``student_entropy`` (full vocabulary) and ``agreement`` (the teacher's argmax is its
  most likely stored index) are exact. With ``K = V`` every statistic equals the dense
  one.

  Args:
    student_logits: ``[..., V]``.
    teacher: dense teacher logits ``[..., V]`` or a SparseTeacher with ``[..., K]`` leaves.
    where: ``[...]`` bool, the trained tokens.
  """
  where = jnp.asarray(where, bool)
  names = divergences.statistic_names(names)
  _check_teacher(student_logits, teacher)
  if not isinstance(teacher, sparse.SparseTeacher):
    stats, _ = divergences.statistics(student_logits, teacher, where, names)
    return {k: v.astype(jnp.float32) for k, v in stats.items()}
  s = jnp.where(where[..., None], jax.lax.stop_gradient(student_logits), 0.0)
  teacher = jax.lax.stop_gradient(teacher)
  log_q_support, log_p = sparse.reduce_to_support(s.astype(jnp.float32), teacher, 1.0, where)
  logprobs = jnp.asarray(teacher.logprobs, jnp.float32)
  top = jnp.take_along_axis(jnp.asarray(teacher.indices),
                            jnp.argmax(logprobs, axis=-1)[..., None], axis=-1)
  agreement = jnp.argmax(s, axis=-1) == top[..., 0]
  # A non-finite stored log-prob must not vanish in the tail policy's arithmetic.
  bad = ~jnp.all(jnp.isfinite(logprobs) | (logprobs == -jnp.inf), axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q_support)
  safe_p = jnp.where(p > 0, log_p, 0.0)
  stats = dict(
      teacher_entropy=lambda: jnp.where(bad, jnp.nan, _entropy(log_p)),
      student_entropy=lambda: _entropy(jax.nn.log_softmax(s.astype(jnp.float32), axis=-1)),
      kl_t1=lambda: jnp.sum(jnp.where(
          p > 0, p * (safe_p - jnp.where(p > 0, log_q_support, 0.0)), 0.0), axis=-1),
      agreement=lambda: agreement.astype(jnp.float32),
      total_variation=lambda: 0.5 * jnp.sum(jnp.abs(p - q), axis=-1),
  )
  return {k: jnp.where(where, stats[k](), 0.0) for k in names}


def _finite_rows(x) -> jax.Array:
  """``[...]`` bool: every entry of the row is finite or ``-inf`` (an impossible token)."""
  x = jnp.asarray(x)
  return jnp.all(jnp.isfinite(x) | (x == -jnp.inf), axis=-1)


def inputs_finite(student_logits: chex.Array, teacher: Any) -> jax.Array:
  """``[...]`` bool: the token's student logits and teacher values (dense logits or a
  SparseTeacher's log-probabilities) are finite or ``-inf``. One read of each input; the
  composition poisons the loss where this fails on a trained token, so a NaN cannot
  vanish in a kernel's ``p > 0`` mask."""
  ok = _finite_rows(jax.lax.stop_gradient(student_logits))
  if isinstance(teacher, sparse.SparseTeacher):
    ok &= _finite_rows(jax.lax.stop_gradient(teacher.logprobs))
  elif teacher is not None:
    ok &= _finite_rows(jax.lax.stop_gradient(teacher))
  return ok


def dense_terms(student_logits: chex.Array, teacher: Any, terms: base.Terms, *,
                where: chex.Array, temperature, labels: chex.Array | None = None,
                span_ids: chex.Array | None = None,
                statistics: chex.Array | None = None,
                statistic_names="all") -> dict[str, jax.Array]:
  """The per-token terms of ``terms`` (:meth:`~sad_jax.backends._base.Terms.names`) from
  dense logits ``[..., V]``; ``float32 [...]``, 0 outside ``where``.

  Also ``finite`` (:func:`inputs_finite`) and, when ``statistics`` is a ``[...]`` bool
  mask, the :func:`dense_statistics` ``statistic_names`` on it. A divergence with a fused kernel
  (:data:`sad_jax.losses._divergences.FUSED_DIVERGENCES`) on a dense teacher returns
  both from its own blocked pass over the logits
  (:func:`sad_jax.losses._divergences.with_statistics`); otherwise they take their
  own passes.
  """
  values, aux = {}, None
  if terms.divergence is not None:
    if (terms.divergence in divergences.FUSED_DIVERGENCES
        and not isinstance(teacher, sparse.SparseTeacher)):
      values["divergence"], aux = divergences.with_statistics(
          terms.divergence, student_logits, teacher, temperature=temperature, where=where,
          statistics=statistics, names=statistic_names, **terms.kwargs)
      aux = {k: v if k == "finite" else v.astype(jnp.float32) for k, v in aux.items()}
    else:
      values["divergence"] = divergences.get_divergence(terms.divergence)(
          student_logits, teacher, temperature=temperature, where=where, **terms.kwargs)
  if labels is not None:
    values["hard_label_ce"] = cross_entropy.hard_label_ce(
        student_logits, labels, label_smoothing=terms.label_smoothing, where=where)
  if terms.entropy != 0:
    values["entropy"] = regularizers.entropy_regularizer(student_logits, where=where)
  if terms.confidence_penalty > 0:
    values["confidence_penalty"] = regularizers.confidence_penalty(
        student_logits, threshold=terms.confidence_threshold, where=where)
  if terms.span_consistency > 0:
    values["span_consistency"] = regularizers.span_consistency(student_logits, span_ids,
                                                               where=where)
  if aux is None:
    aux = {"finite": inputs_finite(student_logits, teacher)}
    if statistics is not None:
      aux.update(dense_statistics(student_logits, teacher, statistics, statistic_names))
  return dict(values, **aux)


class Dense:
  """The dense backend: the student's logits ``[B, T, V]`` (``ModelOutput.logits``)."""

  name = "dense"

  def check(self, config, teacher_kind: str | None = None) -> None:
    registry.check(config, self.name, teacher_kind)

  def logits(self, student) -> jax.Array:
    s = student.logits
    if s is None:
      raise ValueError("the dense backend needs the student's logits [B, T, V]; the model "
                       "returned none (hidden states and head go to backends.fused())")
    s = jnp.asarray(s)
    if not jnp.issubdtype(s.dtype, jnp.floating):
      raise TypeError(f"student_logits must be floating point, got dtype {s.dtype}")
    if s.ndim != 3:
      raise ValueError(f"student_logits must be [B, T, V], got shape {s.shape}")
    return s

  def token_shape(self, student) -> tuple[int, int]:
    return self.logits(student).shape[:2]

  def vocab_size(self, student) -> int:
    return self.logits(student).shape[-1]

  def run(self, fn, student, teacher, span_ids, labels, state, normalizer):
    """``fn(student, teacher, span_ids, labels, state, normalizer, axis_name=None)``."""
    return fn(student, teacher, span_ids, labels, state, normalizer, None)

  def statistics(self, student, teacher, where, names="all"):
    return dense_statistics(self.logits(student), teacher, where, names)

  def terms(self, student, teacher, terms: base.Terms, *, where, coefficients, temperature,
            labels=None, span_ids=None, axis_name=None, statistics=None,
            statistic_names="all"):
    s = self.logits(student)
    if teacher is not None:
      _check_teacher(s, teacher)
    values = dense_terms(s, teacher, terms, where=where, temperature=temperature,
                         labels=labels, span_ids=span_ids, statistics=statistics,
                         statistic_names=statistic_names)
    per_token = terms.combine(values, temperature)
    total = base.weighted_total(per_token, coefficients, where, axis_name)
    return total, jax.lax.stop_gradient(dict(values, loss=per_token))


DENSE = Dense()

__all__ = ["DENSE", "Dense", "dense_statistics", "dense_terms", "inputs_finite"]
