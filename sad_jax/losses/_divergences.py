r"""Per-token distillation divergences between a teacher and a student.

Every function here has the signature

.. code-block:: python

  fn(student_logits, teacher_logits, *, temperature=1.0, where=None, **params) -> Array[...]

for logits of shape ``[..., V]``: the divergence is reduced over the vocabulary
axis only, one value per token. With :math:`T` the temperature,

.. math::
  p = \mathrm{softmax}(z_{\text{teacher}} / T), \qquad
  q = \mathrm{softmax}(z_{\text{student}} / T).

Conventions (see ``DESIGN.md``):

* ``forward_kl`` is :math:`KL(p \| q)` (mean-seeking; Hinton et al., SAD),
  ``reverse_kl`` is :math:`KL(q \| p)`.
* The Hinton :math:`T^2` factor is *not* applied here; the objective applies it once.
* ``where`` is a boolean token mask of shape ``[...]``. Masked tokens give exactly 0
  and exactly zero gradient, even when their logits are NaN or all ``-inf``.
* A logit of ``-inf`` marks an impossible token; :math:`0 \log 0 = 0`, so masked
  vocabulary entries (e.g. from :func:`pad_vocab`) keep every divergence finite.
  A divergence is ``+inf`` only where the math says so (e.g. :math:`KL(p\|q)` with
  :math:`p_i > 0 = q_i`).
* Inputs of any float dtype are computed in (at least) float32 and returned in
  float32; float64 stays float64 when ``jax_enable_x64`` is on.
* Gradients are meant for the student; the teacher's gradient is finite but not
  part of the contract (wrap teacher logits in ``jax.lax.stop_gradient``).
* ``forward_kl``, ``reverse_kl``, ``generalized_jsd`` and ``total_variation`` run a
  fused ``custom_vjp`` path for dense teachers (see :func:`_fused_kernel`): rows are
  processed in blocks of about ``BLOCK_ELEMENTS`` logits taken inside each shard of a
  batch-sharded leading axis (no gathers under data parallelism); the mask and the
  dtype cast are applied per block, inside the kernel; the forward pass saves only
  per-token log-normalizers and values, and the backward pass forms the needed
  gradients (student, true teacher, temperature) in one pass over the logits.
* A NaN or ``+inf`` logit (or sparse teacher log-probability) on a token inside
  ``where`` makes that token's value NaN, for every divergence, so a non-finite
  guard downstream sees it; ``-inf`` stays an impossible token.
* The f-divergences (``SPARSE_DIVERGENCES``) also accept a
  :class:`sad_jax.losses._sparse.SparseTeacher` in place of dense teacher logits; its tail
  policy maps both sides to a small support first. The others raise a ValueError.

Static parameters (``beta``, ``alpha``, ``top_k`` …) must be Python numbers; the
temperature may be a traced scalar (e.g. from ``SADState``).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from sad_jax.losses import _sparse as sparse_lib

Divergence = Callable[..., jax.Array]


# ---------------------------------------------------------------------------
# Input handling.
# ---------------------------------------------------------------------------


def _check_temperature(temperature) -> None:
  try:
    value = float(temperature)
  except (TypeError, jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    if jnp.ndim(temperature) != 0:
      raise ValueError(
          f"temperature must be a scalar, got shape {jnp.shape(temperature)}") from None
    return  # A traced scalar: its range is the caller's (SADState's) business.
  if not (value > 0 and math.isfinite(value)):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_static(name: str, value, fn: str, lo: float, hi: float, *,
                  lo_open: bool = False, hi_open: bool = False, hint: str = "") -> float:
  if isinstance(value, (bool, jax.Array)) or not isinstance(value, numbers.Real):
    raise TypeError(f"{fn}: {name} must be a Python number, got {value!r}")
  value = float(value)
  lo_ok = value > lo if lo_open else value >= lo
  hi_ok = value < hi if hi_open else value <= hi
  if not (lo_ok and hi_ok and math.isfinite(value)):
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{fn}: {name} must lie in {interval}, got {value!r}{hint}")
  return value


def _check_float(name: str, x) -> jax.Array:
  """``x`` as an array, checked to be floating point with a vocabulary axis."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
  if x.ndim < 1:
    raise ValueError(f"{name} must have a vocabulary axis (rank >= 1), got shape {x.shape}")
  return x


def _compute_dtype(*xs) -> jnp.dtype:
  """float32, or float64 when an input is float64 (under ``jax_enable_x64``)."""
  return jnp.result_type(*(x.dtype for x in xs), jnp.float32)


class _Rows(NamedTuple):
  """What :func:`_finish` applies to a per-token value: the mask and the finite check."""
  where: jax.Array | None  # [...] bool, the trained tokens (None: all)
  ok: jax.Array  # [...] bool, False where an input row holds a NaN or +inf


def _row_ok(x: jax.Array) -> jax.Array:
  """``[...]`` bool: the row ``x [..., V]`` holds no NaN and no ``+inf``.

  One maximum per row: it is NaN when any entry is (XLA's max propagates NaN) and
  ``+inf`` when any entry is; ``-inf`` entries (impossible tokens) pass.
  """
  return jnp.max(x, axis=-1) < jnp.inf


def _log_softmax_ok(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(log_softmax(x) [..., V], ok [...])`` with one maximum serving both."""
  m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  shifted = x - m
  log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
  return shifted - log_z, m[..., 0] < jnp.inf


def _prepare(student_logits, teacher_logits, temperature, where, *, fn: str):
  """Validates inputs; returns float32 (log-)probabilities and the token rows.

  Masked tokens have their logits replaced by zeros *before* any arithmetic, so
  NaN or all ``-inf`` rows there cannot poison values or gradients. A
  :class:`~sad_jax.losses._sparse.SparseTeacher` is reduced by its tail policy to aligned
  log-distributions on a small support (only for ``SPARSE_DIVERGENCES``).
  """
  if isinstance(teacher_logits, sparse_lib.SparseTeacher):
    return _prepare_sparse(student_logits, teacher_logits, temperature, where, fn)
  s, t, where = _check_dense(student_logits, teacher_logits, temperature, where)
  dtype = _compute_dtype(s, t)
  rows_mask = None if where is None else where[..., None]
  s, t = _zero_masked(s, rows_mask, dtype), _zero_masked(t, rows_mask, dtype)
  log_q, ok_s = _log_softmax_ok(s / temperature)
  log_p, ok_t = _log_softmax_ok(t / temperature)
  return log_q, log_p, _Rows(where, ok_s & ok_t)


def _prepare_sparse(student_logits, teacher, temperature, where, fn: str):
  if fn not in SPARSE_DIVERGENCES:
    raise ValueError(
        f"{fn} does not accept a SparseTeacher: it is not an f-divergence, so the "
        "teacher's missing tail cannot be represented exactly; pass dense teacher "
        f"logits, or use one of {', '.join(SPARSE_DIVERGENCES)}")
  s = _check_float("student_logits", student_logits)
  _check_temperature(temperature)
  where = _check_where(where, s.shape)
  s = _zero_masked(s, None if where is None else where[..., None], _compute_dtype(s))
  log_q, log_p = sparse_lib.reduce_to_support(s, teacher, temperature, where)
  # NaN or +inf log-probabilities are not a distribution; -inf ones are impossible tokens.
  ok = _row_ok(s) & _row_ok(jnp.asarray(teacher.logprobs))
  return log_q, log_p, _Rows(where, ok)


def _check_where(where, shape):
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.shape != shape[:-1]:
    raise ValueError(
        f"where must have the token shape {shape[:-1]} (logits without the vocab "
        f"axis), got {where.shape}")
  return where.astype(bool)


def _check_dense(student_logits, teacher_logits, temperature, where):
  """Validates dense inputs; returns the logits (dtypes unchanged) and the mask."""
  s = _check_float("student_logits", student_logits)
  t = _check_float("teacher_logits", teacher_logits)
  if s.shape[-1] != t.shape[-1]:
    raise ValueError(
        f"student vocab size {s.shape[-1]} != teacher vocab size {t.shape[-1]}; "
        "pad the smaller one with sad_jax.losses._divergences.pad_vocab")
  if s.shape != t.shape:
    raise ValueError(
        f"student_logits shape {s.shape} and teacher_logits shape {t.shape} differ")
  _check_temperature(temperature)
  return s, t, _check_where(where, s.shape)


def _zero_masked(x: jax.Array, where, dtype) -> jax.Array:
  """``x [..., V]`` in ``dtype`` with the rows outside ``where [..., 1]`` set to 0."""
  x = x.astype(dtype)
  return x if where is None else jnp.where(where, x, 0.0)


def _finish(value: jax.Array, rows: _Rows) -> jax.Array:
  """NaN where an input row is not finite, then exactly 0 outside ``where``."""
  value = value.astype(jnp.promote_types(value.dtype, jnp.float32))
  value = jnp.where(rows.ok, value, jnp.nan)
  return value if rows.where is None else jnp.where(rows.where, value, 0.0)


def kl_terms(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
  r"""Per-entry :math:`a_i (\log a_i - \log b_i)` with :math:`0 \log 0 = 0`, ``[..., V]``.

  Only entries with :math:`a_i = 0` are set to 0: a NaN :math:`a_i` gives NaN.
  Not reduced over the vocabulary, so a vocab-sharded caller can sum its shard and
  psum (see :mod:`sad_jax.parallel._sharding`).
  """
  a = jnp.exp(log_a)
  zero = a == 0
  diff = jnp.where(zero, 0.0, log_a - log_b)
  return jnp.where(zero, 0.0, a * diff)


def kl_to_mixture_terms(log_a: jax.Array, log_b: jax.Array, w: float) -> jax.Array:
  r"""Per-entry terms of :math:`KL(a \| w a + (1 - w) b)`, for a static ``w`` in [0, 1]."""
  log_w = math.log(w) if w > 0 else -jnp.inf
  log_1mw = math.log1p(-w) if w < 1 else -jnp.inf
  # Where both are impossible, logaddexp(-inf, -inf) has a NaN gradient; such
  # entries carry no mass (a = 0), so any finite stand-in is exact.
  dead = (log_a == -jnp.inf) & (log_b == -jnp.inf)
  log_m = jnp.logaddexp(log_w + jnp.where(dead, 0.0, log_a),
                        log_1mw + jnp.where(dead, 0.0, log_b))
  return kl_terms(log_a, log_m)


def _kl(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
  r""":math:`\sum_i a_i (\log a_i - \log b_i)` over the last axis."""
  return jnp.sum(kl_terms(log_a, log_b), axis=-1)


def _kl_to_mixture(log_a: jax.Array, log_b: jax.Array, w: float) -> jax.Array:
  r""":math:`KL(a \| w a + (1 - w) b)` over the last axis."""
  return jnp.sum(kl_to_mixture_terms(log_a, log_b, w), axis=-1)


# ---------------------------------------------------------------------------
# Fused custom-VJP kernels for dense teachers.
#
# A kernel takes the logits ``s, t [a, m, V]`` in their input dtype, the token mask
# ``where [a, m, 1]`` (or None) and the temperature, and returns the per-token value
# ``[a, m]`` (NaN on rows with a NaN or +inf logit, 0 outside ``where``). The rows
# are processed in blocks ``[a, rb, V]`` taken along axis 1 (:func:`_map_row_blocks`),
# so a batch sharded along ``a`` is blocked inside each shard. Every operation is
# row-local, so the mask is a per-row select of the outputs (values, gradients):
# masked rows may hold NaN, their math is discarded, and no pass over ``[..., V]``
# selects the inputs. The dtype cast is fused into each block's reductions. The
# forward pass saves per-token statistics only (log normalizers, value, partial
# sums), and the backward pass recomputes the probabilities and writes the needed
# gradients (and the temperature's per-row terms) in one elementwise pass.
# ---------------------------------------------------------------------------

BLOCK_ELEMENTS = 1 << 19
"""Work-block size of the fused kernels, in elements per row group.

The flattened rows are laid out as ``[a, m]`` groups (:func:`_row_groups`) and
processed in blocks of ``[a, rb, V]`` with ``rb * V`` about this many elements
(2 MiB of float32 per group and array, held in cache between a block's passes).
``benchmarks/divergence_speed.py --block-elements`` times other sizes."""


def _row_groups(shape: tuple[int, ...]) -> int:
  r"""The outer factor ``a`` of the row layout ``[a, m]`` of logits of ``shape [..., V]``.

  :math:`a = \gcd(\text{shape}[0], \text{device count})`. A leading axis sharded over
  ``k`` devices (``k`` divides both) is split into ``k`` contiguous chunks, each a
  whole number of the ``a`` groups, so blocks taken along ``m`` never cross a shard
  and the blocked loop runs locally on every device. With one device ``a = 1``.
  """
  lead = shape[0] if len(shape) > 1 else 1
  return max(1, math.gcd(lead, jax.device_count()))


def _row_block(rows: int, vocab: int, elements: int | None = None) -> int:
  """Rows per block along ``m``: ``rb * vocab <= elements`` (default
  ``BLOCK_ELEMENTS``), blocks balanced.

  ``ceil(rows / rb)`` blocks of equal size; the last block is shifted back to end
  at ``rows`` (:func:`_map_row_blocks`), so any row count works (no divisor needed).
  """
  elements = BLOCK_ELEMENTS if elements is None else elements
  target = max(1, elements // max(vocab, 1))
  if rows <= target:
    return rows
  count = -(-rows // target)
  return -(-rows // count)


def _map_row_blocks(fn, args, shrink: int = 1):
  """Applies the row-wise ``fn`` to blocks of ``args`` along axis 1, re-joined.

  Args:
    fn: maps a pytree of ``[a, rb, ...]`` arrays to a pytree of ``[a, rb, ...]``
      arrays, each row independently of the others.
    args: pytree of ``[a, m, ...]`` arrays (``None`` leaves allowed); the first
      leaf is the ``[a, m, V]`` logits that set the block size (:func:`_row_block`).
    shrink: blocks of ``BLOCK_ELEMENTS // shrink`` elements, for an ``fn`` that holds
      that many times more block-sized intermediates (the statistics).

  Returns:
    The pytree of ``[a, m, ...]`` outputs. Block ``i`` starts at
    ``min(i * rb, m - rb)``: the last block overlaps its predecessor, and its rows
    there are recomputed identically and written again.
  """
  first = jax.tree.leaves(args)[0]
  rows = first.shape[1]
  block = _row_block(rows, first.shape[-1], BLOCK_ELEMENTS // shrink)
  if block >= rows:
    return fn(*args)
  count = -(-rows // block)

  def take(start):
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, block, axis=1),
                        args)

  out = jax.eval_shape(lambda: fn(*take(0)))
  init = jax.tree.map(lambda o: jnp.zeros(o.shape[:1] + (rows,) + o.shape[2:], o.dtype), out)

  def body(acc, i):
    start = jnp.minimum(i * block, rows - block)
    return jax.tree.map(lambda a, y: jax.lax.dynamic_update_slice_in_dim(a, y, start, axis=1),
                        acc, fn(*take(start))), None

  return jax.lax.scan(body, init, jnp.arange(count))[0]


class _Parts(NamedTuple):
  """The softmax of one ``[a, rb, V]`` block at ``1 / T = inv_t`` (see :func:`_softmax_parts`)."""
  shifted: jax.Array  # x / T - max, [a, rb, V]
  e: jax.Array  # exp(shifted), [a, rb, V]
  z: jax.Array  # sum(e), [a, rb, 1]
  m: jax.Array  # max(x) / T, [a, rb, 1]

  @property
  def norm(self) -> tuple[jax.Array, jax.Array]:
    """``(max, log z)``, what the backward pass recomputes the log-softmax from."""
    return self.m, jnp.log(self.z)


def _softmax_parts(x: jax.Array, inv_t) -> _Parts:
  r"""The softmax parts of ``x / T`` for a block ``x [a, rb, V]``.

  The maximum is taken on the raw logits (``max(x) * c == max(x * c)`` exactly for
  ``c = 1 / T > 0``: rounding is monotone), so no scaled copy of a block is needed
  for it; the backward recomputes ``x * (1 / T)`` the same way. The log-softmax is
  ``(x / T - max) - log z``: the maximum and :math:`\log z` are kept apart, since
  ``max + log z`` rounds at large logits (an ulp of 1e4 is 1e-3).
  """
  m = jnp.max(x, axis=-1, keepdims=True) * inv_t
  shifted = x * inv_t - m
  e = jnp.exp(shifted)
  return _Parts(shifted, e, jnp.sum(e, axis=-1, keepdims=True), m)


def _log_softmax(x, inv_t, norm):
  """Recomputes the log-softmax of ``x / T`` from saved ``(max, log_z)``."""
  m, log_z = norm
  return (x * inv_t - m) - log_z


def _cross(w: _Parts, o: _Parts) -> jax.Array:
  r""":math:`KL(w \| o)` per row from the parts of both sides, ``0 log 0 = 0``.

  ``sum(e_w (x_w - x_o)) / z_w - log z_w + log z_o``: the exponentials of the
  normalizers serve the cross term (no second ``exp``).
  """
  cross = jnp.sum(jnp.where(w.e > 0, w.e * (w.shifted - o.shifted), 0.0), axis=-1,
                  keepdims=True)
  return cross / w.z - jnp.log(w.z) + jnp.log(o.z)


def _entropy_rows(x: _Parts) -> jax.Array:
  r""":math:`-\sum_i p_i \log p_i = \log z - \sum_i e_i\, x_i / z` per row, ``0 log 0 = 0``."""
  return jnp.log(x.z) - jnp.sum(jnp.where(x.e > 0, x.e * x.shifted, 0.0), axis=-1,
                                keepdims=True) / x.z


def _tv_rows(a: _Parts, b: _Parts) -> jax.Array:
  r""":math:`\tfrac12 \sum_i |q_i - p_i|` per row."""
  return 0.5 * jnp.sum(jnp.abs(a.e * (1.0 / a.z) - b.e * (1.0 / b.z)), axis=-1,
                       keepdims=True)


STATISTICS_SHRINK = 16
"""Blocks computing the statistics hold about this many times more block-sized
intermediates, so they take ``BLOCK_ELEMENTS // STATISTICS_SHRINK`` elements (kept in
cache; ``benchmarks/divergence_speed.py --sad-loss`` times the effect)."""

STATISTICS = ("teacher_entropy", "student_entropy", "kl_t1", "agreement", "total_variation")
"""The per-token teacher / student statistics at :math:`T = 1` (see :func:`statistics`)."""


def _first_max_agreement(s: jax.Array, t: jax.Array) -> jax.Array:
  """``[a, rb, 1]``: ``argmax(s) == argmax(t)`` (first indices of the row maxima), as 0 / 1.

  One min-reduction, of arithmetic only (XLA vectorizes it; its variadic argmax
  reduction and compare-selects are many times slower on CPU). With
  ``o_i = min((max - x_i) * 2^126, 1)``, 0 exactly at the row's maxima (a difference of
  normal floats, at least ``2^-126``, times ``2^126`` is at least 1; logits closer than
  ``1.2e-38`` tie), the minimum over ``i`` of
  ``i + V o^s_i o^t_i + (o^s_i + o^t_i) / 4`` sits at the first index ``k`` that is a
  maximum of either row; the two argmaxes agree exactly when ``k`` is a maximum of
  both, i.e. when the minimum is the integer ``k`` (exact in floating point below
  ``2^21`` entries). 0 on a row with a NaN or ``+inf`` logit, or with only ``-inf``.
  """
  def off(x):
    return jnp.minimum((jnp.max(x, axis=-1, keepdims=True) - x) * 2.0 ** 126, 1.0)
  o_s, o_t = off(s), off(t)
  index = jax.lax.broadcasted_iota(s.dtype, s.shape, s.ndim - 1)
  first = jnp.min(index + s.shape[-1] * o_s * o_t + 0.25 * (o_s + o_t), axis=-1,
                  keepdims=True)
  return (first == jnp.floor(first)).astype(s.dtype)


def _agreement(s: jax.Array, t: jax.Array, where: jax.Array) -> jax.Array:
  """:func:`_first_max_agreement` of the rows of ``s, t [a, rb, V]``, 0 outside ``where``.

  One sum first: with the indicators ``a_i = [s_i = max s]``, ``b_i = [t_i = max t]``,
  ``S = sum(a + b + ab / 2) = n_s + n_t + c / 2`` (``n`` the number of maxima, ``c``
  the number of common ones; exact below ``2^21`` entries). On a row whose maxima are
  finite, ``n_s, n_t >= 1`` and ``c <= min(n_s, n_t)``, so ``S`` is 2.5 exactly when both
  maxima are unique and at the same index, and 2 exactly when they are unique at
  different indices. Only a block with a trained row outside these cases (a tie) runs
  the first-index reduction of :func:`_first_max_agreement`; a row with a NaN, an
  ``inf`` or only ``-inf`` gives 0, as there.
  """
  m_s, m_t = jnp.max(s, axis=-1, keepdims=True), jnp.max(t, axis=-1, keepdims=True)
  a, b = (s == m_s).astype(s.dtype), (t == m_t).astype(s.dtype)
  total = jnp.sum(a * (1.0 + 0.5 * b) + b, axis=-1, keepdims=True)
  finite = (jnp.abs(m_s) < jnp.inf) & (jnp.abs(m_t) < jnp.inf)
  unique = (total == 2.0) | (total == 2.5)
  fast = jnp.where(finite & unique, (total == 2.5).astype(s.dtype), 0.0)
  tied = where & finite & ~unique
  return jax.lax.cond(jnp.any(tied),
                      lambda: jnp.where(tied, _first_max_agreement(s, t), fast),
                      lambda: fast)


_STATISTIC_ROWS = {
    "teacher_entropy": lambda s, t, qs, pt, where: _entropy_rows(pt),
    "student_entropy": lambda s, t, qs, pt, where: _entropy_rows(qs),
    "kl_t1": lambda s, t, qs, pt, where: _cross(pt, qs),
    "agreement": lambda s, t, qs, pt, where: _agreement(s, t, where),
    "total_variation": lambda s, t, qs, pt, where: _tv_rows(qs, pt),
}
"""Row math of each of the :data:`STATISTICS` from the blocks ``s, t [a, rb, V]``, their
softmax parts at T = 1 and the trained rows ``where [a, rb, 1]``."""


def statistic_names(names) -> tuple[str, ...]:
  """``names`` (an iterable of :data:`STATISTICS` entries, a comma-separated string of
  them, or ``"all"``) checked and put in the order of :data:`STATISTICS`."""
  if isinstance(names, str):
    names = STATISTICS if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
  unknown = [n for n in names if n not in STATISTICS]
  if unknown:
    raise ValueError(f"unknown statistics {unknown}; allowed: {', '.join(STATISTICS)} "
                     "or 'all'")
  return tuple(n for n in STATISTICS if n in names)


def _statistics_shrink(names, known=()) -> int:
  """The block-size divisor of a pass computing ``names`` when ``known`` are given:
  :data:`STATISTICS_SHRINK` when any must be formed from the blocks, else 1."""
  return STATISTICS_SHRINK if set(names) - set(known) else 1


def _rows_finite(s: jax.Array, t: jax.Array) -> jax.Array:
  """``[a, rb, 1]`` bool: both rows hold no NaN and no ``+inf`` (``-inf`` passes).

  One maximum per row: NaN when any entry is (XLA's max propagates NaN), ``+inf`` when
  any entry is; the same reductions as :func:`_softmax_parts` (merged by XLA).
  """
  return ((jnp.max(s, axis=-1, keepdims=True) < jnp.inf)
          & (jnp.max(t, axis=-1, keepdims=True) < jnp.inf))


def _block_statistics(s, t, where, names, parts=None, known=None):
  """The statistics ``names`` of a block (0 outside ``where [a, rb, 1]``), at T = 1.

  ``parts``: the blocks' softmax parts at T = 1 when the caller has them (a kernel at
  ``T = 1``); otherwise they are formed here from the same blocks when a requested
  statistic needs them. ``known``: statistics the caller already has (a kernel's value
  at ``T = 1``), used as they are.
  """
  known = {k: v for k, v in (known or {}).items() if k in names}
  rest = [n for n in names if n not in known]
  if parts is None and set(rest) - {"agreement"}:
    parts = _softmax_parts(s, 1.0), _softmax_parts(t, 1.0)
  parts = parts or (None, None)
  stats = dict(known, **{n: _STATISTIC_ROWS[n](s, t, *parts, where) for n in rest})
  return {n: jnp.where(where, stats[n], 0.0) for n in names}


def _temperature_cotangent(ct, temperature):
  """Under shard_map the logits vary over mesh axes while a replicated temperature
  does not: its cotangent ``ct`` is then the sum over those axes."""
  extra = (jax.typeof(ct).manual_axis_type.varying
           - jax.typeof(temperature).manual_axis_type.varying)
  return jax.lax.psum(ct, tuple(sorted(extra))) if extra else ct


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Perturbed:
  """Which of the teacher logits and the temperature need a gradient (static residual)."""
  teacher: bool
  temperature: bool


def _fused_kernel(rows_fwd, rows_bwd, statistic: str | None = None):
  r"""Builds the blocked custom-VJP kernel of one divergence from its row math.

  Args:
    rows_fwd: ``(parts_s, parts_t) -> (value, extra)``: from the :class:`_Parts` of
      the ``[a, rb, V]`` compute-dtype blocks of ``s / T`` and ``t / T``, the per-row
      value and the per-row statistics ``extra`` the backward needs, all ``[a, rb, 1]``.
    rows_bwd: ``(s, t, norm_a, norm_b, extra, g, inv_t) -> (gs, gt)``, the gradients
      of ``g * value`` for the per-row cotangent ``g [a, rb, 1]`` (``1 / T`` already
      applied to it), with ``norm_a``, ``norm_b`` the saved ``(max, log z)`` of each side.
    statistic: the name in :data:`STATISTICS` that the value is at ``T = 1``, if any
      (``kl_t1`` for the forward KL): the kernel's value serves it there.

  Returns:
    ``build(names)``, cached: for a tuple of :data:`STATISTICS` names, the
    ``kernel(s, t, where, temperature, stats_where) -> (value [a, m], aux)`` with the
    gradients of ``s``, ``t`` (input dtypes) and of the temperature
    :math:`\partial L / \partial T = -\frac{1}{T} \sum (g_s s + g_t t)`. ``aux`` (no
    gradient) holds ``finite`` (``[a, m]`` bool, :func:`_rows_finite`) and, when
    ``stats_where [a, m, 1]`` is given, the statistics ``names`` at :math:`T = 1`
    (``[a, m]``, 0 outside ``stats_where``) from the same blocked pass: at ``T = 1``
    from the divergence's own softmax parts, otherwise from the T = 1 parts of the same
    blocks (a ``cond`` on the traced temperature picks the branch). Only the
    gradients that are needed are formed (``custom_vjp`` with symbolic zeros): for
    the student's alone (teacher under ``stop_gradient``, fixed temperature) the
    backward pass is one elementwise pass over the logits; otherwise it runs in
    row blocks like the forward pass.
  """

  def block_fwd(s, t, where, stats_where, inv_t, shared, names):
    dtype = inv_t.dtype
    s, t = s.astype(dtype), t.astype(dtype)
    parts = _softmax_parts(s, inv_t), _softmax_parts(t, inv_t)
    value, extra = rows_fwd(*parts)
    known = {statistic: value} if shared and statistic else None
    norm_a, norm_b = parts[0].norm, parts[1].norm
    # The scaled maxima are NaN / +inf exactly when the row holds a NaN / +inf.
    value = jnp.where((norm_a[0] < jnp.inf) & (norm_b[0] < jnp.inf), value, jnp.nan)
    value = value if where is None else jnp.where(where, value, 0.0)
    aux = {"finite": _rows_finite(s, t)}
    if stats_where is not None:
      aux.update(_block_statistics(s, t, stats_where, names, parts if shared else None,
                                   known))
    return value, aux, (norm_a, norm_b, extra)

  def block_bwd(s, t, where, stats, g, inv_t):
    dtypes = s.dtype, t.dtype
    s, t = s.astype(inv_t.dtype), t.astype(inv_t.dtype)
    gs, gt = rows_bwd(s, t, *stats, g * inv_t, inv_t)
    if where is not None:
      gs, gt = jnp.where(where, gs, 0.0), jnp.where(where, gt, 0.0)
    # Zero cotangents meet -inf logits (impossible tokens); those terms are 0.
    ct = jnp.sum(jnp.where(gs == 0, 0.0, gs * s) + jnp.where(gt == 0, 0.0, gt * t),
                 axis=-1, keepdims=True)
    return gs.astype(dtypes[0]), gt.astype(dtypes[1]), ct

  def forward(s, t, where, temperature, stats_where, names):
    inv_t = 1.0 / temperature

    def run(shared):
      known = (statistic,) if shared and statistic else ()
      shrink = 1 if stats_where is None else _statistics_shrink(names, known)

      def go():
        # At T = 1 the scale is the constant 1 (exactly 1 / temperature there), so XLA
        # folds the scaling of the blocks away.
        scale = jnp.ones_like(inv_t) if shared else inv_t
        value, aux, stats = _map_row_blocks(
            lambda *xs: block_fwd(*xs, scale, shared, names), (s, t, where, stats_where),
            shrink)
        return (value[..., 0], {k: v[..., 0] for k, v in aux.items()}), stats
      return go

    if stats_where is None:
      return run(False)()
    return jax.lax.cond(temperature == 1, run(True), run(False))

  @functools.lru_cache(maxsize=None)
  def build(names: tuple[str, ...] = STATISTICS):
    @jax.custom_vjp
    def kernel(s, t, where, temperature, stats_where):
      return forward(s, t, where, temperature, stats_where, names)[0]

    def fwd(s, t, where, temperature, stats_where):
      perturbed = _Perturbed(teacher=t.perturbed, temperature=temperature.perturbed)
      s, t, temperature = s.value, t.value, temperature.value
      where = None if where is None else where.value
      stats_where = None if stats_where is None else stats_where.value
      out, stats = forward(s, t, where, temperature, stats_where, names)
      return out, (s, t, where, temperature, stats, perturbed)

    def bwd(res, cotangents):
      s, t, where, temperature, stats, perturbed = res
      g = cotangents[0]
      if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None
      inv_t = 1.0 / temperature
      args = (s, t, where, stats, g[..., None])
      if not (perturbed.teacher or perturbed.temperature):
        # The student gradient alone is elementwise given the saved statistics: one
        # fused pass over [a, m, V] with no block-sized intermediates to bound.
        return block_bwd(*args, inv_t)[0], None, None, None, None
      gs, gt, ct = _map_row_blocks(lambda *xs: block_bwd(*xs, inv_t), args)
      ct = _temperature_cotangent(-jnp.sum(ct) * inv_t, temperature)
      return (gs, gt if perturbed.teacher else None, None,
              ct if perturbed.temperature else None, None)

    kernel.defvjp(fwd, bwd, symbolic_zeros=True)
    return kernel

  return build


def _kl_rows(reverse: bool):
  """Row math of :math:`KL(p \\| q)` (``reverse=False``) or :math:`KL(q \\| p)`.

  With ``w`` the weighting side and ``o`` the other,
  :math:`\\partial KL / \\partial a_w = w \\odot (\\log w - \\log o - KL)` and
  :math:`\\partial KL / \\partial a_o = o - w`.
  """

  def fwd(qs, pt):
    value = _cross(qs, pt) if reverse else _cross(pt, qs)
    return value, (value,)

  def bwd(s, t, norm_a, norm_b, extra, g, inv_t):
    (value,) = extra
    log_q, log_p = _log_softmax(s, inv_t, norm_a), _log_softmax(t, inv_t, norm_b)
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    if reverse:
      return g * jnp.where(q > 0, q * (log_q - log_p - value), 0.0), g * (p - q)
    return g * (q - p), g * jnp.where(p > 0, p * (log_p - log_q - value), 0.0)

  return fwd, bwd


_forward_kl_kernel = _fused_kernel(*_kl_rows(False), statistic="kl_t1")
_reverse_kl_kernel = _fused_kernel(*_kl_rows(True))


def _mixture_terms(q, log_q, p, log_p, beta):
  r"""Per-entry :math:`\log m` and both KL-to-mixture terms, ``0 log 0 = 0``.

  :math:`m = \beta p + (1 - \beta) q` is positive wherever ``p`` or ``q`` is.
  """
  m = beta * p + (1.0 - beta) * q
  log_m = jnp.log(jnp.where(m > 0, m, 1.0))
  term_p = jnp.where(p > 0, p * (log_p - log_m), 0.0)
  term_q = jnp.where(q > 0, q * (log_q - log_m), 0.0)
  return log_m, term_p, term_q


@functools.lru_cache(maxsize=None)
def _jsd_kernel(beta: float):
  r""":math:`JSD_\beta`; :math:`\partial/\partial a = (1-\beta)\, q \odot (\log q - \log m - KL(q\|m))`
  and symmetrically :math:`\beta\, p \odot (\log p - \log m - KL(p\|m))` for the teacher.
  """

  def fwd(qs, pt):
    # The normalizers' exponentials serve the probabilities too (no second exp).
    log_za, log_zb = jnp.log(qs.z), jnp.log(pt.z)
    _, term_p, term_q = _mixture_terms(qs.e * (1.0 / qs.z), qs.shifted - log_za,
                                       pt.e * (1.0 / pt.z), pt.shifted - log_zb, beta)
    kl_pm = jnp.sum(term_p, axis=-1, keepdims=True)
    kl_qm = jnp.sum(term_q, axis=-1, keepdims=True)
    return beta * kl_pm + (1.0 - beta) * kl_qm, (kl_pm, kl_qm)

  def bwd(s, t, norm_a, norm_b, extra, g, inv_t):
    kl_pm, kl_qm = extra
    log_q, log_p = _log_softmax(s, inv_t, norm_a), _log_softmax(t, inv_t, norm_b)
    q, p = jnp.exp(log_q), jnp.exp(log_p)
    log_m, _, _ = _mixture_terms(q, log_q, p, log_p, beta)
    return (g * (1.0 - beta) * jnp.where(q > 0, q * (log_q - log_m - kl_qm), 0.0),
            g * beta * jnp.where(p > 0, p * (log_p - log_m - kl_pm), 0.0))

  return _fused_kernel(fwd, bwd)


def _tv_fwd_rows(qs, pt):
  r""":math:`TV`; with :math:`u = \tfrac12 \mathrm{sign}(q - p)`,
  :math:`\partial/\partial a = q \odot (u - \sum q u)`, and the mirror for the teacher.
  """
  q, p = qs.e * (1.0 / qs.z), pt.e * (1.0 / pt.z)
  sign = jnp.sign(q - p)
  q_sign = jnp.sum(q * sign, axis=-1, keepdims=True)
  p_sign = jnp.sum(p * sign, axis=-1, keepdims=True)
  return _tv_rows(qs, pt), (q_sign, p_sign)


def _tv_bwd_rows(s, t, norm_a, norm_b, extra, g, inv_t):
  q_sign, p_sign = extra
  g = 0.5 * g
  q = jnp.exp(_log_softmax(s, inv_t, norm_a))
  p = jnp.exp(_log_softmax(t, inv_t, norm_b))
  sign = jnp.sign(q - p)
  return g * q * (sign - q_sign), g * p * (p_sign - sign)


_tv_kernel = _fused_kernel(_tv_fwd_rows, _tv_bwd_rows, statistic="total_variation")


def _layout(x: jax.Array, shape: tuple[int, ...], last: int) -> jax.Array:
  """``x [..., last]`` (token shape ``shape``) in the row layout ``[a, m, last]``."""
  groups = _row_groups(shape + (1,))
  return _reshape_rows(x, (groups, math.prod(shape) // groups, last))


def _fast_dense(build, student_logits, teacher_logits, temperature, where,
                statistics=None, names=STATISTICS):
  """Runs a fused kernel (``build(names)``, see :func:`_fused_kernel`) on validated
  logits ``[..., V]`` laid out as ``[a, m, V]``.

  The reshapes are free (row-major), the dtype casts and the ``where`` selection
  happen per block inside the kernel, so no pass over ``[..., V]`` precedes it.
  Returns ``(value [...], aux)`` with ``aux`` as the kernel's (see :func:`_fused_kernel`).
  """
  s, t, where = _check_dense(student_logits, teacher_logits, temperature, where)
  statistics = _check_where(statistics, s.shape)
  tokens = s.shape[:-1]
  rows = [None if x is None else _layout(x, tokens, n)
          for x, n in ((s, s.shape[-1]), (t, s.shape[-1]), (where, 1), (statistics, 1))]
  temperature = jnp.asarray(temperature, _compute_dtype(s, t))
  value, aux = build(names)(*rows[:3], temperature, rows[3])
  return (_reshape_rows(value, tokens),
          {k: _reshape_rows(v, tokens) for k, v in aux.items()})


def statistics(student_logits: chex.Array, teacher_logits: chex.Array,
               where: chex.Array, names="all") -> tuple[dict[str, jax.Array], jax.Array]:
  r"""The :data:`STATISTICS` ``names`` (default all) of dense logits ``[..., V]`` at
  :math:`T = 1`, one blocked pass that forms only what they need.

  ``teacher_entropy`` :math:`H(p)`, ``student_entropy`` :math:`H(q)`, ``kl_t1``
  :math:`KL(p \| q)`, ``agreement`` :math:`[\arg\max q = \arg\max p]` (first index of
  the maximum logit) and ``total_variation`` :math:`\tfrac12 \lVert p - q \rVert_1`,
  ``float32 [...]`` (float64 under x64 with float64 inputs), 0 outside ``where``; a NaN
  or ``+inf`` logit on a token in ``where`` makes that side's entropy NaN (and the
  agreement 0). Rows are
  processed in blocks as in the fused kernels (inputs read once, cast per block).

  Returns:
    ``(stats, finite)`` with ``finite [...]`` bool: both rows hold no NaN and no
    ``+inf`` (``-inf``, an impossible token, passes).
  """
  s, t, where = _check_dense(student_logits, teacher_logits, 1.0, where)
  if where is None:
    raise ValueError("statistics: where must be a [...] bool mask, got None")
  names = statistic_names(names)
  tokens = s.shape[:-1]
  dtype = _compute_dtype(s, t)

  def block(s, t, where):
    s, t = jax.lax.stop_gradient(s).astype(dtype), jax.lax.stop_gradient(t).astype(dtype)
    return _block_statistics(s, t, where, names), _rows_finite(s, t)

  stats, finite = _map_row_blocks(block, (_layout(s, tokens, s.shape[-1]),
                                          _layout(t, tokens, s.shape[-1]),
                                          _layout(where, tokens, 1)), _statistics_shrink(names))
  return ({k: _reshape_rows(v, tokens) for k, v in stats.items()},
          _reshape_rows(finite, tokens))


def _reshape_rows(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``x.reshape(shape)`` keeping an explicit-axes sharding of the leading axis.

  Under a mesh with ``AxisType.Explicit`` axes a reshape must name its output
  sharding; the row layouts here only split or merge axes behind the leading one, so
  the leading axis keeps its mesh axes and the others are unsharded.
  """
  sharding = jax.typeof(x).sharding
  spec = getattr(sharding, "spec", None)
  if not spec or all(axis is None for axis in spec):
    return x.reshape(shape)
  out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
      spec[0], *([None] * (len(shape) - 1))))
  return jnp.reshape(x, shape, out_sharding=out)


def _is_sparse(teacher) -> bool:
  return isinstance(teacher, sparse_lib.SparseTeacher)

# ---------------------------------------------------------------------------
# Divergences.
# ---------------------------------------------------------------------------


def forward_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
               temperature=1.0, where: chex.Array | None = None) -> jax.Array:
  r"""Forward (mean-seeking) KL divergence, teacher to student.

  .. math::
    KL(p \| q) = \sum_i p_i (\log p_i - \log q_i)

  The classic distillation loss (Hinton et al., 2015, "Distilling the Knowledge in a
  Neural Network"); the SAD objective (Liu et al., 2025) uses it per span type.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature :math:`T > 0` (scalar, may be traced).
    where: optional ``[...]`` bool mask; masked tokens give 0.

  Returns:
    ``[...]`` float32 per-token divergence.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sad_jax import losses
    >>> teacher = jnp.log(jnp.array([[0.75, 0.25], [0.5, 0.5]]))   # [T=2, V=2]
    >>> student = jnp.zeros((2, 2))                                 # uniform
    >>> [f"{v:.4f}" for v in losses.forward_kl(student, teacher).tolist()]
    ['0.1308', '0.0000']
    >>> [f"{v:.4f}" for v in losses.forward_kl(
    ...     student, teacher, where=jnp.array([False, True])).tolist()]
    ['0.0000', '0.0000']
  """
  if not _is_sparse(teacher_logits):
    return _fast_dense(_forward_kl_kernel, student_logits, teacher_logits, temperature,
                       where)[0]
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="forward_kl")
  return _finish(_kl(log_p, log_q), rows)


def reverse_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
               temperature=1.0, where: chex.Array | None = None) -> jax.Array:
  r"""Reverse (mode-seeking) KL divergence, student to teacher.

  .. math::
    KL(q \| p) = \sum_i q_i (\log q_i - \log p_i)

  Used by MiniLLM (Gu et al., 2024, "MiniLLM: Knowledge Distillation of Large
  Language Models") for generative students.

  Args and returns as :func:`forward_kl`.
  """
  if not _is_sparse(teacher_logits):
    return _fast_dense(_reverse_kl_kernel, student_logits, teacher_logits, temperature,
                       where)[0]
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="reverse_kl")
  return _finish(_kl(log_q, log_p), rows)


def generalized_jsd(student_logits: chex.Array, teacher_logits: chex.Array, *,
                    temperature=1.0, where: chex.Array | None = None,
                    beta: float = 0.5) -> jax.Array:
  r"""Generalized Jensen-Shannon divergence (GKD; Agarwal et al., 2024).

  .. math::
    JSD_\beta(p, q) = \beta \, KL(p \| m) + (1 - \beta) \, KL(q \| m),
    \qquad m = \beta p + (1 - \beta) q

  Bounded: :math:`0 \le JSD_\beta \le H_2(\beta) \le \log 2`, symmetric in
  ``(p, q)`` at :math:`\beta = 1/2`. Reference: "On-Policy Distillation of Language
  Models: Learning from Self-Generated Mistakes", ICLR 2024.

  Args:
    beta: mixture weight of the teacher, strictly in (0, 1). The endpoints are
      degenerate (the divergence vanishes); use :func:`forward_kl` or
      :func:`reverse_kl` for the KL limits.
    Other args and returns as :func:`forward_kl`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sad_jax import losses
    >>> teacher = jnp.log(jnp.array([[0.75, 0.25]]))
    >>> student = jnp.zeros((1, 2))
    >>> f"{float(losses.generalized_jsd(student, teacher, beta=0.5)[0]):.4f}"
    '0.0338'

    Near the endpoints it is a scaled KL: beta -> 0 forward, beta -> 1 reverse.

    >>> f"{float(losses.generalized_jsd(student, teacher, beta=1e-3)[0]) / 1e-3:.3f}"
    '0.131'
    >>> f"{float(losses.forward_kl(student, teacher)[0]):.3f}"
    '0.131'
  """
  beta = _jsd_beta(beta)
  if not _is_sparse(teacher_logits):
    return _fast_dense(_jsd_kernel(beta), student_logits, teacher_logits, temperature,
                       where)[0]
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="generalized_jsd")
  value = (beta * _kl_to_mixture(log_p, log_q, beta)
           + (1.0 - beta) * _kl_to_mixture(log_q, log_p, 1.0 - beta))
  return _finish(value, rows)


def _jsd_beta(beta) -> float:
  return _check_static(
      "beta", beta, "generalized_jsd", 0.0, 1.0, lo_open=True, hi_open=True,
      hint=("; beta -> 0 is forward KL(teacher || student): use sad_jax.losses.forward_kl; "
            "beta -> 1 is reverse KL(student || teacher): use sad_jax.losses.reverse_kl"))


def symmetric_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
                 temperature=1.0, where: chex.Array | None = None,
                 ratio: float = 0.5) -> jax.Array:
  r"""Interpolation of forward and reverse KL.

  .. math::
    (1 - r) \, KL(p \| q) + r \, KL(q \| p)

  ``ratio=0`` is :func:`forward_kl`, ``ratio=1`` :func:`reverse_kl`; ``0.5`` is
  (half) Jeffreys' divergence (Jeffreys, 1946).

  Args:
    ratio: weight :math:`r \in [0, 1]` of the reverse KL.
    Other args and returns as :func:`forward_kl`.
  """
  ratio = _check_static("ratio", ratio, "symmetric_kl", 0.0, 1.0)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="symmetric_kl")
  value = (1.0 - ratio) * _kl(log_p, log_q) + ratio * _kl(log_q, log_p)
  return _finish(value, rows)


def skew_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
            temperature=1.0, where: chex.Array | None = None,
            alpha: float = 0.1) -> jax.Array:
  r"""Skew KL divergence (DistiLLM; Ko et al., ICML 2024).

  .. math::
    SKL_\alpha(p, q) = KL(p \| \alpha p + (1 - \alpha) q)

  Bounded by :math:`-\log \alpha`, so it stays finite where the student puts no mass.
  ``alpha=0`` is :func:`forward_kl`. Reference: "DistiLLM: Towards Streamlined
  Distillation for Large Language Models".

  Args:
    alpha: skew :math:`\alpha \in [0, 1]`.
    Other args and returns as :func:`forward_kl`.
  """
  alpha = _check_static("alpha", alpha, "skew_kl", 0.0, 1.0)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="skew_kl")
  return _finish(_kl_to_mixture(log_p, log_q, alpha), rows)


def skew_reverse_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
                    temperature=1.0, where: chex.Array | None = None,
                    alpha: float = 0.1) -> jax.Array:
  r"""Skew reverse KL divergence (DistiLLM; Ko et al., ICML 2024).

  .. math::
    SRKL_\alpha(p, q) = KL(q \| \alpha q + (1 - \alpha) p)

  ``alpha=0`` is :func:`reverse_kl`.

  Args:
    alpha: skew :math:`\alpha \in [0, 1]`.
    Other args and returns as :func:`forward_kl`.
  """
  alpha = _check_static("alpha", alpha, "skew_reverse_kl", 0.0, 1.0)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="skew_reverse_kl")
  return _finish(_kl_to_mixture(log_q, log_p, alpha), rows)


def _expm1_over(x: jax.Array, c: float) -> jax.Array:
  """:math:`(e^{c x} - 1) / c`, exact (no cancellation) for small ``c``."""
  return x if c == 0 else jnp.expm1(c * x) / c


def alpha_divergence(student_logits: chex.Array, teacher_logits: chex.Array, *,
                     temperature=1.0, where: chex.Array | None = None,
                     alpha: float = 1.5) -> jax.Array:
  r"""Amari's :math:`\alpha`-divergence (Amari, 1985; Amari & Nagaoka, 2000).

  .. math::
    D_\alpha(p \| q) = \frac{\sum_i p_i^\alpha q_i^{1-\alpha} - 1}{\alpha(\alpha - 1)},
    \qquad \lim_{\alpha \to 1} D_\alpha = KL(p \| q), \quad
    \lim_{\alpha \to 0} D_\alpha = KL(q \| p).

  Evaluated without cancellation near both limits, as
  :math:`\frac{1}{\alpha}\sum_i p_i \frac{e^{(\alpha-1)(\log p_i - \log q_i)} - 1}{\alpha - 1}`
  (for :math:`\alpha \ge 1/2`) or its mirror in :math:`q` (for :math:`\alpha < 1/2`),
  so values are continuous through :math:`\alpha = 0, 1`, which return the KLs.
  For :math:`\alpha > 1` the divergence can overflow to ``+inf`` by definition when
  :math:`p_i / q_i` is large (it is infinite when :math:`q_i = 0 < p_i`); likewise
  for :math:`\alpha < 0` with :math:`p_i = 0 < q_i`.

  Args:
    alpha: any finite real :math:`\alpha`.
    Other args and returns as :func:`forward_kl`.
  """
  alpha = _check_static("alpha", alpha, "alpha_divergence", -math.inf, math.inf,
                        lo_open=True, hi_open=True)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="alpha_divergence")
  if alpha >= 0.5:  # sum_i p_i^a q_i^(1-a) = sum_i p_i exp((a-1)(log p_i - log q_i))
    log_w, log_other, c, scale = log_p, log_q, alpha - 1.0, alpha
  else:  # = sum_i q_i exp(a (log p_i - log q_i))
    log_w, log_other, c, scale = log_q, log_p, alpha, alpha - 1.0
  w = jnp.exp(log_w)
  support = w > 0
  sign = 1.0 if alpha >= 0.5 else -1.0
  diff = jnp.where(support, sign * (log_w - log_other), 0.0)
  terms = jnp.where(support, w * _expm1_over(diff, c), 0.0)
  value = jnp.sum(terms, axis=-1) / scale
  return _finish(value, rows)


def alpha_beta_divergence(student_logits: chex.Array, teacher_logits: chex.Array, *,
                          temperature=1.0, where: chex.Array | None = None,
                          alpha: float = 0.2, beta: float = 0.7) -> jax.Array:
  r"""The :math:`\alpha\beta`-divergence of ABKD (Wang et al., ICML 2025).

  For :math:`\alpha, \beta, \alpha + \beta \neq 0` (Cichocki, Cruces & Amari, 2011):

  .. math::
    D^{(\alpha,\beta)}_{AB}(p \| q) = -\frac{1}{\alpha\beta} \sum_i \Big(
      p_i^\alpha q_i^\beta - \frac{\alpha}{\alpha+\beta} p_i^{\alpha+\beta}
      - \frac{\beta}{\alpha+\beta} q_i^{\alpha+\beta} \Big)

  with the limit cases returned exactly:

  * :math:`\beta = 0`: :math:`\frac{1}{\alpha^2}\sum_i (p_i^\alpha \log\frac{p_i^\alpha}{q_i^\alpha} - p_i^\alpha + q_i^\alpha)`
    (:math:`(\alpha, \beta) = (1, 0)` is :math:`KL(p\|q)`);
  * :math:`\alpha = 0`: :math:`\frac{1}{\beta^2}\sum_i (q_i^\beta \log\frac{q_i^\beta}{p_i^\beta} - q_i^\beta + p_i^\beta)`
    (:math:`(0, 1)` is :math:`KL(q\|p)`);
  * :math:`\alpha = -\beta`: :math:`\frac{1}{\alpha^2}\sum_i (\log\frac{q_i^\alpha}{p_i^\alpha} + \frac{p_i^\alpha}{q_i^\alpha} - 1)`;
  * :math:`\alpha = \beta = 0`: :math:`\frac{1}{2}\sum_i (\log p_i - \log q_i)^2`.

  Reference: "ABKD: Pursuing a Proper Allocation of the Probability Mass in
  Knowledge Distillation via α-β-Divergence". The general case is evaluated in a
  cancellation-free form, so values are continuous (in float32) as :math:`\alpha`
  or :math:`\beta` approach 0; near :math:`\alpha + \beta = 0` about
  :math:`\epsilon_{32} / |\alpha + \beta|` is lost. Negative exponents can overflow
  where a probability is tiny (``+inf`` by definition at 0).

  Args:
    alpha, beta: finite reals.
    Other args and returns as :func:`forward_kl`.
  """
  alpha = _check_static("alpha", alpha, "alpha_beta_divergence", -math.inf, math.inf,
                        lo_open=True, hi_open=True)
  beta = _check_static("beta", beta, "alpha_beta_divergence", -math.inf, math.inf,
                       lo_open=True, hi_open=True)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="alpha_beta_divergence")
  a, b = alpha, beta
  # Entries where both distributions are zero contribute nothing; elsewhere use
  # log-probabilities with those entries replaced by 0 so no inf - inf appears.
  live = (log_p > -jnp.inf) | (log_q > -jnp.inf)
  lp = jnp.where(live, log_p, 0.0)
  lq = jnp.where(live, log_q, 0.0)
  if a == 0 and b == 0:
    terms = 0.5 * jnp.square(lp - lq)
  elif a + b == 0:
    x = a * (lp - lq)
    terms = (jnp.expm1(x) - x) / (a * a)
  elif b == 0:
    pa = jnp.exp(a * lp)
    d = jnp.where(pa > 0, a * (lp - lq), 0.0)
    terms = (pa * d - pa + jnp.exp(a * lq)) / (a * a)
  elif a == 0:
    qb = jnp.exp(b * lq)
    d = jnp.where(qb > 0, b * (lq - lp), 0.0)
    terms = (qb * d - qb + jnp.exp(b * lp)) / (b * b)
  else:
    s = a + b
    # The equivalent form p^a q^b / (ab) * [a/s f(b d) + b/s f(-a d)], with
    # f(z) = e^z - 1 - z and d = log p - log q, has no cancellation as a or b
    # approach 0; used where both are positive and |a d|, |b d| are moderate (far
    # from that, the direct form's terms differ by orders of magnitude anyway).
    d = lp - lq
    use_stable = ((log_p > -jnp.inf) & (log_q > -jnp.inf)
                  & (jnp.abs(a * d) < 20) & (jnp.abs(b * d) < 20))
    x, y = jnp.where(use_stable, lp, 0.0), jnp.where(use_stable, lq, 0.0)
    stable = jnp.exp(a * x + b * y) / (a * b) * (a / s * _expm1_minus_x(b * (x - y))
                                                 + b / s * _expm1_minus_x(-a * (x - y)))
    direct = -(jnp.exp(a * lp + b * lq) - a / s * jnp.exp(s * lp)
               - b / s * jnp.exp(s * lq)) / (a * b)
    terms = jnp.where(use_stable, stable, direct)
  value = jnp.sum(jnp.where(live, terms, 0.0), axis=-1)
  return _finish(value, rows)


def _expm1_minus_x(z: jax.Array) -> jax.Array:
  """:math:`e^z - 1 - z`, accurate for small ``|z|`` (Taylor series below 0.1)."""
  small = jnp.abs(z) < 0.1
  zs = jnp.where(small, z, 0.0)
  series = 0.5 * zs * zs * (1 + zs / 3 * (1 + zs / 4 * (1 + zs / 5 * (1 + zs / 6))))
  return jnp.where(small, series, jnp.expm1(z) - z)


def total_variation(student_logits: chex.Array, teacher_logits: chex.Array, *,
                    temperature=1.0, where: chex.Array | None = None) -> jax.Array:
  r"""Total variation distance.

  .. math::
    TV(p, q) = \tfrac{1}{2} \sum_i |p_i - q_i| \in [0, 1]

  Used for distillation by Wen et al., 2023 ("f-Divergence Minimization for
  Sequence-Level Knowledge Distillation").

  Args and returns as :func:`forward_kl`.
  """
  if not _is_sparse(teacher_logits):
    return _fast_dense(_tv_kernel, student_logits, teacher_logits, temperature, where)[0]
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="total_variation")
  value = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
  return _finish(value, rows)


def wasserstein(student_logits: chex.Array, teacher_logits: chex.Array, *,
                temperature=1.0, where: chex.Array | None = None,
                top_k: int | None = None) -> jax.Array:
  r"""Universal Logit Distillation (ULD) Wasserstein distance (Boizard et al., 2024).

  .. math::
    W(p, q) = \sum_{i=1}^{k} \big| p_{(i)} - q_{(i)} \big|

  where :math:`p_{(i)}` is the i-th largest teacher probability (likewise for
  :math:`q`): the closed form of the 1-Wasserstein distance under ULD's uniform
  cost, which needs no shared vocabulary. ``O(V log V)`` by sorting (``O(V log k)``
  with ``top_k``); no ``V x V`` cost matrix is ever built. Reference: "Towards
  Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs".

  Args:
    top_k: if given, only the ``top_k`` largest entries of each side are compared.
    Other args and returns as :func:`forward_kl`.
  """
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="wasserstein")
  vocab = log_q.shape[-1]
  if top_k is None:
    p_sorted = -jnp.sort(-jnp.exp(log_p), axis=-1)
    q_sorted = -jnp.sort(-jnp.exp(log_q), axis=-1)
  else:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab:
      raise ValueError(f"wasserstein: top_k must be an int in [1, {vocab}], got {top_k!r}")
    p_sorted = jax.lax.top_k(jnp.exp(log_p), top_k)[0]
    q_sorted = jax.lax.top_k(jnp.exp(log_q), top_k)[0]
  return _finish(jnp.sum(jnp.abs(p_sorted - q_sorted), axis=-1), rows)


def adaptive_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
                temperature=1.0, where: chex.Array | None = None,
                mu: float = 0.5) -> jax.Array:
  r"""Adaptive KL (AKL; Wu et al., 2024).

  Sort :math:`p` ascending; the *tail* is the entries whose cumulative teacher mass
  is below :math:`\mu`, the *head* the rest. With the gaps (no gradient)

  .. math::
    g_{head} = \sum_{i \in head} |p_i - q_i|, \qquad
    g_{tail} = \sum_{i \in tail} |p_i - q_i|,

  .. math::
    AKL(p, q) = \frac{g_{head}}{g_{head} + g_{tail}} KL(p \| q)
              + \frac{g_{tail}}{g_{head} + g_{tail}} KL(q \| p).

  When both gaps are 0 (p = q) the weights are ½ each (both KLs are 0 then).
  Reference: "Rethinking Kullback-Leibler Divergence in Knowledge Distillation for
  Large Language Models".

  Args:
    mu: tail mass threshold :math:`\mu \in [0, 1]`.
    Other args and returns as :func:`forward_kl`.
  """
  mu = _check_static("mu", mu, "adaptive_kl", 0.0, 1.0)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="adaptive_kl")
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  order = jnp.argsort(p, axis=-1)
  gap_sorted = jnp.take_along_axis(jnp.abs(p - q), order, axis=-1)
  in_tail = jnp.cumsum(jnp.take_along_axis(p, order, axis=-1), axis=-1) < mu
  g_tail = jax.lax.stop_gradient(jnp.sum(jnp.where(in_tail, gap_sorted, 0.0), axis=-1))
  g_head = jax.lax.stop_gradient(jnp.sum(jnp.where(in_tail, 0.0, gap_sorted), axis=-1))
  total = g_head + g_tail
  safe_total = jnp.where(total > 0, total, 1.0)
  w_head = jnp.where(total > 0, g_head / safe_total, 0.5)
  w_tail = jnp.where(total > 0, g_tail / safe_total, 0.5)
  value = w_head * _kl(log_p, log_q) + w_tail * _kl(log_q, log_p)
  return _finish(value, rows)


def focal_kl(student_logits: chex.Array, teacher_logits: chex.Array, *,
             temperature=1.0, where: chex.Array | None = None,
             gamma: float = 2.0) -> jax.Array:
  r"""Forward KL scaled by a focal factor (focal loss, Lin et al., 2017).

  .. math::
    FKL_\gamma(p, q) = \big(1 - q_{\arg\max_i p_i}\big)^\gamma \, KL(p \| q)

  The factor is computed under ``stop_gradient``: it re-weights tokens the student
  already gets right (high :math:`q` on the teacher's top token) down, without
  adding a gradient of its own.

  Args:
    gamma: focusing exponent :math:`\gamma \ge 0`.
    Other args and returns as :func:`forward_kl`.
  """
  gamma = _check_static("gamma", gamma, "focal_kl", 0.0, math.inf, hi_open=True)
  log_q, log_p, rows = _prepare(student_logits, teacher_logits, temperature, where,
                                 fn="focal_kl")
  top = jnp.argmax(log_p, axis=-1)[..., None]
  q_top = jnp.exp(jnp.take_along_axis(log_q, top, axis=-1)[..., 0])
  factor = jax.lax.stop_gradient(jnp.power(1.0 - q_top, gamma))
  return _finish(factor * _kl(log_p, log_q), rows)


# ---------------------------------------------------------------------------
# Registry and helpers.
# ---------------------------------------------------------------------------

DIVERGENCES: dict[str, Divergence] = {
    fn.__name__: fn for fn in (
        forward_kl, reverse_kl, generalized_jsd, symmetric_kl, skew_kl,
        skew_reverse_kl, alpha_divergence, alpha_beta_divergence,
        total_variation, wasserstein, adaptive_kl, focal_kl)
}


_KERNELS = {
    "forward_kl": lambda: _forward_kl_kernel,
    "reverse_kl": lambda: _reverse_kl_kernel,
    "generalized_jsd": lambda beta=inspect.signature(generalized_jsd).parameters[
        "beta"].default: _jsd_kernel(_jsd_beta(beta)),
    "total_variation": lambda: _tv_kernel,
}

FUSED_DIVERGENCES: tuple[str, ...] = tuple(_KERNELS)
"""The divergences with a fused kernel for dense teachers (:func:`with_statistics`)."""


def with_statistics(name: str, student_logits: chex.Array, teacher_logits: chex.Array, *,
                    temperature=1.0, where: chex.Array | None = None,
                    statistics: chex.Array | None = None, names="all",
                    **params) -> tuple[jax.Array, dict[str, jax.Array]]:
  """A fused divergence on dense logits with per-token auxiliary outputs, in one pass.

  Args:
    name: one of :data:`FUSED_DIVERGENCES`.
    student_logits, teacher_logits, temperature, where, params: as the divergence.
    statistics: optional ``[...]`` bool mask: also return the :data:`STATISTICS` at
      :math:`T = 1` (as :func:`statistics`, 0 outside this mask), computed in the
      divergence's blocked pass (the divergence's softmax when the temperature is 1).
    names: which of them (``"all"`` or names); only those are formed.

  Returns:
    ``(value, aux)``: the divergence ``[...]`` (as ``DIVERGENCES[name]``) and, without
    gradient, ``aux["finite"]`` (``[...]`` bool, as in :func:`statistics`) plus the
    statistics when requested.
  """
  if name not in _KERNELS:
    raise ValueError(f"with_statistics: {name!r} has no fused kernel; one of "
                     f"{', '.join(FUSED_DIVERGENCES)}")
  value, aux = _fast_dense(_KERNELS[name](**params), student_logits, teacher_logits,
                           temperature, where, statistics, statistic_names(names))
  return value, jax.lax.stop_gradient(aux)


SPARSE_DIVERGENCES: tuple[str, ...] = (
    "forward_kl", "reverse_kl", "generalized_jsd", "symmetric_kl", "skew_kl",
    "skew_reverse_kl", "alpha_divergence", "total_variation")
"""The divergences that accept a :class:`~sad_jax.losses._sparse.SparseTeacher` (f-divergences)."""


def get_divergence(name: str) -> Divergence:
  """Returns the divergence registered under ``name`` (see ``DIVERGENCES``)."""
  try:
    return DIVERGENCES[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"unknown divergence {name!r}; known: {', '.join(sorted(DIVERGENCES))}") from None


def pad_vocab(logits: chex.Array, size: int) -> jax.Array:
  """Pads the vocabulary (last) axis of ``logits`` to ``size`` with ``-inf``.

  Use it when teacher and student vocabularies differ only by padding (e.g. a
  vocabulary rounded up to a multiple of 128): the padded entries are impossible
  tokens and contribute nothing to any divergence.

  Args:
    logits: ``[..., V]`` float array.
    size: target vocabulary size, ``>= V``.

  Returns:
    ``[..., size]`` array of the same dtype.
  """
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
  if logits.ndim < 1:
    raise ValueError(f"logits must have a vocabulary axis, got shape {logits.shape}")
  vocab = logits.shape[-1]
  if isinstance(size, bool) or not isinstance(size, int) or size < vocab:
    raise ValueError(f"size must be an int >= the vocab size {vocab}, got {size!r}")
  pad = [(0, 0)] * (logits.ndim - 1) + [(0, size - vocab)]
  return jnp.pad(logits, pad, constant_values=-jnp.inf)
