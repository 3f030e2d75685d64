r"""The backend interface: the vocabulary operations the one composition needs.

:func:`sad_jax.objective.sad_loss` is written once. Everything in it that touches the
vocabulary axis goes through a backend; everything else (span masks, weighting,
normalization, metrics, state) is backend-independent. A backend provides:

* ``check(config, teacher_kind)`` -- refuses, when a loss is built, a setting it cannot
  compute (the reasons come from :mod:`sad_jax.losses._registry`);
* ``token_shape(student)`` / ``vocab_size(student)``;
* ``statistics(student, teacher, where, names)`` -- the per-token teacher statistics
  at :math:`T = 1` named in ``names`` (``"all"`` or some of ``teacher_entropy``,
  ``student_entropy``, ``kl_t1``, ``agreement``, ``total_variation``), ``float32
  [B, T]``, no gradient, 0 outside ``where``;
* ``terms(student, teacher, terms, *, where, coefficients, temperature, labels,
  span_ids, axis_name, statistics, statistic_names)`` -- the per-token loss terms of
  :class:`Terms` and :math:`\sum_n c_n \ell_n` (differentiable w.r.t. the student), where
  :math:`\ell` is :meth:`Terms.combine` and :math:`c` are the reduction's per-token
  coefficients (:func:`sad_jax.objective.token_coefficients`); returns ``(total,
  values)`` with ``values`` the per-token terms, ``loss`` (:math:`\ell`), ``finite``
  (bool: the token's student and teacher inputs are finite or ``-inf``) and, when
  ``statistics`` is a mask, the statistics ``statistic_names`` computed in the same
  pass, all under ``stop_gradient``;
* ``run(fn, *args)`` -- how the composition is invoked (directly; or in a
  ``shard_map`` over the mesh for the vocab-parallel backend).

Because every normalization is linear in the per-token loss once the token weights
are known, :math:`\text{loss} = \sum_n c_n \ell_n` exactly, which is what lets the fused
backend form the student's gradient chunk by chunk without ``[N, V]`` logits.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sad_jax.losses._divergences import STATISTICS


@dataclasses.dataclass(frozen=True)
class Terms:
  r"""The per-token loss of the objective, as static data (hashable).

  .. math::
    \ell = w_D\, s_T\, D + \alpha\, \mathrm{CE}_\epsilon + c_H\,(-H(p_S))
    + c_{CP}\, \mathrm{CP} + c_{SC}\, \mathrm{SC}, \qquad s_T = T^2 \text{ or } 1

  Attributes:
    divergence: the divergence name, ``None`` without a teacher term.
    divergence_kwargs: its static parameters, as sorted ``(name, value)`` pairs.
    divergence_weight: :math:`w_D`.
    scale_by_t2: multiply the divergence by :math:`T^2`.
    hard_label_weight: :math:`\alpha`; ``labels`` computes the CE (a metric) even at 0.
    label_smoothing: :math:`\epsilon`.
    entropy, confidence_penalty, confidence_threshold, span_consistency: the
      regularizer coefficients (see :mod:`sad_jax.losses._regularizers`).
  """
  divergence: str | None = "forward_kl"
  divergence_kwargs: tuple[tuple[str, Any], ...] = ()
  divergence_weight: float = 1.0
  scale_by_t2: bool = True
  hard_label_weight: float = 0.0
  label_smoothing: float = 0.0
  entropy: float = 0.0
  confidence_penalty: float = 0.0
  confidence_threshold: float = float("inf")
  span_consistency: float = 0.0

  @classmethod
  def from_config(cls, config) -> "Terms":
    """The terms of a validated objective config."""
    reg = config.regularizers
    on = config.divergence_weight > 0
    return cls(divergence=config.divergence if on else None,
               divergence_kwargs=tuple(sorted(dict(config.divergence_kwargs).items())),
               divergence_weight=float(config.divergence_weight),
               scale_by_t2=bool(config.scale_by_t2),
               hard_label_weight=float(config.hard_label_weight),
               label_smoothing=float(config.label_smoothing),
               entropy=float(reg.entropy), confidence_penalty=float(reg.confidence_penalty),
               confidence_threshold=float(reg.confidence_threshold),
               span_consistency=float(reg.span_consistency))

  @property
  def kwargs(self) -> dict[str, Any]:
    return dict(self.divergence_kwargs)

  def combine(self, values: dict[str, jax.Array], temperature) -> jax.Array:
    """:math:`\\ell` from the per-token terms ``values`` (keys as :meth:`names`)."""
    total = jnp.zeros(jnp.shape(next(iter(values.values()))), jnp.float32)
    if self.divergence is not None:
      scale = jnp.square(temperature) if self.scale_by_t2 else 1.0
      total = total + self.divergence_weight * scale * values["divergence"]
    if self.hard_label_weight > 0:
      total = total + self.hard_label_weight * values["hard_label_ce"]
    if self.entropy != 0:
      total = total + self.entropy * values["entropy"]
    if self.confidence_penalty > 0:
      total = total + self.confidence_penalty * values["confidence_penalty"]
    if self.span_consistency > 0:
      total = total + self.span_consistency * values["span_consistency"]
    return total

  def names(self, with_labels: bool) -> tuple[str, ...]:
    """The per-token terms a backend computes for these terms."""
    out = []
    if self.divergence is not None:
      out.append("divergence")
    if with_labels:
      out.append("hard_label_ce")
    if self.entropy != 0:
      out.append("entropy")
    if self.confidence_penalty > 0:
      out.append("confidence_penalty")
    if self.span_consistency > 0:
      out.append("span_consistency")
    return tuple(out)


def weighted_total(per_token: jax.Array, coefficients: jax.Array, where: jax.Array,
                   axis_name=None) -> jax.Array:
  """:math:`\\sum_n c_n \\ell_n` over the tokens in ``where`` (psum-ed over ``axis_name``).

  Non-finite :math:`\\ell` on a token in ``where`` makes the total non-finite (so the
  step's guard sees it); tokens outside ``where`` contribute exactly 0.
  """
  total = jnp.sum(jnp.where(where, coefficients * per_token, 0.0))
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def teacher_kind(teacher) -> str:
  """``"sparse"`` for a :class:`~sad_jax.losses.SparseTeacher`, ``"none"`` for None, else
  ``"dense"``."""
  from sad_jax.losses import _sparse as sparse  # pylint: disable=g-import-not-at-top
  if teacher is None:
    return "none"
  return "sparse" if isinstance(teacher, sparse.SparseTeacher) else "dense"


__all__ = ["STATISTICS", "Terms", "teacher_kind", "weighted_total"]
