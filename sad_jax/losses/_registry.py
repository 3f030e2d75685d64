r"""The one registry of what each divergence and objective feature supports, per backend.

Backends (:mod:`sad_jax.backends`):

* ``dense`` -- full logits ``[B, T, V]`` on each device;
* ``vocab_parallel`` -- logits split over a mesh axis along the vocabulary
  (``shard_map``; only ``[B, T]`` values cross devices);
* ``fused`` -- hidden states and lm-head, logits formed chunk by chunk and never
  stored (gradients formed in the forward pass).

Teacher kinds: ``dense`` logits (on the fused backend: the teacher's hidden states and
head) or a ``sparse`` top-k :class:`~sad_jax.losses.SparseTeacher`.

Everything the objective can be configured with is listed here with the reason a
backend refuses it, if it does; :func:`check` applies this to a config when a loss is
built, and :func:`capability_table` renders the table the docs print. A divergence has
a vocab-parallel form when it is a sum over the vocabulary of a function of
:math:`(q_v, p_v)` (:data:`VOCAB_TERMS`): each shard sums its slice and the sums are
``psum``-ed. On a sparse teacher every backend first gathers the student's
log-probabilities on the teacher's support (plus the tail), so the sparse column of a
divergence is its ``SPARSE_DIVERGENCES`` membership.
"""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp

from sad_jax.losses import _divergences as divergences

BACKENDS = ("dense", "vocab_parallel", "fused")
TEACHER_KINDS = ("dense", "sparse")


def _unit_interval(name, value, fn, *, open_ends=False):
  value = float(value)
  ok = 0 < value < 1 if open_ends else 0 <= value <= 1
  if not ok:
    raise ValueError(f"{fn}: {name} must lie in {'(0, 1)' if open_ends else '[0, 1]'}, "
                     f"got {value!r}")
  return value


def _terms_forward_kl(log_q, log_p):
  return divergences.kl_terms(log_p, log_q)


def _terms_reverse_kl(log_q, log_p):
  return divergences.kl_terms(log_q, log_p)


def _terms_symmetric_kl(log_q, log_p, ratio=0.5):
  ratio = _unit_interval("ratio", ratio, "symmetric_kl")
  return ((1.0 - ratio) * divergences.kl_terms(log_p, log_q)
          + ratio * divergences.kl_terms(log_q, log_p))


def _terms_generalized_jsd(log_q, log_p, beta=0.5):
  beta = _unit_interval("beta", beta, "generalized_jsd", open_ends=True)
  return (beta * divergences.kl_to_mixture_terms(log_p, log_q, beta)
          + (1.0 - beta) * divergences.kl_to_mixture_terms(log_q, log_p, 1.0 - beta))


def _terms_skew_kl(log_q, log_p, alpha=0.1):
  alpha = _unit_interval("alpha", alpha, "skew_kl")
  return divergences.kl_to_mixture_terms(log_p, log_q, alpha)


def _terms_skew_reverse_kl(log_q, log_p, alpha=0.1):
  alpha = _unit_interval("alpha", alpha, "skew_reverse_kl")
  return divergences.kl_to_mixture_terms(log_q, log_p, alpha)


def _terms_alpha_divergence(log_q, log_p, alpha=1.5):
  # The dense form's per-entry terms: weighted by p (alpha >= 1/2) or by q, so that both
  # limits (KL at alpha = 1 and 0) are cancellation-free.
  alpha = float(alpha)
  if not math.isfinite(alpha):
    raise ValueError(f"alpha_divergence: alpha must be finite, got {alpha!r}")
  if alpha >= 0.5:  # p_i^a q_i^(1-a) = p_i exp((a - 1)(log p_i - log q_i))
    log_w, c, scale = log_p, alpha - 1.0, alpha
  else:  # = q_i exp(a (log p_i - log q_i))
    log_w, c, scale = log_q, alpha, alpha - 1.0
  w = jnp.exp(log_w)
  support = w > 0
  diff = jnp.where(support, log_p - log_q, 0.0)
  expm1_over = diff if c == 0 else jnp.expm1(c * diff) / c
  return jnp.where(support, w * expm1_over, 0.0) / scale


def _terms_total_variation(log_q, log_p):
  return 0.5 * jnp.abs(jnp.exp(log_p) - jnp.exp(log_q))


VOCAB_TERMS: dict[str, Callable] = {
    "forward_kl": _terms_forward_kl,
    "reverse_kl": _terms_reverse_kl,
    "symmetric_kl": _terms_symmetric_kl,
    "generalized_jsd": _terms_generalized_jsd,
    "skew_kl": _terms_skew_kl,
    "skew_reverse_kl": _terms_skew_reverse_kl,
    "alpha_divergence": _terms_alpha_divergence,
    "total_variation": _terms_total_variation,
}
"""Per-entry terms ``f(log_q, log_p, **params) -> [..., V]`` whose vocabulary sum is the
divergence: the vocab-parallel form."""

_NO_VOCAB_FORM = {
    "alpha_beta_divergence": ("no per-entry (vocabulary-sum) form is registered for its "
                              "limit cases; use the dense or fused backend"),
    "wasserstein": "sorts each distribution over the whole vocabulary",
    "adaptive_kl": "splits the vocabulary by the teacher's sorted cumulative mass",
    "focal_kl": "needs the teacher's argmax entry of the student (a cross-shard gather)",
}


def divergence_reason(name: str, backend: str, teacher_kind: str = "dense") -> str | None:
  """Why ``backend`` refuses divergence ``name`` with a ``teacher_kind`` teacher (None: ok)."""
  divergences.get_divergence(name)
  _check_backend(backend, teacher_kind)
  if teacher_kind == "sparse" and name not in divergences.SPARSE_DIVERGENCES:
    return ("not an f-divergence, so a top-k teacher's missing tail cannot be "
            "represented exactly")
  if backend == "vocab_parallel" and teacher_kind == "dense" and name not in VOCAB_TERMS:
    return _NO_VOCAB_FORM[name]
  return None


# Objective features: (config field, value shown) -> {backend: reason}; absent = ok.
_FUSED_ROW_MEAN = ("needs each row's mean distribution over all of its tokens; the fused "
                   "backend sees one chunk of tokens at a time")
FEATURES: dict[str, dict[str, str]] = {
    "weighting: uniform, reasoning_heavy, action_heavy, adaptive, curriculum": {},
    "weighting: confidence_based, difficulty_aware": {},
    "normalization: tokens, span_mean, sequence": {},
    "hard_label_weight (cross-entropy, label smoothing)": {},
    "regularizers.entropy": {},
    "regularizers.confidence_penalty": {},
    "regularizers.span_consistency": {"fused": _FUSED_ROW_MEAN},
    "regularizers.moe_load_balance": {},
    "metrics ((sum, count) per span type) and SADState updates": {},
    "adaptive_temperature": {},
}


def _check_backend(backend, teacher_kind):
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
  if teacher_kind not in TEACHER_KINDS:
    raise ValueError(f"unknown teacher kind {teacher_kind!r}; known: "
                     f"{', '.join(TEACHER_KINDS)}")


def _active_features(config) -> list[str]:
  reg = config.regularizers
  out = []
  if reg.span_consistency > 0:
    out.append("regularizers.span_consistency")
  return out


def refusals(config, backend: str, teacher_kind: str | None = None) -> list[str]:
  """Every setting of a validated objective ``config`` that ``backend`` refuses, as
  ``"<setting> on the <backend> backend[ with a <kind> teacher]: <reason>"``.

  With ``teacher_kind=None`` (the teacher is not known yet) a divergence is refused
  only when it is refused with every kind of teacher.
  """
  out = []
  if config.divergence_weight > 0:
    name = config.divergence
    if teacher_kind is not None:
      reason = divergence_reason(name, backend, teacher_kind)
      if reason:
        out.append(f"divergence = {name!r} on the {backend} backend with a {teacher_kind} "
                   f"teacher: {reason}")
    else:
      reasons = [divergence_reason(name, backend, k) for k in TEACHER_KINDS]
      if all(reasons):
        out.append(f"divergence = {name!r} on the {backend} backend: "
                   + "; ".join(f"with a {k} teacher, {r}" for k, r in zip(TEACHER_KINDS, reasons)))
  for feature in _active_features(config):
    reason = FEATURES[feature].get(backend)
    if reason:
      out.append(f"{feature} on the {backend} backend: {reason}")
  return out


def check(config, backend: str, teacher_kind: str | None = None) -> None:
  """Raises a ValueError listing every refused setting (see :func:`refusals`)."""
  _check_backend(backend, teacher_kind or "dense")
  refused = refusals(config, backend, teacher_kind)
  if refused:
    raise ValueError("this objective cannot run as configured: " + "; ".join(refused))


def capability_table() -> str:
  """The capability table as Markdown.

  Rows are the divergences and the objective features, columns backend x teacher kind;
  a cell is ``yes`` or ``no (n)`` with reason ``n`` listed under the table. The docs
  print it (``docs/architecture.md``); regenerate with
  ``python -c "from sad_jax import losses; print(losses.capability_table())"``.
  """
  cols = [(b, k) for b in BACKENDS for k in TEACHER_KINDS]
  reasons: list[str] = []

  def cell(reason):
    if reason is None:
      return "yes"
    if reason not in reasons:
      reasons.append(reason)
    return f"no ({reasons.index(reason) + 1})"

  lines = ["| | " + " | ".join(f"{b}, {k} teacher" for b, k in cols) + " |",
           "|" + "---|" * (len(cols) + 1)]
  for name in divergences.DIVERGENCES:
    cells = [cell(divergence_reason(name, b, k)) for b, k in cols]
    lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
  for feature, refused in FEATURES.items():
    cells = [cell(refused.get(b)) for b, _ in cols]
    lines.append(f"| {feature} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.extend(f"{i}. {reason}" for i, reason in enumerate(reasons, 1))
  return "\n".join(lines) + "\n"


__all__ = ["BACKENDS", "FEATURES", "TEACHER_KINDS", "VOCAB_TERMS", "capability_table",
           "check", "divergence_reason", "refusals"]
