r"""Device meshes, partition rules and the vocab-parallel SAD loss.

Three pieces, used together by :func:`sad_jax.training._step.make_train_step`:

* **Mesh.** :func:`make_mesh` builds a ``(data, fsdp, model)`` mesh from a config
  (one size may be ``-1``: all remaining devices). The batch is split over
  ``data`` and ``fsdp`` (:data:`BATCH_AXES`); parameters over ``fsdp`` and
  ``model`` as the partition rules say.
* **Partition rules** (big_vision style). An ordered sequence of
  ``(regex, spec)`` pairs; a leaf whose path (``"params/lm_head/kernel"``,
  ``"opt_state/0/mu/lm_head/kernel"``) matches ``regex`` (``re.search``; the first
  match wins) gets ``PartitionSpec(*spec)``. Because optimizer states mirror the
  parameter tree, the same rules shard them too. Scalars are always replicated.
* **Vocab-parallel loss.** With an lm-head sharded over the vocabulary (``model``
  axis), the logits of each device are a vocabulary *slice* ``[B, T, V / n]``.
  :func:`vocab_parallel_sad_loss` computes the SAD loss from the slices: each
  softmax is

  .. math::
    \log p_v = z_v - m - \log \sum_{\text{shards}} \sum_{u \in \text{shard}} e^{z_u - m},
    \qquad m = \mathrm{pmax}_{\text{shards}} \max_{u \in \text{shard}} z_u

  (per-shard max and sum-exp combined with ``pmax`` / ``psum``, as in
  mesh-transformer-jax's ``ProjectionShard.loss``), and every divergence that is a
  sum over the vocabulary of a function of :math:`(p_v, q_v)` is summed per shard
  and ``psum``-ed. Only ``[B, T]`` values cross devices: neither the loss nor its
  gradient gathers ``[tokens, V]``. It runs in ``shard_map``
  (:func:`make_vocab_parallel_loss`) or under ``pmap`` with the vocabulary axis
  name.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as divergences
from sad_jax.objective import _sad as objective
from sad_jax.objective import _spans as spans
from sad_jax.objective import _state as state_lib
from sad_jax.objective import _weighting as weighting

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
VOCAB_AXIS = "model"
Rules = Sequence[tuple[str, Sequence[Any]]]

REPLICATE_ALL: Rules = ((".*", ()),)


# ---------------------------------------------------------------------------
# Mesh.
# ---------------------------------------------------------------------------


def make_mesh(mesh_config=None, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ``(data, fsdp, model)`` device mesh.

  Args:
    mesh_config: mapping / ``ConfigDict`` with int fields ``data``, ``fsdp``,
      ``model`` (missing fields are 1; at most one may be ``-1``, meaning all
      remaining devices). ``None`` puts every device on ``data``.
    devices: devices to use (default: ``jax.devices()``).

  Returns:
    A :class:`jax.sharding.Mesh` with axis names :data:`MESH_AXES`.
  """
  devices = list(jax.devices() if devices is None else devices)
  cfg = {"data": -1} if mesh_config is None else dict(mesh_config)
  unknown = sorted(set(cfg) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh config has unknown axes {unknown}; allowed: {list(MESH_AXES)}")
  sizes = []
  for axis in MESH_AXES:
    size = cfg.get(axis, 1)
    if isinstance(size, bool) or not isinstance(size, int) or not (size >= 1 or size == -1):
      raise ValueError(f"mesh.{axis} must be a positive int or -1, got {size!r}")
    sizes.append(size)
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"got {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


# ---------------------------------------------------------------------------
# Partition rules.
# ---------------------------------------------------------------------------


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_paths(tree) -> Any:
  """The tree with every leaf replaced by its ``"a/b/c"`` path string."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "/".join(_key_name(k) for k in path), tree)


def _axis_size(mesh: Mesh, entry) -> int:
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[n] for n in names)


def match_partition_rules(rules: Rules, tree, *, mesh: Mesh | None = None) -> Any:
  """PartitionSpecs for every leaf of ``tree`` from regex rules (first match wins).

  Args:
    rules: ``(regex, spec)`` pairs; ``spec`` is a tuple of mesh axis names,
      tuples of names, or ``None`` per array dimension (shorter than the rank is
      fine: trailing dimensions are replicated). End with ``(".*", ())`` to
      replicate everything else.
    tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``), e.g. a ``TrainState``.
    mesh: if given, every sharded dimension must divide evenly by its mesh axes.

  Returns:
    A tree of :class:`~jax.sharding.PartitionSpec` with the structure of ``tree``.

  Raises:
    ValueError: a leaf matches no rule, a spec is longer than the leaf's rank, or a
      dimension does not divide by its mesh axes -- naming the path, shape and rule.
  """
  compiled = []
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      raise ValueError(f"partition rule {rule!r} must be a (regex, spec) pair")
    pattern, spec = rule
    compiled.append((pattern, re.compile(pattern), tuple(spec)))

  def leaf_spec(path, leaf):
    name = "/".join(_key_name(k) for k in path)
    shape = tuple(np.shape(leaf))
    if not shape:
      return P()
    for pattern, regex, spec in compiled:
      if regex.search(name):
        break
    else:
      raise ValueError(f"no partition rule matches {name!r} (shape {shape}); add a "
                       "catch-all rule ('.*', ()) to replicate unmatched leaves")
    if len(spec) > len(shape):
      raise ValueError(f"partition rule {pattern!r} -> {spec} has more entries than "
                       f"{name!r} has dimensions (shape {shape})")
    if mesh is not None:
      for dim, entry in zip(shape, spec):
        if entry is not None and dim % _axis_size(mesh, entry):
          raise ValueError(f"{name!r}: dimension {dim} of shape {shape} is not divisible by "
                           f"mesh axes {entry} of size {_axis_size(mesh, entry)} (rule "
                           f"{pattern!r} -> {spec})")
    return P(*spec)

  return jax.tree_util.tree_map_with_path(leaf_spec, tree)


def tree_shardings(tree, mesh: Mesh, rules: Rules = REPLICATE_ALL) -> Any:
  """``NamedSharding`` for every leaf of ``tree`` (see :func:`match_partition_rules`)."""
  specs = match_partition_rules(rules, tree, mesh=mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def batch_shardings(batch, mesh: Mesh, *, vocab_parallel: bool = False,
                    teacher_key: str = "teacher") -> Any:
  """Shardings of a batch: the leading (example) axis over :data:`BATCH_AXES`.

  With ``vocab_parallel``, the offline teacher logits ``batch[teacher_key]``
  (``[B, T, V]``) are also split over the vocabulary (``model`` axis), matching a
  vocab-sharded student lm-head.
  """
  batch_size = _axis_size(mesh, BATCH_AXES)

  def spec(path, leaf):
    name = "/".join(_key_name(k) for k in path)
    shape = np.shape(leaf)
    if not shape:
      return NamedSharding(mesh, P())
    if shape[0] % batch_size:
      raise ValueError(f"batch field {name!r}: leading dimension {shape[0]} is not divisible "
                       f"by the {batch_size} devices of mesh axes {BATCH_AXES}")
    if vocab_parallel and name.split("/")[0] == teacher_key and len(shape) == 3:
      return NamedSharding(mesh, P(BATCH_AXES, None, VOCAB_AXIS))
    return NamedSharding(mesh, P(BATCH_AXES))

  return jax.tree_util.tree_map_with_path(spec, batch)


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, P())


def jit_train_step(train_step: Callable, *, state_sharding, batch_sharding,
                   teacher_sharding=None, donate: bool = True) -> Callable:
  """``jax.jit`` of a train step with explicit in/out shardings and donated state.

  Args:
    train_step: ``train_step(train_state, batch[, teacher_params]) -> (train_state,
      metrics)`` from :func:`sad_jax.training._step.make_train_step`.
    state_sharding: tree of shardings of the ``TrainState`` (:func:`tree_shardings`).
    batch_sharding: tree of shardings of the batch (:func:`batch_shardings`).
    teacher_sharding: shardings of the teacher params (online teacher), else None.
    donate: donate the input train state's buffers to the output.

  Returns:
    The jitted step; metrics come back replicated.
  """
  mesh = jax.tree.leaves(state_sharding)[0].mesh
  in_shardings = (state_sharding, batch_sharding)
  if teacher_sharding is not None:
    in_shardings += (teacher_sharding,)
  return jax.jit(train_step, in_shardings=in_shardings,
                 out_shardings=(state_sharding, replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------
# Vocab-parallel math (per shard; combined over `vocab_axis`).
# ---------------------------------------------------------------------------


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


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


def _terms_total_variation(log_q, log_p):
  return 0.5 * jnp.abs(jnp.exp(log_p) - jnp.exp(log_q))


# Divergences that are a sum over the vocabulary of a function of (q_v, p_v).
_VOCAB_TERMS = {
    "forward_kl": _terms_forward_kl,
    "reverse_kl": _terms_reverse_kl,
    "symmetric_kl": _terms_symmetric_kl,
    "generalized_jsd": _terms_generalized_jsd,
    "skew_kl": _terms_skew_kl,
    "skew_reverse_kl": _terms_skew_reverse_kl,
    "total_variation": _terms_total_variation,
}
VOCAB_PARALLEL_DIVERGENCES = tuple(_VOCAB_TERMS)


def _masked_float(x, where):
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x if where is None else jnp.where(where[..., None], x, 0.0)


def vocab_parallel_divergence(name: str, student_logits: chex.Array, teacher_logits: chex.Array,
                              *, vocab_axis, temperature=1.0, where: chex.Array | None = None,
                              **params) -> jax.Array:
  """A per-token divergence from vocabulary slices, equal to ``divergences.<name>``.

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
  if name not in _VOCAB_TERMS:
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
  value = jax.lax.psum(jnp.sum(_VOCAB_TERMS[name](log_q, log_p, **params), axis=-1), vocab_axis)
  return value if where is None else jnp.where(where, value, 0.0)


def _global_argmax(x, vocab_axis, offset):
  """First global index of the max of ``x`` ``[..., V_local]`` split over ``vocab_axis``."""
  local_max = jnp.max(x, axis=-1)
  local_arg = jnp.argmax(x, axis=-1).astype(jnp.int32) + offset
  global_max = jax.lax.pmax(local_max, vocab_axis)
  big = jnp.iinfo(jnp.int32).max
  return jax.lax.pmin(jnp.where(local_max == global_max, local_arg, big), vocab_axis)


def vocab_parallel_statistics(student_logits: chex.Array, teacher_logits: chex.Array,
                              where: chex.Array, *, vocab_axis) -> dict[str, jax.Array]:
  """:func:`sad_jax.objective._sad.teacher_statistics` from vocabulary slices.

  Args:
    student_logits, teacher_logits: ``[B, T, V_local]`` slices.
    where: ``[B, T]`` bool trained tokens.
    vocab_axis: the mapped axis the vocabulary is split over.

  Returns:
    ``float32 [B, T]`` ``teacher_entropy``, ``student_entropy``, ``kl_t1``,
    ``agreement`` and ``total_variation``, without gradient, 0 outside ``where``.
  """
  where = jnp.asarray(where, bool)
  s = _masked_float(jax.lax.stop_gradient(student_logits), where)
  t = _masked_float(jax.lax.stop_gradient(teacher_logits), where)
  log_q = vocab_parallel_log_softmax(s, vocab_axis)
  log_p = vocab_parallel_log_softmax(t, vocab_axis)
  p, q = jnp.exp(log_p), jnp.exp(log_q)

  def total(x):
    return jax.lax.psum(jnp.sum(x, axis=-1), vocab_axis)

  offset = jax.lax.axis_index(vocab_axis) * s.shape[-1]
  stats = dict(
      teacher_entropy=-total(p * jnp.where(p > 0, log_p, 0.0)),
      student_entropy=-total(q * jnp.where(q > 0, log_q, 0.0)),
      kl_t1=total(divergences.kl_terms(log_p, log_q)),
      agreement=(_global_argmax(s, vocab_axis, offset)
                 == _global_argmax(t, vocab_axis, offset)).astype(jnp.float32),
      total_variation=0.5 * total(jnp.abs(p - q)),
  )
  return {k: jnp.where(where, v, 0.0) for k, v in stats.items()}


def _vocab_parallel_ce(student_logits, labels, where, *, vocab_axis, label_smoothing):
  """:func:`sad_jax.objective._sad.hard_label_ce` from vocabulary slices."""
  s = _masked_float(student_logits, where)
  vocab_local = s.shape[-1]
  log_q = vocab_parallel_log_softmax(s, vocab_axis)
  vocab = vocab_local * jax.lax.psum(1, vocab_axis)
  idx = jnp.clip(jnp.asarray(labels), 0, vocab - 1) - jax.lax.axis_index(vocab_axis) * vocab_local
  mine = (idx >= 0) & (idx < vocab_local)
  picked = jnp.take_along_axis(log_q, jnp.clip(idx, 0, vocab_local - 1)[..., None], axis=-1)[..., 0]
  ce = -jax.lax.psum(jnp.where(mine, picked, 0.0), vocab_axis)
  if label_smoothing > 0:
    finite = jnp.isfinite(log_q)
    log_sum = jax.lax.psum(jnp.sum(jnp.where(finite, log_q, 0.0), -1), vocab_axis)
    n_finite = jax.lax.psum(finite.sum(-1), vocab_axis)
    ce = (1.0 - label_smoothing) * ce - label_smoothing * log_sum / jnp.maximum(n_finite, 1)
  return jnp.where(where, ce, 0.0)


def vocab_parallel_sad_loss(student_logits: chex.Array, teacher_logits: chex.Array,
                            span_ids: chex.Array, state: state_lib.SADState, config, *,
                            vocab_axis, axis_name=None, labels: chex.Array | None = None,
                            normalizer: chex.Array | None = None, update_state: bool = True
                            ) -> tuple[jax.Array, tuple[objective.Metrics, state_lib.SADState]]:
  """:func:`sad_jax.sad_loss` for logits split over the vocabulary.

  Call it inside ``shard_map`` (see :func:`make_vocab_parallel_loss`) or ``pmap``
  where ``vocab_axis`` is mapped over the vocabulary slices (and ``axis_name``, if
  given, over the batch). Returns the same loss, metrics and state as
  :func:`sad_jax.sad_loss` on the full logits, on every device, and exchanges
  only ``[B, T]``-shaped values over ``vocab_axis``.

  Gradients: inside ``shard_map`` (``check_vma=True``, the default) the loss is
  one replicated value and ``jax.grad`` gives its gradient. ``pmap`` differentiates
  the *sum* of the devices' outputs, and every device returns the full loss, so
  there differentiate ``loss / n`` with ``n`` the number of devices over
  ``vocab_axis`` and ``axis_name`` (the usual pmap convention).

  Supported: the divergences of :data:`VOCAB_PARALLEL_DIVERGENCES`, every
  weighting strategy and normalization, the hard-label term. The entropy,
  confidence-penalty, span-consistency and MoE regularizers are not (a
  ValueError names the field).

  Args:
    student_logits: ``[B, T, V_local]`` this device's student logits slice.
    teacher_logits: ``[B, T, V_local]`` the teacher's logits, same slice (dense).
    span_ids: ``[B, T]`` int span types of this device's examples.
    state: the (replicated) :class:`~sad_jax.objective._state.SADState`.
    config: the objective config.
    vocab_axis: mapped axis name(s) of the vocabulary split.
    axis_name: mapped axis name(s) of the batch split, or None.
    labels: ``[B, T]`` int global token ids for the hard-label term.
    normalizer: the global batch's :func:`sad_jax.objective._sad.loss_normalizer`.
    update_state: as in :func:`sad_jax.sad_loss`.

  Returns:
    ``(loss, (metrics, new_state))`` as :func:`sad_jax.sad_loss`.
  """
  config = config_lib.resolve(config)
  if config.divergence not in _VOCAB_TERMS:
    raise ValueError(f"config.divergence = {config.divergence!r} has no vocab-parallel form; "
                     f"available: {', '.join(VOCAB_PARALLEL_DIVERGENCES)}")
  reg = config.regularizers
  for field in ("entropy", "confidence_penalty", "span_consistency", "moe_load_balance"):
    if reg[field] != 0:
      raise ValueError(f"config.regularizers.{field} = {reg[field]} is not supported by the "
                       "vocab-parallel loss; set it to 0 or use sad_jax.sad_loss")
  s = jnp.asarray(student_logits)
  if s.ndim != 3 or jnp.shape(span_ids) != s.shape[:2]:
    raise ValueError(f"student_logits must be [B, T, V_local] and span_ids [B, T]; got "
                     f"{s.shape} and {jnp.shape(span_ids)}")
  span_ids = jnp.asarray(span_ids)
  teacher = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
  base = weighting.uniform(span_ids, config.span_weights) > 0
  stats = vocab_parallel_statistics(s, teacher, base, vocab_axis=vocab_axis)
  vocab_size = s.shape[-1] * jax.lax.psum(1, vocab_axis)
  weights = weighting.token_weights(
      span_ids, config, state, teacher_entropy=stats["teacher_entropy"],
      disagreement=stats["total_variation"], vocab_size=vocab_size)
  trained = weights > 0
  temperature = jax.lax.stop_gradient(state.temperature)
  divergence = vocab_parallel_divergence(
      config.divergence, s, teacher, vocab_axis=vocab_axis, temperature=temperature,
      where=trained, **dict(config.divergence_kwargs))
  scale = jnp.square(temperature) if config.scale_by_t2 else 1.0
  per_token = scale * divergence
  extra = {}
  if labels is not None:
    extra["hard_label_ce"] = _vocab_parallel_ce(
        s, labels, trained, vocab_axis=vocab_axis, label_smoothing=config.label_smoothing)
    if config.hard_label_weight > 0:
      per_token = per_token + config.hard_label_weight * extra["hard_label_ce"]
  elif config.hard_label_weight > 0:
    raise ValueError(f"config.hard_label_weight = {config.hard_label_weight} needs labels")

  loss, loss_sums, counts = objective.reduce_tokens(
      per_token, weights, span_ids, normalization=config.normalization,
      axis_name=axis_name, normalizer=normalizer)

  def pair(values):
    return (_psum(spans.span_sums(jax.lax.stop_gradient(values), span_ids), axis_name), counts)

  metrics = {"loss": (jax.lax.stop_gradient(loss_sums), counts),
             "weight": pair(weights), "divergence": pair(divergence)}
  metrics.update({k: pair(v) for k, v in stats.items()})
  metrics.update({k: pair(v) for k, v in extra.items()})
  new_state = state_lib.update_state(state, metrics, config) if update_state else state
  return loss, (metrics, new_state)


def make_vocab_parallel_loss(mesh: Mesh, config) -> Callable:
  """The vocab-parallel SAD loss as a ``shard_map`` over ``mesh``.

  Logits come in as global ``[B, T, V]`` arrays sharded ``P(BATCH_AXES, None,
  "model")`` (what a vocab-sharded lm-head produces under ``jit``); inside, each
  device sees its ``[B / n_batch, T, V / n_model]`` block, and only ``[B, T]``
  values are reduced across devices.

  Returns:
    ``loss_fn(student_logits, teacher_logits, span_ids, state, *, labels=None,
    normalizer=None, update_state=True) -> (loss, (metrics, new_state))``, with
    ``loss``, metrics and state replicated.
  """
  config = config_lib.resolve(config)
  logits_spec = P(BATCH_AXES, None, VOCAB_AXIS)
  token_spec = P(BATCH_AXES, None)

  def loss_fn(student_logits, teacher_logits, span_ids, state, *, labels=None,
              normalizer=None, update_state=True):
    def body(s, t, ids, st, lab, norm):
      return vocab_parallel_sad_loss(s, t, ids, st, config, vocab_axis=VOCAB_AXIS,
                                     axis_name=BATCH_AXES, labels=lab, normalizer=norm,
                                     update_state=update_state)

    in_specs = (logits_spec, logits_spec, token_spec, P(), token_spec, P())
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P())(
        student_logits, teacher_logits, span_ids, state, labels, normalizer)

  return loss_fn


__all__ = [
    "MESH_AXES", "BATCH_AXES", "VOCAB_AXIS", "REPLICATE_ALL", "VOCAB_PARALLEL_DIVERGENCES",
    "make_mesh", "tree_paths", "match_partition_rules", "tree_shardings", "batch_shardings",
    "replicated", "jit_train_step", "vocab_parallel_log_softmax", "vocab_parallel_divergence",
    "vocab_parallel_statistics", "vocab_parallel_sad_loss", "make_vocab_parallel_loss",
]
