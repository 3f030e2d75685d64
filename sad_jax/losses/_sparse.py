r"""Sparse (top-k) teachers and the policies for their missing tail mass.

A :class:`SparseTeacher` stores, per token, the ``K`` most likely teacher tokens
(``indices [..., K]``) and their log-probabilities over the *full* vocabulary
(``logprobs [..., K]``), produced at the softmax temperature :math:`T_0`
(``teacher.temperature``). It replaces dense teacher logits ``[..., V]`` in the
divergences of :mod:`sad_jax.losses._divergences` that are f-divergences (KL both ways,
generalized JSD, symmetric and skew KLs, the :math:`\alpha`-divergence, total
variation): the teacher's unknown tail is handled by a *tail policy*, which maps the
dense student logits and the sparse teacher to two aligned log-distributions over a
small support, on which the divergence is then evaluated exactly.

With :math:`S` the stored indices, :math:`\ell_i` their log-probabilities at
:math:`T_0`, :math:`a = z_{\text{student}} / T` and :math:`q = \mathrm{softmax}(a)`
over the full vocabulary, the teacher at the divergence's temperature :math:`T` is
re-tempered from the stored log-probabilities with :math:`r = T_0 / T`
(exact for the top-k ratios: :math:`\ell_i - \ell_j = (z_i - z_j) / T_0`):

* :func:`renormalize_teacher` (DistillKit's "zero" tail): the teacher is
  renormalized on :math:`S`, the student keeps its full softmax; support
  :math:`S \cup \{\text{tail}\}`:

  .. math::
    \tilde p_i = \frac{e^{r \ell_i}}{\sum_{j \in S} e^{r \ell_j}}, \quad
    \tilde p_{\text{tail}} = 0; \qquad
    q_i \ (i \in S), \quad q_{\text{tail}} = \sum_{j \notin S} q_j .

  Exact for every f-divergence between :math:`\tilde p` (zero off :math:`S`) and
  :math:`q`; divergences that are infinite where :math:`\tilde p_i = 0 < q_i`
  (reverse KL, :math:`\alpha \le 0`) are ``+inf`` by definition.

* :func:`renormalize_both` (MaxText / Tunix): both distributions are restricted to
  :math:`S` and renormalized; support :math:`S`:

  .. math::
    \tilde p_i = \frac{e^{r \ell_i}}{\sum_{j \in S} e^{r \ell_j}}, \qquad
    \tilde q_i = \frac{e^{a_i}}{\sum_{j \in S} e^{a_j}} .

* :func:`tail_bucket` (TRL / DistillKit): a :math:`(K+1)`-th bucket carries the
  missing mass on both sides; support :math:`S \cup \{\text{tail}\}`:

  .. math::
    m = \max\Big(1 - \sum_{j \in S} e^{\ell_j},\ \epsilon\Big), \qquad
    \tilde p = \mathrm{softmax}\big(r \cdot [\ell_S, \log m]\big), \qquad
    q_{\text{tail}} = \sum_{j \notin S} q_j .

  The tail is computed in log space as :math:`\log(-\mathrm{expm1}(\mathrm{lse}(\ell)))`
  with :math:`\mathrm{lse}(\ell) = \ell_{\max} + \mathrm{log1p}(\sum_{j \ne \arg\max}
  e^{\ell_j - \ell_{\max}})`, and the student tail as a log-sum-exp over the
  complement of :math:`S` (never :math:`\log(1 - \sum q)`), so values and gradients
  stay finite when the top-k mass is :math:`1 - 10^{-9}` on either side. The floor
  :math:`\epsilon` = ``TAIL_FLOOR`` (float32 resolution of the top-k mass) keeps the
  mode-seeking divergences finite when the stored top-k mass rounds to 1; a stored
  mass above 1 (e.g. bf16 rounding) is renormalized. When the tail is re-tempered
  (:math:`T \ne T_0`) it is treated as one token, since the logits behind it were not
  stored; at :math:`T = T_0` the policy is exact. Where the student's tail is empty
  (``K = V``, or every other logit ``-inf``) the teacher's tail is dropped too.

Indices must be distinct within a token and lie in ``[0, V)``; tokens outside a
divergence's ``where`` mask may hold anything (e.g. ``-1`` padding from a cache).
"""
from __future__ import annotations

import math
from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

TAIL_FLOOR = 1e-7
"""Smallest teacher tail mass used by :func:`tail_bucket` (about float32 epsilon)."""


@flax.struct.dataclass
class SparseTeacher:
  """Top-k teacher outputs: a pytree usable wherever dense teacher logits are.

  Attributes:
    indices: ``[..., K]`` integer token ids (distinct per token).
    logprobs: ``[..., K]`` float log-probabilities of those ids under the teacher's
      full-vocabulary softmax at ``temperature``.
    temperature: the softmax temperature :math:`T_0` the log-probabilities were
      produced at (static).
    tail: name of the tail policy, one of ``TAIL_POLICIES`` (static).
    vocab_size: the teacher's vocabulary size ``V`` if known (static); checked
      against the student logits.
  """
  indices: chex.Array
  logprobs: chex.Array
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  tail: str = flax.struct.field(pytree_node=False, default="tail_bucket")
  vocab_size: int | None = flax.struct.field(pytree_node=False, default=None)

  def __post_init__(self):
    if self.tail not in TAIL_POLICIES:
      raise ValueError(f"SparseTeacher: unknown tail policy {self.tail!r}; known: "
                       f"{', '.join(sorted(TAIL_POLICIES))}")
    t = self.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (
        t > 0 and math.isfinite(t)):
      raise ValueError(
          f"SparseTeacher: temperature must be a finite Python number > 0, got {t!r}")
    v = self.vocab_size
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ValueError(f"SparseTeacher: vocab_size must be a positive int or None, got {v!r}")

  @property
  def k(self) -> int:
    """The number of stored tokens per position."""
    return self.indices.shape[-1]


def top_k_teacher(logits: chex.Array, k: int, *, temperature: float = 1.0,
                  tail: str = "tail_bucket") -> SparseTeacher:
  """Extracts the top-``k`` tokens of dense teacher logits.

  Args:
    logits: ``[..., V]`` teacher logits.
    k: number of tokens kept per position, ``1 <= k <= V``.
    temperature: temperature :math:`T_0` of the stored log-probabilities
      :math:`\\log \\mathrm{softmax}(z / T_0)`.
    tail: tail policy recorded in the result (see ``TAIL_POLICIES``).

  Returns:
    A :class:`SparseTeacher` with ``int32 [..., k]`` indices (most likely first)
    and ``float32 [..., k]`` log-probabilities.
  """
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating) or logits.ndim < 1:
    raise TypeError(f"top_k_teacher: logits must be a float array with a vocab axis, got "
                    f"{logits.dtype}{list(logits.shape)}")
  vocab = logits.shape[-1]
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
    raise ValueError(f"top_k_teacher: k must be an int in [1, {vocab}], got {k!r}")
  logprobs = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  values, indices = jax.lax.top_k(logprobs, k)
  return SparseTeacher(indices=indices.astype(jnp.int32), logprobs=values,
                       temperature=temperature, tail=tail, vocab_size=vocab)


# ---------------------------------------------------------------------------
# Tail policies: (student logits, teacher, T) -> (log q, log p) on a small support.
# ---------------------------------------------------------------------------


def _student_top_and_tail(student_logits, indices, temperature):
  """Returns ``(log q_S [..., K], log q_tail [..., 1], tail_empty [..., 1])``."""
  a = student_logits / temperature
  lse = jax.nn.logsumexp(a, axis=-1, keepdims=True)
  log_q_top = jnp.take_along_axis(a, indices, axis=-1) - lse
  flat = a.reshape(-1, a.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  in_top = jnp.zeros(flat.shape, bool).at[rows, indices.reshape(flat.shape[0], -1)].set(True)
  rest = jnp.where(in_top.reshape(a.shape), -jnp.inf, a)
  empty = jnp.max(rest, axis=-1, keepdims=True) == -jnp.inf
  # Double where: an empty tail would give logsumexp a NaN gradient.
  lse_rest = jax.nn.logsumexp(jnp.where(empty, 0.0, rest), axis=-1, keepdims=True)
  log_q_tail = jnp.where(empty, -jnp.inf, lse_rest - lse)
  return log_q_top, log_q_tail, empty


def _retemper(logprobs, teacher: SparseTeacher, temperature):
  return logprobs * (teacher.temperature / temperature)


def _normalize(x):
  return x - jax.nn.logsumexp(x, axis=-1, keepdims=True)


def renormalize_teacher(student_logits: chex.Array, teacher: SparseTeacher,
                        temperature=1.0) -> tuple[jax.Array, jax.Array]:
  """DistillKit's "zero" tail: teacher renormalized on its top-k, student full.

  Args:
    student_logits: ``[..., V]`` float32 student logits.
    teacher: the :class:`SparseTeacher` (``[..., K]`` leaves).
    temperature: the divergence's temperature :math:`T`.

  Returns:
    ``(log_q, log_p)``, each ``[..., K + 1]``: student and teacher
    log-probabilities on the top-k and the tail bucket (teacher tail ``-inf``).
  """
  log_q_top, log_q_tail, _ = _student_top_and_tail(student_logits, teacher.indices,
                                                   temperature)
  log_p_top = _normalize(_retemper(teacher.logprobs, teacher, temperature))
  log_p_tail = jnp.full(log_q_tail.shape, -jnp.inf, log_p_top.dtype)
  return (jnp.concatenate([log_q_top, log_q_tail], axis=-1),
          jnp.concatenate([log_p_top, log_p_tail], axis=-1))


def renormalize_both(student_logits: chex.Array, teacher: SparseTeacher,
                     temperature=1.0) -> tuple[jax.Array, jax.Array]:
  """MaxText / Tunix: both distributions restricted to the top-k and renormalized.

  Args and the first dimensions of the returns as :func:`renormalize_teacher`;
  the returned log-distributions are ``[..., K]``.
  """
  a_top = jnp.take_along_axis(student_logits / temperature, teacher.indices, axis=-1)
  return (_normalize(a_top),
          _normalize(_retemper(teacher.logprobs, teacher, temperature)))


def tail_bucket(student_logits: chex.Array, teacher: SparseTeacher,
                temperature=1.0) -> tuple[jax.Array, jax.Array]:
  """TRL / DistillKit: a ``K+1``-th bucket holds the missing mass on both sides.

  Args and returns as :func:`renormalize_teacher` (``[..., K + 1]``), with the
  teacher's tail :math:`\\max(1 - \\sum_S p, \\epsilon)` (see the module docstring).
  """
  log_q_top, log_q_tail, empty = _student_top_and_tail(student_logits, teacher.indices,
                                                       temperature)
  ell = teacher.logprobs
  top = jnp.max(ell, axis=-1, keepdims=True)
  is_top = jnp.arange(ell.shape[-1]) == jnp.argmax(ell, axis=-1)[..., None]
  rest = jnp.sum(jnp.where(is_top, 0.0, jnp.exp(ell - top)), axis=-1, keepdims=True)
  log_mass = top + jnp.log1p(rest)  # log sum_S p, accurate next to 0.
  below = log_mass < 0
  log_tail = jnp.log(-jnp.expm1(jnp.where(below, log_mass, -1.0)))
  log_tail = jnp.maximum(jnp.where(below, log_tail, -jnp.inf), math.log(TAIL_FLOOR))
  log_tail = jnp.where(empty, -jnp.inf, log_tail)
  log_p = _normalize(_retemper(jnp.concatenate([ell, log_tail], axis=-1), teacher,
                               temperature))
  return jnp.concatenate([log_q_top, log_q_tail], axis=-1), log_p


TailPolicy = Callable[..., tuple[jax.Array, jax.Array]]

TAIL_POLICIES: dict[str, TailPolicy] = {
    fn.__name__: fn for fn in (renormalize_teacher, renormalize_both, tail_bucket)
}


def reduce_to_support(student_logits: jax.Array, teacher: SparseTeacher, temperature,
                      where: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """Applies ``teacher.tail`` after checking shapes; the divergences' entry point.

  Args:
    student_logits: ``[..., V]`` float student logits (already float32 or wider).
    teacher: a :class:`SparseTeacher` with leaves ``[..., K]``.
    temperature: the divergence's temperature.
    where: optional ``[...]`` bool mask; masked tokens get harmless stand-in
      inputs (zero logits, indices ``0..K-1``) so they cannot produce NaNs.

  Returns:
    ``(log_q, log_p)`` on the policy's support (``[..., K]`` or ``[..., K + 1]``).
  """
  indices, logprobs = jnp.asarray(teacher.indices), jnp.asarray(teacher.logprobs)
  vocab = student_logits.shape[-1]
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"SparseTeacher.indices must be integers, got dtype {indices.dtype}")
  if not jnp.issubdtype(logprobs.dtype, jnp.floating):
    raise TypeError(f"SparseTeacher.logprobs must be floats, got dtype {logprobs.dtype}")
  if indices.shape != logprobs.shape:
    raise ValueError(f"SparseTeacher.indices shape {indices.shape} != logprobs shape "
                     f"{logprobs.shape}")
  if indices.shape[:-1] != student_logits.shape[:-1]:
    raise ValueError(
        f"SparseTeacher token shape {indices.shape[:-1]} != student_logits token shape "
        f"{student_logits.shape[:-1]}")
  if teacher.vocab_size is not None and teacher.vocab_size != vocab:
    raise ValueError(f"student vocab size {vocab} != teacher vocab size "
                     f"{teacher.vocab_size}; pad the smaller one with "
                     "sad_jax.losses._divergences.pad_vocab")
  if indices.shape[-1] > vocab:
    raise ValueError(f"SparseTeacher has K={indices.shape[-1]} > vocab size {vocab}")
  logprobs = logprobs.astype(jnp.promote_types(logprobs.dtype, jnp.float32))
  indices = indices.astype(jnp.int32)
  if where is not None:
    indices = jnp.where(where[..., None], indices, jnp.arange(indices.shape[-1]))
    logprobs = jnp.where(where[..., None], logprobs, 0.0)
  teacher = teacher.replace(indices=indices, logprobs=logprobs)
  return TAIL_POLICIES[teacher.tail](student_logits, teacher, temperature)


__all__ = ["SparseTeacher", "top_k_teacher", "renormalize_teacher", "renormalize_both",
           "tail_bucket", "TAIL_POLICIES", "TAIL_FLOOR", "reduce_to_support"]
