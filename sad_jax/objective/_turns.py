r"""Turn-aware weighting for on-policy distillation of multi-turn agents (pure, jittable).

In an on-policy episode the student acts turn after turn; once it makes a mistake
the following turns happen in states the teacher never visited, and the teacher's
supervision there is the least reliable (compounding errors, "trajectory-level KL
instability"). The step- and turn-aware on-policy distillation papers of 2026
answer this by weighting turns by their position or by how far the student has
drifted; this module implements their rules as functions of the per-token turn
ids (``turn_ids [B, T]``: 0 on the prompt, ``k`` on turn ``k``, one episode per
row, as :func:`sad_jax.data.episodes.batch_episodes` makes them), a trained-token
mask and per-token signals:

* :func:`turn_depth` / :func:`limit_turns` -- the temporal curriculum of TCOD
  (Wang et al., 2026): only the first :math:`k(n)` turns are trained, with
  :math:`k(n) = \min(k_0 + \lfloor n / \eta \rfloor, k_{max})`.
* :func:`turn_position_factors` -- a turn's weight by its position,
  :math:`\gamma^{k - 1}`: :math:`\gamma < 1` front-loads supervision where it is
  reliable (the position bias of IW-OPD, Xie et al., 2026; the per-turn KL growth
  of TCOD), :math:`\gamma > 1` is the increasing position weight of PW-OPSD
  (Liu et al., 2026).
* :func:`turn_balanced_factors` -- TurnOPD's turn-normalized loss budget (Zhou et
  al., 2026): mix token-level and turn-balanced weighting, so long shallow turns
  stop dominating the loss.
* :func:`departure_turn` / :func:`departure_factors` -- where the student first
  departs from the teacher: the first turn whose mean discrepancy exceeds a
  threshold; that turn can be boosted and the turns after it decay.
* :func:`accumulated_discrepancy_factors` -- IW-OPD's principle at turn
  granularity: a turn's weight decreases with the discrepancy accumulated over
  the turns before it.

**Composition.** Every factor is strictly positive and carries no gradient, so it
multiplies the span weights :math:`w = \lambda_s f_{strategy}` of
:mod:`sad_jax.objective._weighting` without changing the set of trained tokens
(the loss normalizer of gradient accumulation stays exact). Factors of several
rules multiply; :func:`normalize_factors` rescales a row's factors to mean 1 over
its trained tokens (the loss-scale normalization of SAGE-OPD, Zhou et al., 2026).
Excluding turns (TCOD) is done on the span ids instead (:func:`limit_turns` sets
them to ``PAD``), for the same reason.

References:
  * J. Wang, W. Zhang, W. Shi, Y. Li, J. Cheng. *TCOD: Exploring Temporal
    Curriculum in On-Policy Distillation for Multi-turn Autonomous Agents.*
    arXiv:2604.24005, 2026.
  * Y. Xie, S. Zhu, T. Wen, B. Chen, Y. Wang. *On the Position Bias of On-Policy
    Distillation.* arXiv:2606.22600, 2026.
  * X. Liu, X. Wang, Y. Ma, Y. Zhang, C. Xiao. *When Are Teacher Tokens Reliable?
    Position-Weighted On-Policy Self-Distillation for Reasoning.*
    arXiv:2605.21606, 2026.
  * Y. Zhou, K. Zheng, H. Li, D. Peng, C. Xu, J. Chen. *TurnOPD: Making
    On-Policy Distillation Turn-Aware for Efficient Long-Horizon Agent Training.*
    arXiv:2607.05804, 2026.
  * Y. Zhou, L. Zhang, Y. Wu, M. Wang, B. Peng, J. Liu, X. Fan, Z. Zhao.
    *SAGE-OPD: Selective Agent-Guided Intervention for Multi-Turn On-Policy
    Distillation.* arXiv:2606.19659, 2026.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from sad_jax.objective._spans import SpanType


def _check(turn_ids: chex.Array, *others: tuple[str, chex.Array]) -> jax.Array:
  turn_ids = jnp.asarray(turn_ids)
  if turn_ids.ndim != 2:
    raise ValueError(f"turn_ids must be [B, T], got shape {turn_ids.shape}")
  if not jnp.issubdtype(turn_ids.dtype, jnp.integer):
    raise TypeError(f"turn_ids must be integers, got dtype {turn_ids.dtype}")
  for name, x in others:
    if jnp.shape(x) != turn_ids.shape:
      raise ValueError(f"{name} shape {jnp.shape(x)} must equal turn_ids shape {turn_ids.shape}")
  return turn_ids


def _positive(name: str, value) -> None:
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}")


def _turn_groups(turn_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per token: its turn number (``cummax`` of the ids, so trailing padding joins the
  last turn) and a dense group index ``0, 1, ...`` of the turns of its row."""
  key = jax.lax.cummax(turn_ids, axis=1)
  new = jnp.concatenate([jnp.ones_like(key[:, :1], bool), key[:, 1:] != key[:, :-1]], axis=1)
  return key, jnp.cumsum(new, axis=1) - 1


def _group_sums(values: jax.Array, groups: jax.Array) -> jax.Array:
  """``[B, T]``: entry ``[b, g]`` sums ``values`` over group ``g`` of row ``b`` (scatter-add)."""
  t = values.shape[1]
  return jax.vmap(lambda v, g: jax.ops.segment_sum(v, g, num_segments=t))(values, groups)


def _per_turn(values: jax.Array, groups: jax.Array) -> jax.Array:
  """``[B, T]`` sums of ``values`` over each token's turn."""
  return jnp.take_along_axis(_group_sums(values, groups), groups, axis=1)


def _turn_means(turn_ids, signal, where):
  key, groups = _turn_groups(turn_ids)
  where = jnp.asarray(where, bool)
  sig = jnp.where(where, jnp.asarray(signal, jnp.float32), 0.0)
  total = _per_turn(sig, groups)
  count = _per_turn(where.astype(jnp.float32), groups)
  return key, groups, total / jnp.maximum(count, 1.0), count


def turn_depth(step: chex.Array, *, start: int = 1, every: int = 1,
               max_depth: int | None = None) -> jax.Array:
  r"""TCOD's curriculum depth: how many turns are trained at training step ``step``.

  .. math::
    k(n) = \min\big(k_0 + \lfloor n / \eta \rfloor,\ k_{max}\big)

  (Wang et al., 2026, arXiv:2604.24005; the "front-to-back" variant, in which the
  student is trained on the first :math:`k` turns of its own episodes).

  Args:
    step: ``[]`` int, the training (or rollout) step :math:`n`.
    start: :math:`k_0 \ge 1`.
    every: :math:`\eta \ge 1`, steps per extra turn.
    max_depth: :math:`k_{max}` (None: unbounded).

  Returns:
    ``int32 []`` depth :math:`k(n)`.
  """
  if isinstance(start, bool) or not isinstance(start, int) or start < 1:
    raise ValueError(f"start must be an int >= 1, got {start!r}")
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every must be an int >= 1, got {every!r}")
  if max_depth is not None and (not isinstance(max_depth, int) or max_depth < start):
    raise ValueError(f"max_depth must be None or an int >= start = {start}, got {max_depth!r}")
  depth = start + jnp.asarray(step, jnp.int32) // every
  return depth if max_depth is None else jnp.minimum(depth, max_depth)


def limit_turns(span_ids: chex.Array, turn_ids: chex.Array, depth: chex.Array) -> jax.Array:
  """Span ids with every token of a turn beyond ``depth`` set to ``PAD`` (not trained).

  Args:
    span_ids: ``[B, T]`` int span types.
    turn_ids: ``[B, T]`` int turns (0 on the prompt).
    depth: ``[]`` (or ``[B]``) int, the last turn kept (e.g. :func:`turn_depth`).

  Returns:
    ``[B, T]`` span ids of the same dtype.
  """
  turn_ids = _check(turn_ids, ("span_ids", span_ids))
  span_ids = jnp.asarray(span_ids)
  depth = jnp.asarray(depth)
  if depth.ndim == 1:
    depth = depth[:, None]
  key = jax.lax.cummax(turn_ids, axis=1)
  return jnp.where(key <= depth, span_ids, jnp.asarray(SpanType.PAD, span_ids.dtype))


def turn_position_factors(turn_ids: chex.Array, *, decay: float) -> jax.Array:
  r"""Weight by position in the episode: :math:`f = \gamma^{k - 1}` on turn :math:`k \ge 1`.

  :math:`\gamma < 1` puts the supervision on the early turns, where the student
  is still in states the teacher knows (the position bias of on-policy
  distillation, Xie et al., 2026, arXiv:2606.22600; TCOD's per-turn KL growth);
  :math:`\gamma > 1` is an increasing position weight (PW-OPSD, Liu et al., 2026,
  arXiv:2605.21606). The prompt (turn 0) gets 1.

  Args:
    turn_ids: ``[B, T]`` int turns.
    decay: :math:`\gamma > 0`.

  Returns:
    ``float32 [B, T]`` factors under ``stop_gradient``.
  """
  turn_ids = _check(turn_ids)
  _positive("decay", decay)
  key = jax.lax.cummax(turn_ids, axis=1)
  exponent = jnp.maximum(key - 1, 0).astype(jnp.float32)
  return jax.lax.stop_gradient(jnp.power(jnp.float32(decay), exponent))


def turn_balanced_factors(turn_ids: chex.Array, where: chex.Array, *,
                          mix: chex.Array) -> jax.Array:
  r"""TurnOPD's turn-normalized loss budget: from token-level to turn-balanced weights.

  With :math:`N_b` trained tokens in row :math:`b`, :math:`K_b` turns with a
  trained token and :math:`n_k` trained tokens in turn :math:`k`:

  .. math::
    f_{bt} = (1 - \alpha) + \alpha\, \frac{N_b}{K_b\, n_{k(t)}}

  At :math:`\alpha = 0` every token counts the same (long turns dominate); at
  :math:`\alpha = 1` every turn of a row carries the same total weight
  :math:`N_b / K_b`; the row's total weight is :math:`N_b` for every
  :math:`\alpha`. TurnOPD (Zhou et al., 2026, arXiv:2607.05804) raises
  :math:`\alpha` progressively during training (pass a schedule's value).

  Args:
    turn_ids: ``[B, T]`` int turns.
    where: ``[B, T]`` bool, the trained tokens.
    mix: ``[]`` :math:`\alpha \in [0, 1]` (a traced value is fine).

  Returns:
    ``float32 [B, T]`` factors (1 on untrained tokens) under ``stop_gradient``.
  """
  turn_ids = _check(turn_ids, ("where", where))
  if isinstance(mix, (int, float)) and not 0 <= mix <= 1:
    raise ValueError(f"mix must lie in [0, 1], got {mix}")
  where = jnp.asarray(where, bool)
  _, groups = _turn_groups(turn_ids)
  counts = _group_sums(where.astype(jnp.float32), groups)
  n_turn = jnp.take_along_axis(counts, groups, axis=1)
  n_row = jnp.sum(counts, axis=1, keepdims=True)
  k_row = jnp.sum(counts > 0, axis=1, keepdims=True).astype(jnp.float32)
  balanced = n_row / jnp.maximum(k_row * n_turn, 1.0)
  mix = jnp.asarray(mix, jnp.float32)
  f = (1.0 - mix) + mix * balanced
  return jax.lax.stop_gradient(jnp.where(where, f, 1.0))


def departure_turn(turn_ids: chex.Array, discrepancy: chex.Array, where: chex.Array, *,
                   threshold: float) -> jax.Array:
  r"""Per row, the first turn where the student departs from the teacher (0: never).

  .. math::
    k^\star_b = \min\{k \ge 1 : \bar d_{bk} > \tau\}, \qquad
    \bar d_{bk} = \frac{\sum_{t \in k} d_{bt}\, [t \text{ trained}]}{\sum_{t \in k} [t \text{ trained}]}

  Args:
    turn_ids: ``[B, T]`` int turns.
    discrepancy: ``[B, T]`` per-token teacher-student discrepancy :math:`d` (e.g.
      the KL at :math:`T = 1` or the total variation of
      :func:`sad_jax.objective._sad.teacher_statistics`).
    where: ``[B, T]`` bool, the tokens that count (the student's trained tokens).
    threshold: :math:`\tau`.

  Returns:
    ``int32 [B]``: :math:`k^\star_b`, or 0 if no turn of the row exceeds :math:`\tau`.
  """
  turn_ids = _check(turn_ids, ("discrepancy", discrepancy), ("where", where))
  key, _, mean, count = _turn_means(turn_ids, discrepancy, where)
  departed = (count > 0) & (mean > threshold) & (key >= 1)
  big = jnp.iinfo(jnp.int32).max
  first = jnp.min(jnp.where(departed, key, big), axis=1)
  return jax.lax.stop_gradient(jnp.where(first == big, 0, first).astype(jnp.int32))


def departure_factors(turn_ids: chex.Array, discrepancy: chex.Array, where: chex.Array, *,
                      threshold: float, decay: float = 1.0, boost: float = 1.0) -> jax.Array:
  r"""Weight turns by where the student first departs from the teacher.

  With :math:`k^\star` from :func:`departure_turn`:

  .. math::
    f_{bt} = \begin{cases} 1 & k(t) < k^\star_b \text{ or no departure} \\
    \beta & k(t) = k^\star_b \\ \gamma^{\,k(t) - k^\star_b} & k(t) > k^\star_b \end{cases}

  The departure turn is where the teacher's correction matters most (the
  high-disagreement state), and the turns after it are played in states outside
  the teacher's support, where its supervision is least reliable (TCOD,
  arXiv:2604.24005; Xie et al., arXiv:2606.22600): :math:`\beta \ge 1` boosts the
  first, :math:`\gamma < 1` fades the others.

  Args:
    turn_ids: ``[B, T]`` int turns.
    discrepancy: ``[B, T]`` per-token discrepancy (see :func:`departure_turn`).
    where: ``[B, T]`` bool, the tokens that count.
    threshold: :math:`\tau`.
    decay: :math:`\gamma > 0`.
    boost: :math:`\beta > 0`.

  Returns:
    ``float32 [B, T]`` factors under ``stop_gradient``.
  """
  _positive("decay", decay)
  _positive("boost", boost)
  star = departure_turn(turn_ids, discrepancy, where, threshold=threshold)[:, None]
  key = jax.lax.cummax(jnp.asarray(turn_ids), axis=1)
  after = jnp.maximum(key - star, 0).astype(jnp.float32)
  f = jnp.where(key == star, jnp.float32(boost), jnp.power(jnp.float32(decay), after))
  return jax.lax.stop_gradient(jnp.where(star > 0, f, 1.0))


def accumulated_discrepancy_factors(turn_ids: chex.Array, discrepancy: chex.Array,
                                    where: chex.Array, *, scale: float) -> jax.Array:
  r"""A turn's weight decreases with the discrepancy accumulated before it.

  .. math::
    f_{bt} = \exp\Big(-c \sum_{j < k(t)} \bar d_{bj}\Big)

  with :math:`\bar d_{bj}` the mean discrepancy of turn :math:`j` over its counted
  tokens (:func:`departure_turn`). This is the rule of IW-OPD (Xie et al., 2026,
  arXiv:2606.22600) -- the weight of a position depends on the teacher-student
  discrepancy accumulated on the way to it, so the turns played while the student
  is still teacher-compatible weigh most -- applied per turn: the turn is the unit
  an agent's mistakes compound over. The first turn always has factor 1.

  Args:
    turn_ids: ``[B, T]`` int turns.
    discrepancy: ``[B, T]`` non-negative per-token discrepancy.
    where: ``[B, T]`` bool, the tokens that count.
    scale: :math:`c > 0`.

  Returns:
    ``float32 [B, T]`` factors in ``(0, 1]`` under ``stop_gradient``.
  """
  turn_ids = _check(turn_ids, ("discrepancy", discrepancy), ("where", where))
  _positive("scale", scale)
  key, groups, mean, _ = _turn_means(turn_ids, jnp.maximum(jnp.asarray(discrepancy), 0.0), where)
  first = jnp.concatenate([jnp.ones_like(groups[:, :1], bool), groups[:, 1:] != groups[:, :-1]],
                          axis=1)
  # Each turn's mean counted once (at its first token), summed over the turns before.
  acc = jnp.cumsum(jnp.where(first & (key >= 1), mean, 0.0), axis=1) - jnp.where(key >= 1, mean, 0.0)
  return jax.lax.stop_gradient(jnp.exp(-scale * jnp.maximum(acc, 0.0)))


def normalize_factors(factors: chex.Array, where: chex.Array) -> jax.Array:
  """Rescales each row's factors to mean 1 over its trained tokens (1 on others).

  Keeps the loss scale of uniform weighting whatever the turn rule (SAGE-OPD's loss
  normalization, arXiv:2606.19659); a row without trained tokens is left at 1.

  Args:
    factors: ``[B, T]`` positive factors.
    where: ``[B, T]`` bool, the trained tokens.

  Returns:
    ``float32 [B, T]`` under ``stop_gradient``.
  """
  factors = jnp.asarray(factors, jnp.float32)
  if factors.ndim != 2 or jnp.shape(where) != factors.shape:
    raise ValueError(f"factors {factors.shape} and where {jnp.shape(where)} must be the same "
                     "[B, T] shape")
  where = jnp.asarray(where, bool)
  f = jnp.where(where, factors, 0.0)
  mean = jnp.sum(f, axis=1, keepdims=True) / jnp.maximum(jnp.sum(where, axis=1, keepdims=True), 1)
  return jax.lax.stop_gradient(jnp.where(where & (mean > 0), factors / jnp.where(mean > 0, mean, 1.0),
                                         1.0))


__all__ = ["accumulated_discrepancy_factors", "departure_factors", "departure_turn",
           "limit_turns", "normalize_factors", "turn_balanced_factors", "turn_depth",
           "turn_position_factors"]
