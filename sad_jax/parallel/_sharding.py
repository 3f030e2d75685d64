r"""Device meshes, partition rules, shardings and the vocab-parallel SAD loss.

Three pieces, used together with :func:`sad_jax.training.make_train_step`:

* **Mesh.** :func:`make_mesh` builds a ``(data, fsdp, model)`` mesh from a config
  (one size may be ``-1``: all remaining devices). The batch is split over
  ``data`` and ``fsdp`` (:data:`BATCH_AXES`); parameters over ``fsdp`` and
  ``model`` as the partition rules say.
* **Partition rules** (big_vision style). An ordered sequence of
  ``(regex, spec)`` pairs; a leaf whose path (``"params/lm_head/kernel"``,
  ``"opt_state/0/mu/lm_head/kernel"``) matches ``regex`` (``re.search``; the first
  match wins) gets ``PartitionSpec(*spec)``. Because optimizer states mirror the
  parameter tree, the same rules shard them too. Scalars are always replicated.
* **Vocab-parallel loss.** :func:`vocab_parallel_sad_loss` and
  :func:`make_vocab_parallel_loss` are the one composition
  (:func:`sad_jax.objective.sad_loss`) on the vocab-parallel backend
  (:mod:`sad_jax.backends._vocab_parallel`): logits split over the ``model`` axis along
  the vocabulary, only ``[B, T]`` values crossing devices.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import chex
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sad_jax.backends._vocab_parallel import (BATCH_AXES, VOCAB_AXIS,
                                              VOCAB_PARALLEL_DIVERGENCES,
                                              vocab_parallel_divergence,
                                              vocab_parallel_log_softmax,
                                              vocab_parallel_statistics)
from sad_jax.objective import _config as config_lib
from sad_jax.objective import _sad as objective
from sad_jax.objective import _state as state_lib

MESH_AXES = ("data", "fsdp", "model")
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
# The vocab-parallel loss: the one composition on the vocab-parallel backend.
# ---------------------------------------------------------------------------


def vocab_parallel_sad_loss(student_logits: chex.Array, teacher: Any,
                            span_ids: chex.Array, state: state_lib.SADState, config, *,
                            vocab_axis=VOCAB_AXIS, axis_name=None,
                            labels: chex.Array | None = None,
                            normalizer: chex.Array | None = None, update_state: bool = True
                            ) -> tuple[jax.Array, tuple[objective.Metrics, state_lib.SADState]]:
  """:func:`sad_jax.objective.sad_loss` for logits split over the vocabulary.

  ``sad_loss(..., backend=backends.vocab_parallel(vocab_axis=vocab_axis))``: call it
  inside ``shard_map`` or ``pmap`` where ``vocab_axis`` is mapped over the vocabulary
  slices (and ``axis_name``, if given, over the batch). Returns the same loss, metrics
  and state as ``sad_loss`` on the full logits, on every device, exchanging only
  ``[B, T]``-shaped values over ``vocab_axis``. ``teacher`` is this device's slice of
  the teacher logits, or a (replicated over ``vocab_axis``) ``SparseTeacher``.

  Gradients: inside ``shard_map`` the loss is one replicated value and ``jax.grad``
  gives its gradient. ``pmap`` differentiates the *sum* of the devices' outputs, and
  every device returns the full loss, so there differentiate ``loss / n`` with ``n``
  the number of devices over ``vocab_axis`` and ``axis_name``.

  What the vocab-parallel backend computes is in the capability table
  (:func:`sad_jax.losses.capability_table`); the rest is refused naming the setting.
  """
  from sad_jax import backends  # pylint: disable=g-import-not-at-top
  return objective.sad_loss(student_logits, teacher, span_ids, state, config,
                            labels=labels, axis_name=axis_name, normalizer=normalizer,
                            update_state=update_state,
                            backend=backends.vocab_parallel(vocab_axis=vocab_axis))


def make_vocab_parallel_loss(mesh: Mesh, config) -> Callable:
  """The vocab-parallel SAD loss as a ``shard_map`` over ``mesh``.

  Logits come in as global ``[B, T, V]`` arrays sharded ``P(BATCH_AXES, None,
  "model")`` (what a vocab-sharded lm-head produces under ``jit``); inside, each
  device sees its ``[B / n_batch, T, V / n_model]`` block, and only ``[B, T]``
  values are reduced across devices.

  Returns:
    ``loss_fn(student_logits, teacher, span_ids, state, *, labels=None,
    normalizer=None, update_state=True) -> (loss, (metrics, new_state))``, with
    ``loss``, metrics and state replicated.
  """
  from sad_jax import backends  # pylint: disable=g-import-not-at-top
  from sad_jax.objective import _loss as loss_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.resolve(config)
  backend = backends.vocab_parallel(mesh)
  backend.check(config)

  def loss_fn(student_logits, teacher, span_ids, state, *, labels=None, normalizer=None,
              update_state=True):
    def run(student, teacher, span_ids, labels, state, normalizer, axis_name):
      return objective.compose(student, teacher, span_ids, state, config, backend=backend,
                               labels=labels, axis_name=axis_name, normalizer=normalizer,
                               update_state=update_state)
    return backend.run(run, loss_lib.ModelOutput(logits=student_logits), teacher, span_ids,
                       labels, state, normalizer)

  return loss_fn


__all__ = [
    "MESH_AXES", "BATCH_AXES", "VOCAB_AXIS", "REPLICATE_ALL", "VOCAB_PARALLEL_DIVERGENCES",
    "make_mesh", "tree_paths", "match_partition_rules", "tree_shardings", "batch_shardings",
    "replicated", "jit_train_step", "vocab_parallel_log_softmax", "vocab_parallel_divergence",
    "vocab_parallel_statistics", "vocab_parallel_sad_loss", "make_vocab_parallel_loss",
]
