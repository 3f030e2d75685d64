r"""The SAD train step: optax update, accumulation, mixed precision, non-finite guard.

.. code-block:: python

  cfg = train.default_config()                   # objective + optimizer + mesh + ...
  tx = train.make_optimizer(cfg.optimizer)       # clip_by_global_norm -> adamw (+ schedule)
  state = train.init_train_state(params, tx, cfg)
  step = jax.jit(train.make_train_step(student_apply, tx, cfg), donate_argnums=0)
  state, metrics = step(state, batch)            # offline teacher: batch["teacher"]

With an online teacher, pass ``teacher_apply`` to :func:`make_train_step` and the
teacher's params to every step; its logits are computed in the same step under
``stop_gradient``. For a device mesh use :func:`sad_jax.parallel._sharding.jit_train_step`
(explicit in/out shardings, donated state); ``config.vocab_parallel`` computes the
loss from vocabulary-sharded logits without gathering them.

**The batch** is a mapping (or a ``NamedTuple`` such as
:class:`sad_jax.data.trajectories.batching.Batch`) with ``span_ids [B, T]``, the
student's inputs (whatever ``student_apply`` reads), ``labels [B, T]`` when the
hard-label term is on, and -- for an offline teacher -- ``teacher``: dense logits
``[B, T, V]`` or any teacher object the configured divergence accepts.

**Gradient accumulation.** With ``accumulation_steps = M`` the batch is split into
``M`` micro-batches (micro-batch ``i`` takes rows ``i, i + M, ...``, so each stays
evenly sharded), processed one after another in a ``lax.scan``. Every micro-batch
loss is divided by the normalizer of the *whole* batch
(:func:`sad_jax.objective._sad.loss_normalizer`), so the summed losses and gradients are
exactly the full batch's (sum / count, not a mean of means), and the
:class:`~sad_jax.objective._state.SADState` advances once, from the summed (sum, count) metrics.

**Mixed precision.** Parameters and optimizer state stay float32; the student (and
online teacher) run on parameters cast to ``compute_dtype``; the loss math is
float32 (the divergences upcast); gradients come back float32.

**Non-finite guard.** If the loss or any gradient is not finite, parameters and
optimizer state are kept, and ``SADState.skipped_steps`` is incremented
(:func:`sad_jax.objective._state.skip_step`); ``TrainState.step`` still advances (it counts
batches consumed).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sad_jax.objective import _config as sad_config
from sad_jax.objective import _sad as objective
from sad_jax.parallel import _sharding as sharding_lib
from sad_jax.objective import _state as state_lib

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")


def default_config() -> ml_collections.ConfigDict:
  """Returns the training config: the objective plus optimizer, mesh and checkpointing.

  Fields:

  * ``objective``: the SAD objective (:func:`sad_jax.objective._config.default_config`).
  * ``optimizer``: ``name`` (one of :data:`OPTIMIZERS`), ``learning_rate``,
    ``b1``/``b2``/``eps`` (``sgd`` uses ``b1`` as its momentum; 0 for none),
    ``weight_decay``, ``grad_clip_norm`` (0 turns clipping
    off), ``warmup_steps`` and ``decay_steps`` (a warmup-cosine schedule when
    ``decay_steps > 0``, else constant after warmup).
  * ``accumulation_steps``: micro-batches per optimizer step.
  * ``compute_dtype``: one of :data:`COMPUTE_DTYPES`.
  * ``skip_nonfinite``: the non-finite guard.
  * ``vocab_parallel``: compute the loss from vocab-sharded logits
    (:func:`sad_jax.parallel._sharding.make_vocab_parallel_loss`); needs a mesh.
  * ``mesh``: sizes of the ``data``, ``fsdp``, ``model`` axes (``-1``: the rest).
  * ``partition_rules``: ``(regex, spec)`` pairs over parameter paths.
  * ``checkpoint``: ``directory``, ``every_steps``, ``keep``, ``async_save``.
  * ``seed``: the train state's RNG seed.
  """
  c = ml_collections.ConfigDict()
  c.objective = sad_config.default_config()
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip_norm=1.0, warmup_steps=0, decay_steps=0))
  c.accumulation_steps = 1
  c.compute_dtype = "float32"
  c.skip_nonfinite = True
  c.vocab_parallel = False
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.partition_rules = tuple(sharding_lib.REPLICATE_ALL)
  c.checkpoint = ml_collections.ConfigDict(dict(
      directory="", every_steps=100, keep=3, async_save=True))
  c.seed = 0
  return c


def _merge(base: ml_collections.ConfigDict, overrides: Mapping, prefix: str = "") -> None:
  for key, value in overrides.items():
    if key not in base:
      raise ValueError(f"config.{prefix}{key} is not a known field; allowed fields here: "
                       f"{', '.join(sorted(base.keys()))}")
    if key == "objective" and not prefix:
      base.objective = sad_config.resolve(value if isinstance(
          value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)) else dict(value))
    elif isinstance(base[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
      _merge(base[key], value, f"{prefix}{key}.")
    else:
      base[key] = value


def resolve_config(config) -> ml_collections.ConfigDict:
  """A validated training config from a ``ConfigDict`` or a mapping of overrides.

  A mapping (e.g. ``{"accumulation_steps": 4, "objective": {"normalization":
  "tokens"}}``) is merged onto :func:`default_config`. Never modifies its input.

  Raises:
    ValueError: naming the offending field, its value and the allowed values.
  """
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    if "objective" not in config:
      raise ValueError("the training config has no 'objective' field; start from "
                       "sad_jax.training._step.default_config() (an objective-only config goes in "
                       "config.objective)")
    merged = default_config()
    _merge(merged, config.to_dict() if hasattr(config, "to_dict") else dict(config))
    merged.objective = sad_config.resolve(config.objective)
  elif isinstance(config, Mapping):
    merged = default_config()
    _merge(merged, config)
  else:
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
  m = merged.accumulation_steps
  if isinstance(m, bool) or not isinstance(m, int) or m < 1:
    raise ValueError(f"config.accumulation_steps = {m!r} is invalid; allowed: an int >= 1")
  if merged.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype = {merged.compute_dtype!r} is invalid; allowed: "
                     f"{', '.join(COMPUTE_DTYPES)}")
  if merged.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name = {merged.optimizer.name!r} is invalid; "
                     f"allowed: {', '.join(OPTIMIZERS)}")
  for field in ("skip_nonfinite", "vocab_parallel"):
    if not isinstance(merged[field], bool):
      raise ValueError(f"config.{field} = {merged[field]!r} is invalid; allowed: True, False")
  return merged


def make_optimizer(optimizer_config) -> optax.GradientTransformation:
  """The optax chain of ``config.optimizer``: global-norm clipping, then the optimizer.

  Args:
    optimizer_config: the ``optimizer`` sub-config of :func:`default_config` (or a
      mapping of overrides of it).

  Returns:
    ``optax.chain(clip_by_global_norm(grad_clip_norm), <optimizer>(schedule))``;
    clipping is left out when ``grad_clip_norm == 0``.
  """
  c = default_config().optimizer
  _merge(c, dict(optimizer_config), "optimizer.")
  if c.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name = {c.name!r} is invalid; allowed: "
                     f"{', '.join(OPTIMIZERS)}")
  if not c.learning_rate > 0:
    raise ValueError(f"config.optimizer.learning_rate = {c.learning_rate!r} must be > 0")
  if c.grad_clip_norm < 0:
    raise ValueError(f"config.optimizer.grad_clip_norm = {c.grad_clip_norm!r} must be >= 0")
  if c.decay_steps > 0:
    lr = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                            c.warmup_steps + c.decay_steps)
  elif c.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
  else:
    lr = c.learning_rate
  if c.name == "adamw":
    opt = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
  elif c.name == "adam":
    opt = optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps)
  elif c.name == "sgd":
    opt = optax.sgd(lr, momentum=c.b1 or None)
  elif c.name == "lion":
    opt = optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)
  else:
    opt = optax.adafactor(lr, weight_decay_rate=c.weight_decay or None)
  if c.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(c.grad_clip_norm), opt)
  return opt


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (a pytree; checkpoint it whole).

  Attributes:
    step: ``int32 []`` train steps run, skipped ones included (= batches consumed).
    params: the student's float32 parameters.
    opt_state: the optax state of ``tx``.
    sad_state: the objective's :class:`~sad_jax.objective._state.SADState` (temperature,
      running span losses, ..., ``skipped_steps``).
    rng: ``uint32 [2]`` raw PRNG key data (``jax.random.wrap_key_data`` gives the key);
      a new subkey is split off every step.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  sad_state: state_lib.SADState
  rng: jax.Array


def init_train_state(params, tx: optax.GradientTransformation, config, *,
                     rng: jax.Array | None = None) -> TrainState:
  """The initial :class:`TrainState`.

  Args:
    params: the student's parameters (float leaves are cast to float32).
    tx: the optimizer (e.g. :func:`make_optimizer`).
    config: the training config (:func:`default_config` or overrides).
    rng: a PRNG key (typed or raw); default ``jax.random.key(config.seed)``.
  """
  config = resolve_config(config)
  params = jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      else jnp.asarray(x), params)
  if rng is None:
    rng = jax.random.key(config.seed)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    sad_state=state_lib.init_state(config.objective),
                    rng=jnp.asarray(rng, jnp.uint32))


def _field(batch, name: str, *, required: bool = True):
  if isinstance(batch, Mapping):
    if name in batch:
      return batch[name]
  elif hasattr(batch, name):
    return getattr(batch, name)
  if required:
    have = list(batch.keys()) if isinstance(batch, Mapping) else list(getattr(batch, "_fields", []))
    raise ValueError(f"batch has no field {name!r}; it has {have}")
  return None


def _cast_floats(tree, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _accepts_rng(fn: Callable) -> bool:
  try:
    return "rng" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _split_micro(batch, m: int):
  """``[B, ...]`` leaves -> ``[M, B / M, ...]``; micro-batch ``i`` is rows ``i::M``."""
  def split(x):
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] % m:
      raise ValueError(f"accumulation_steps = {m} must divide the batch size; got a batch "
                       f"leaf of shape {x.shape}")
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(student_apply: Callable, tx: optax.GradientTransformation, config, *,
                    teacher_apply: Callable | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Callable:
  """Builds the (jittable) SAD train step.

  Args:
    student_apply: ``student_apply(params, batch) -> logits [B, T, V]`` (it may also
      take a keyword ``rng``: a fresh key per step and micro-batch, e.g. for dropout).
    tx: the optax optimizer (e.g. :func:`make_optimizer`); clipping belongs in it.
    config: the training config (:func:`default_config`, or a mapping of overrides).
    teacher_apply: ``teacher_apply(teacher_params, batch) -> logits [B, T, V]`` for an
      online teacher (run in the same step, under ``stop_gradient``). Without it the
      teacher is read from ``batch["teacher"]`` (offline: dense logits or a teacher
      object such as a ``SparseTeacher``).
    mesh: the device mesh; required by ``config.vocab_parallel``.

  Returns:
    ``train_step(train_state, batch, teacher_params=None) -> (train_state, metrics)``.
    ``metrics``: ``loss`` (``[]``, the objective), ``grad_norm`` (``[]``, before
    clipping), ``skipped`` (``bool []``, the non-finite guard fired) and ``spans``
    (the objective's (sum, count) pairs, see :func:`summarize`). Jit it with
    ``donate_argnums=0`` (or :func:`sad_jax.parallel._sharding.jit_train_step`).
  """
  config = resolve_config(config)
  obj = config.objective
  m = config.accumulation_steps
  compute_dtype = jnp.dtype(config.compute_dtype)
  pass_rng = _accepts_rng(student_apply)
  if config.vocab_parallel:
    if mesh is None:
      raise ValueError("config.vocab_parallel = True needs the device mesh: "
                       "make_train_step(..., mesh=sharding.make_mesh(config.mesh))")
    vp_loss = sharding_lib.make_vocab_parallel_loss(mesh, obj)
  use_labels = obj.hard_label_weight > 0

  def loss_fn(params, micro, teacher_params, sad_state, normalizer, rng):
    kwargs = {"rng": rng} if pass_rng else {}
    logits = student_apply(_cast_floats(params, compute_dtype), micro, **kwargs)
    if teacher_apply is not None:
      teacher = jax.lax.stop_gradient(
          teacher_apply(_cast_floats(teacher_params, compute_dtype), micro))
    else:
      teacher = _field(micro, "teacher")
    span_ids = _field(micro, "span_ids")
    labels = _field(micro, "labels") if use_labels else None
    if config.vocab_parallel:
      loss, (metrics, _) = vp_loss(logits, teacher, span_ids, sad_state, labels=labels,
                                   normalizer=normalizer, update_state=False)
    else:
      loss, (metrics, _) = objective.sad_loss(logits, teacher, span_ids, sad_state, obj,
                                              labels=labels, normalizer=normalizer,
                                              update_state=False)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(train_state: TrainState, batch, teacher_params=None):
    if teacher_apply is not None and teacher_params is None:
      raise ValueError("an online teacher (teacher_apply) needs teacher_params in every step")
    if teacher_apply is None and teacher_params is not None:
      raise ValueError("teacher_params were given but make_train_step got no teacher_apply")
    key, step_key = jax.random.split(jax.random.wrap_key_data(train_state.rng))
    normalizer = objective.loss_normalizer(_field(batch, "span_ids"), obj)
    params, sad_state = train_state.params, train_state.sad_state
    if m == 1:
      (loss, metrics), grads = grad_fn(params, batch, teacher_params, sad_state, normalizer,
                                       step_key)
    else:
      micros = _split_micro(batch, m)

      def body(carry, xs):
        i, micro = xs
        (l, met), g = grad_fn(params, micro, teacher_params, sad_state, normalizer,
                              jax.random.fold_in(step_key, i))
        return jax.tree.map(jnp.add, carry, (l, met, g)), None

      first = jax.tree.map(lambda x: x[0], micros)
      shapes = jax.eval_shape(lambda: grad_fn(params, first, teacher_params, sad_state,
                                              normalizer, step_key))
      (l_shape, met_shape), g_shape = shapes
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l_shape, met_shape, g_shape))
      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(m), micros))

    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, train_state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_sad_state = state_lib.update_state(sad_state, metrics, obj)
    if config.skip_nonfinite:
      ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_params = keep(new_params, params)
      new_opt_state = keep(new_opt_state, train_state.opt_state)
      new_sad_state = keep(new_sad_state, state_lib.skip_step(sad_state))
    else:
      ok = jnp.ones((), bool)
    new_state = TrainState(step=train_state.step + 1, params=new_params,
                           opt_state=new_opt_state, sad_state=new_sad_state,
                           rng=jax.random.key_data(key))
    out = {"loss": loss, "grad_norm": grad_norm, "skipped": ~ok, "spans": metrics}
    return new_state, out

  return train_step


def summarize(metrics) -> dict[str, float]:
  """Host-side numbers for logging from a step's metrics.

  Returns ``loss``, ``grad_norm``, ``skipped`` and the per-span-type values of
  :func:`sad_jax.objective._sad.finalize_metrics` (``"divergence/action"``, ...).
  """
  out = {"loss": float(np.asarray(metrics["loss"])),
         "grad_norm": float(np.asarray(metrics["grad_norm"])),
         "skipped": float(np.asarray(metrics["skipped"]))}
  out.update(objective.finalize_metrics(metrics["spans"]))
  return out


__all__ = ["TrainState", "default_config", "resolve_config", "make_optimizer",
           "init_train_state", "make_train_step", "summarize", "COMPUTE_DTYPES", "OPTIMIZERS"]
