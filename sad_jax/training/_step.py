r"""The generic train step: any loss object, optax or NNX, accumulation, mixed precision, guard.

.. code-block:: python

  loss = objective.SADLoss(config.objective)        # or token_kd_loss(), cross_entropy_loss()
  tx = training.make_optimizer(config.optimizer)    # clip_by_global_norm -> adamw (+ schedule)
  state = training.init_train_state(params, tx, loss)
  step = jax.jit(training.make_train_step(loss, tx, config, apply_fn=student_apply),
                 donate_argnums=0)
  state, metrics = step(state, batch)               # offline teacher: batch["teacher"]

**Losses** are objects (:class:`sad_jax.objective.Loss`): SAD, token-level KD and SFT
(cross-entropy) are :class:`sad_jax.objective.SADLoss` configurations, on any backend;
on-policy objectives are loss objects too. The step calls the model, hands the loss a
:class:`~sad_jax.objective.ModelOutput` (the model may return logits, a mapping, an
HF-style object with ``.logits``, with optional ``router_logits`` / ``expert_ids``, or
hidden states and the lm-head for the fused backend) and the teacher, and sums
``(loss, metrics)`` over micro-batches.

**Models.** ``apply_fn(params, batch[, rng=key]) -> output`` with ``params`` in the
train state; or an NNX module: ``init_train_state(model, optimizer, loss)`` splits it
into its trainable parameters (the optimizer's ``wrt`` filter, default ``nnx.Param``)
and the rest (``nnx.Rngs`` keys and counts, batch statistics, ...), and the step
merges them inside the trace, calls ``apply_fn(model, batch)`` (default
``model(batch["tokens"])``) and carries the updated rest forward, so modules holding
their own ``nnx.Rngs`` work under ``jit`` and ``lax.scan``.

**Optimizers.** An ``optax.GradientTransformation`` or an ``nnx.Optimizer`` (its ``tx``
and ``wrt`` are used; its state must be fresh, step 0).

**Teachers.** Offline: ``batch["teacher"]`` (dense logits, a ``SparseTeacher``, or a
mapping/``ModelOutput`` with hidden states and head for the fused backend). Online:
``teacher_apply(teacher_params, batch)`` (or an NNX module and its ``nnx.state``), run
in the same step under ``stop_gradient``; it may return dense logits, any model output,
or a ``SparseTeacher`` built on the fly (``sad_jax.losses.top_k_teacher``).

**Gradient accumulation.** With ``accumulation_steps = M`` the batch is split into ``M``
micro-batches (micro-batch ``i`` takes rows ``i, i + M, ...``, so each stays evenly
sharded), processed one after another in a ``lax.scan``. Every micro-batch loss is
divided by the normalizer of the *whole* batch (``loss.normalizer(batch)``), so the
summed losses and gradients are exactly the full batch's (sum / count, not a mean of
means), and the loss state advances once, from the summed (sum, count) metrics. With
a ``mesh``, each micro-batch must still split evenly over the batch axes; a batch
that does not is refused naming ``accumulation_steps`` and the mesh.

**Mixed precision.** Parameters and optimizer state stay float32; the model (and an
online teacher) runs on parameters cast to ``compute_dtype``, except those whose path
matches a ``float32_params`` regex (list embedding tables gathered by index, so that
the scatter-add of their gradient accumulates in float32); the loss math is float32;
gradients come back float32 and micro-batch gradients are summed in float32.
``float16`` uses dynamic loss scaling (as ``jmp.DynamicLossScale``): the loss is
multiplied by ``TrainState.loss_scale.scale`` before differentiation and the
gradients divided by it; a step with non-finite scaled gradients is skipped and
halves the scale, ``loss_scale.period`` finite steps in a row double it.

**Non-finite guard.** If the loss or any gradient is not finite, parameters, optimizer
state and model state are kept, and the loss state records the skip
(``SADState.skipped_steps``); ``metrics["skipped"]`` says so; ``TrainState.step`` still
advances (it counts batches consumed).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sad_jax.objective import _config as config_lib
from sad_jax.objective import _loss as loss_lib
from sad_jax.objective import _sad as objective
from sad_jax.parallel._sharding import BATCH_AXES, REPLICATE_ALL

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")


def default_config() -> ml_collections.ConfigDict:
  """Returns the training config: the objective plus optimizer, step, mesh and checkpointing.

  Fields:

  * ``objective``: the SAD objective (:func:`sad_jax.objective.default_config`).
  * ``optimizer``: ``name`` (one of :data:`OPTIMIZERS`), ``learning_rate``,
    ``b1``/``b2``/``eps`` (``sgd`` uses ``b1`` as its momentum; 0 for none),
    ``weight_decay``, ``grad_clip_norm`` (0 turns clipping off), ``warmup_steps``
    and ``decay_steps`` (a warmup-cosine schedule when ``decay_steps > 0``, else
    constant after warmup).
  * ``accumulation_steps``: micro-batches per optimizer step.
  * ``compute_dtype``: one of :data:`COMPUTE_DTYPES`.
  * ``float32_params``: regexes of parameter paths kept float32 in the model.
  * ``loss_scale``: dynamic loss scaling for ``float16``: ``initial``, ``period``,
    ``factor``, ``min``.
  * ``skip_nonfinite``: the non-finite guard.
  * ``vocab_parallel``: the SAD loss from vocab-sharded logits
    (:func:`sad_jax.backends.vocab_parallel`); needs a mesh.
  * ``mesh``: sizes of the ``data``, ``fsdp``, ``model`` axes (``-1``: the rest).
  * ``partition_rules``: ``(regex, spec)`` pairs over parameter paths.
  * ``checkpoint``: ``directory``, ``every_steps``, ``keep``, ``async_save``.
  * ``seed``: the train state's RNG seed.
  """
  c = ml_collections.ConfigDict()
  c.objective = config_lib.default_config()
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip_norm=1.0, warmup_steps=0, decay_steps=0))
  c.accumulation_steps = 1
  c.compute_dtype = "float32"
  c.float32_params = ()
  c.loss_scale = ml_collections.ConfigDict(dict(
      initial=2.0 ** 15, period=2000, factor=2.0, min=1.0))
  c.skip_nonfinite = True
  c.vocab_parallel = False
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  c.partition_rules = tuple(REPLICATE_ALL)
  c.checkpoint = ml_collections.ConfigDict(dict(
      directory="", every_steps=100, keep=3, async_save=True))
  c.seed = 0
  return c


def _validate(c: ml_collections.ConfigDict) -> None:
  config_lib.validate(c.objective)
  m = c.accumulation_steps
  if isinstance(m, bool) or not isinstance(m, int) or m < 1:
    raise ValueError(f"config.accumulation_steps = {m!r} is invalid; allowed: an int >= 1")
  if c.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype = {c.compute_dtype!r} is invalid; allowed: "
                     f"{', '.join(COMPUTE_DTYPES)}")
  if c.optimizer.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name = {c.optimizer.name!r} is invalid; "
                     f"allowed: {', '.join(OPTIMIZERS)}")
  for field in ("skip_nonfinite", "vocab_parallel"):
    if not isinstance(c[field], bool):
      raise ValueError(f"config.{field} = {c[field]!r} is invalid; allowed: True, False")
  if c.compute_dtype == "float16" and not c.skip_nonfinite:
    raise ValueError("config.compute_dtype = 'float16' needs config.skip_nonfinite = True: "
                     "dynamic loss scaling skips the steps whose scaled gradients overflow")
  for pattern in c.float32_params:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f"config.float32_params entry {pattern!r} is not a regex: {e}") from None
  ls = c.loss_scale
  if not (ls.initial >= 1 and ls.min >= 1 and ls.factor > 1 and ls.min <= ls.initial):
    raise ValueError(f"config.loss_scale = {ls.to_dict()} is invalid; allowed: "
                     "1 <= min <= initial, factor > 1")
  if isinstance(ls.period, bool) or not isinstance(ls.period, int) or ls.period < 1:
    raise ValueError(f"config.loss_scale.period = {ls.period!r} is invalid; allowed: an "
                     "int >= 1")


def resolve_config(config=None) -> ml_collections.ConfigDict:
  """A validated training config from a ``ConfigDict`` or a mapping of overrides.

  One merge (:func:`sad_jax.objective._config.merge`, type-checked against the
  defaults) onto :func:`default_config`, then one validation. Never modifies its input.

  Raises:
    ValueError: naming the offending field, its value and the allowed values.
  """
  if config is None:
    config = {}
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    if "objective" not in config:
      raise ValueError("the training config has no 'objective' field; start from "
                       "sad_jax.training.default_config() (an objective-only config goes in "
                       "config.objective)")
    config = config.to_dict()
  elif not isinstance(config, Mapping):
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")
  merged = default_config()
  config_lib.merge(merged, config)
  _validate(merged)
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
  config_lib.merge(c, dict(optimizer_config), "optimizer.")
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
class LossScale:
  """Dynamic loss scale of a float16 run (as ``jmp.DynamicLossScale``).

  Attributes:
    scale: ``float32 []`` the factor the loss is multiplied by before differentiation.
    good_steps: ``int32 []`` finite steps since the scale last changed.
  """
  scale: jax.Array
  good_steps: jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (a pytree; checkpoint it whole).

  Attributes:
    step: ``int32 []`` train steps run, skipped ones included (= batches consumed).
    params: the trainable float32 parameters (an ``nnx.State`` for an NNX model).
    opt_state: the optax state.
    sad_state: the loss's state (a :class:`~sad_jax.objective.SADState` for the
      library's losses: temperature, running span losses, ..., ``skipped_steps``).
    rng: ``uint32 [2]`` raw PRNG key data (``jax.random.wrap_key_data`` gives the key);
      a new subkey is split off every step.
    model_state: the non-trainable rest of an NNX model (``nnx.Rngs`` state, batch
      statistics); ``None`` for ``apply_fn(params, ...)`` models.
    loss_scale: the :class:`LossScale` of a float16 run, else ``None``.
    graphdef: the NNX graph definition (static), else ``None``.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  sad_state: Any
  rng: jax.Array
  model_state: Any = None
  loss_scale: LossScale | None = None
  graphdef: Any = flax.struct.field(pytree_node=False, default=None)


def _is_loss(x) -> bool:
  return isinstance(x, loss_lib.Loss)


def _is_nnx_module(x) -> bool:
  try:
    from flax import nnx  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - flax always ships nnx here
    return False
  return isinstance(x, nnx.Module)


def _unwrap_optimizer(optimizer):
  """``(tx, wrt filter or None)`` of an optax transformation or an ``nnx.Optimizer``."""
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer, None
  from flax import nnx  # pylint: disable=g-import-not-at-top
  if isinstance(optimizer, nnx.Optimizer):
    taken = int(np.asarray(optimizer.step[...]))
    if taken != 0:
      raise ValueError(f"the nnx.Optimizer has taken {taken} steps; the "
                       "train step keeps the optimizer state in TrainState.opt_state, so pass a "
                       "fresh nnx.Optimizer (or its .tx) and restore a TrainState to resume")
    return optimizer.tx, optimizer.wrt
  raise TypeError(f"optimizer must be an optax.GradientTransformation or an nnx.Optimizer, "
                  f"got {type(optimizer).__name__}")


def init_train_state(model_or_params, optimizer, loss=None, *, rng: jax.Array | None = None,
                     config=None) -> TrainState:
  """The initial :class:`TrainState`.

  Args:
    model_or_params: the student's parameters (a pytree; float leaves are cast to
      float32) or an NNX module (split into trainable parameters and the rest).
    optimizer: an ``optax.GradientTransformation`` or an ``nnx.Optimizer``.
    loss: the loss object (its ``init_state()`` is the initial ``sad_state``); a
      training config (or a mapping of overrides) is accepted instead and gives
      ``SADLoss(config.objective)``; ``None``: the default SAD objective.
    rng: a PRNG key (typed or raw); default ``jax.random.key(config.seed)``.
    config: the training config (only ``seed`` and ``compute_dtype`` / ``loss_scale``
      are read); taken from ``loss`` when that is a config.
  """
  if loss is None or not _is_loss(loss):
    if config is None:
      config = loss
    config = resolve_config(config)
    loss = loss_lib.SADLoss(config.objective)
  else:
    config = resolve_config(config)
  tx, wrt = _unwrap_optimizer(optimizer)
  graphdef = model_state = None
  if _is_nnx_module(model_or_params):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    graphdef, params, model_state = nnx.split(model_or_params, wrt or nnx.Param, ...)
  else:
    params = model_or_params
  # Copies (``jnp.array``), so a train step that donates the state leaves the
  # caller's parameters intact.
  params = jax.tree.map(
      lambda x: jnp.array(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      else jnp.array(x), params)
  if rng is None:
    rng = jax.random.key(config.seed)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  loss_scale = None
  if config.compute_dtype == "float16":
    loss_scale = LossScale(scale=jnp.asarray(config.loss_scale.initial, jnp.float32),
                           good_steps=jnp.zeros((), jnp.int32))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    sad_state=loss.init_state(), rng=jnp.asarray(rng, jnp.uint32),
                    model_state=model_state, loss_scale=loss_scale, graphdef=graphdef)


def _path(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _cast_floats(tree, dtype, keep: tuple[str, ...] = ()):
  patterns = [re.compile(p) for p in keep]

  def cast(path, x):
    if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
      return x
    if patterns and any(p.search(_path(path)) for p in patterns):
      return x
    return x.astype(dtype)
  return jax.tree_util.tree_map_with_path(cast, tree)


def _accepts_rng(fn: Callable) -> bool:
  try:
    return "rng" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _split_micro(batch, m: int, mesh):
  """``[B, ...]`` leaves -> ``[M, B / M, ...]``; micro-batch ``i`` is rows ``i::M``."""
  shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES
                                               if a in mesh.shape]))

  def split(x):
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] % m:
      raise ValueError(f"accumulation_steps = {m} must divide the batch size; got a batch "
                       f"leaf of shape {x.shape}")
    if (x.shape[0] // m) % shards:
      raise ValueError(
          f"accumulation_steps = {m} splits the batch of {x.shape[0]} rows into micro-batches "
          f"of {x.shape[0] // m} rows, which do not divide evenly over the {shards} devices "
          f"of the mesh's batch axes {dict((a, mesh.shape[a]) for a in BATCH_AXES if a in mesh.shape)}"
          f" (mesh {dict(mesh.shape)}); use a batch size that is a multiple of "
          f"accumulation_steps x {shards}, or fewer accumulation steps")
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _teacher_output(out):
  """An online teacher's output as the loss takes it: arrays and SparseTeachers as they
  are, other model outputs as a ModelOutput (its logits alone when it has no hidden)."""
  from sad_jax.losses import _sparse as sparse  # pylint: disable=g-import-not-at-top
  if isinstance(out, sparse.SparseTeacher) or hasattr(out, "shape"):
    return out
  out = loss_lib.as_model_output(out, what="teacher_apply")
  return out if out.hidden is not None else out.logits


def make_train_step(loss, optimizer, config=None, *, apply_fn: Callable | None = None,
                    teacher_apply: Callable | Any | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Callable:
  """Builds the (jittable) train step of any loss object.

  Args:
    loss: the loss object (:class:`sad_jax.objective.Loss`: ``SADLoss``,
      ``token_kd_loss()``, ``cross_entropy_loss()``, an on-policy loss, ...). The
      shorthand ``make_train_step(student_apply, tx, config)`` (a model function in
      place of the loss) trains ``SADLoss(config.objective)`` -- on the vocab-parallel
      backend when ``config.vocab_parallel``.
    optimizer: an ``optax.GradientTransformation`` (clipping belongs in it, e.g.
      :func:`make_optimizer`) or an ``nnx.Optimizer``.
    config: the training config (:func:`default_config`, or a mapping of overrides);
      the step reads ``accumulation_steps``, ``compute_dtype``, ``float32_params``,
      ``loss_scale`` and ``skip_nonfinite``. Validated here, once.
    apply_fn: the student: ``apply_fn(params, batch) -> output`` (it may take a keyword
      ``rng``: a fresh key per step and micro-batch, e.g. for dropout); for an NNX
      model ``apply_fn(model, batch)``, default ``model(batch["tokens"])``.
    teacher_apply: an online teacher: ``teacher_apply(teacher_params, batch) ->
      output`` or an NNX module (then ``teacher_params = nnx.state(module)``), run
      under ``stop_gradient``. Without it, a loss that needs a teacher reads
      ``batch["teacher"]``.
    mesh: the device mesh; micro-batches are checked against its batch axes (and
      the vocab-parallel shorthand needs it).

  Returns:
    ``train_step(train_state, batch, teacher_params=None) -> (train_state, metrics)``.
    ``metrics``: ``loss`` (``[]``), ``grad_norm`` (``[]``, before clipping, unscaled),
    ``skipped`` (``bool []``, the step was dropped), ``spans`` (the loss's (sum,
    count) metrics, see :func:`summarize`) and, for float16, ``loss_scale``. Jit it
    with ``donate_argnums=0`` (or :func:`sad_jax.parallel.jit_train_step`).
  """
  if not _is_loss(loss):
    if not callable(loss) or apply_fn is not None:
      raise TypeError(f"loss must be a loss object (sad_jax.objective.Loss: SADLoss, "
                      f"token_kd_loss(), cross_entropy_loss(), ...), got {type(loss).__name__}")
    apply_fn, config = loss, resolve_config(config)
    backend = None
    if config.vocab_parallel:
      if mesh is None:
        raise ValueError("config.vocab_parallel = True needs the device mesh: "
                         "make_train_step(..., mesh=sad_jax.parallel.make_mesh(config.mesh))")
      from sad_jax import backends  # pylint: disable=g-import-not-at-top
      backend = backends.vocab_parallel(mesh)
    loss = loss_lib.SADLoss(config.objective, backend=backend)
  else:
    config = resolve_config(config)
  tx, wrt = _unwrap_optimizer(optimizer)
  if mesh is None:  # a vocab-parallel loss knows its mesh
    mesh = getattr(getattr(loss, "backend", None), "mesh", None)
  m = config.accumulation_steps
  compute_dtype = jnp.dtype(config.compute_dtype)
  keep32 = tuple(config.float32_params)
  float16 = config.compute_dtype == "float16"
  ls_cfg = config.loss_scale
  skip_nonfinite = config.skip_nonfinite
  needs_teacher = loss.needs_teacher

  teacher_graphdef = None
  if teacher_apply is not None and _is_nnx_module(teacher_apply):
    from flax import nnx  # pylint: disable=g-import-not-at-top
    teacher_graphdef = nnx.graphdef(teacher_apply)
    teacher_apply = None

  def run_teacher(teacher_params, micro):
    if teacher_graphdef is not None:
      from flax import nnx  # pylint: disable=g-import-not-at-top
      module = nnx.merge(teacher_graphdef, _cast_floats(teacher_params, compute_dtype, keep32))
      out = module(loss_lib.batch_field(micro, "tokens"))
    else:
      out = teacher_apply(_cast_floats(teacher_params, compute_dtype, keep32), micro)
    return jax.tree.map(jax.lax.stop_gradient, _teacher_output(out))

  def run_student(graphdef, params, model_state, micro, rng):
    params = _cast_floats(params, compute_dtype, keep32)
    if graphdef is None:
      kwargs = {"rng": rng} if apply_fn is not None and _accepts_rng(apply_fn) else {}
      if apply_fn is None:
        raise ValueError("make_train_step needs apply_fn for a params-pytree model (only an "
                         "NNX model has a default call)")
      return apply_fn(params, micro, **kwargs), model_state
    from flax import nnx  # pylint: disable=g-import-not-at-top
    # Fresh Variable objects at this trace level (nnx refuses to mutate ones built
    # at an outer level, e.g. an nnx.Rngs count under jax.grad inside jax.jit).
    params, model_state = jax.tree.map(lambda x: x, (params, model_state))
    model = nnx.merge(graphdef, params, model_state)
    out = (apply_fn(model, micro) if apply_fn is not None
           else model(loss_lib.batch_field(micro, "tokens")))
    _, _, model_state = nnx.split(model, wrt or nnx.Param, ...)
    return out, model_state

  def micro_loss(params, graphdef, model_state, micro, teacher_params, loss_state, normalizer,
                 rng, scale):
    out, new_model_state = run_student(graphdef, params, model_state, micro, rng)
    student = loss_lib.as_model_output(out)
    teacher = None
    if needs_teacher:
      if teacher_apply is not None or teacher_graphdef is not None:
        teacher = run_teacher(teacher_params, micro)
      else:
        teacher = loss_lib.batch_field(micro, "teacher")
    value, metrics = loss(student, teacher, micro, loss_state, normalizer=normalizer,
                          micro_batches=m)
    return value * scale, (value, metrics, new_model_state)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def train_step(train_state: TrainState, batch, teacher_params=None):
    online = teacher_apply is not None or teacher_graphdef is not None
    if online and teacher_params is None:
      raise ValueError("an online teacher (teacher_apply) needs teacher_params in every step")
    if not online and teacher_params is not None:
      raise ValueError("teacher_params were given but make_train_step got no teacher_apply")
    if float16 and train_state.loss_scale is None:
      raise ValueError("compute_dtype = 'float16' needs a TrainState with a loss scale: "
                       "init_train_state(..., config=<the same training config>)")
    key, step_key = jax.random.split(jax.random.wrap_key_data(train_state.rng))
    normalizer = loss.normalizer(batch)
    params, loss_state = train_state.params, train_state.sad_state
    graphdef = train_state.graphdef
    scale = train_state.loss_scale.scale if float16 else jnp.ones((), jnp.float32)

    def one(micro, model_state, rng):
      (_, (value, metrics, model_state)), grads = grad_fn(
          params, graphdef, model_state, micro, teacher_params, loss_state, normalizer, rng,
          scale)
      grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
      return value, metrics, grads, model_state

    if m == 1:
      loss_value, metrics, grads, model_state = one(batch, train_state.model_state, step_key)
    else:
      micros = _split_micro(batch, m, mesh)

      def body(carry, xs):
        i, micro = xs
        total, model_state = carry
        value, met, g, model_state = one(micro, model_state, jax.random.fold_in(step_key, i))
        return (jax.tree.map(jnp.add, total, (value, met, g)), model_state), None

      first = jax.tree.map(lambda x: x[0], micros)
      shapes = jax.eval_shape(lambda: one(first, train_state.model_state, step_key))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[:3])
      ((loss_value, metrics, grads), model_state), _ = jax.lax.scan(
          body, (zeros, train_state.model_state), (jnp.arange(m), micros))

    if float16:
      grads = jax.tree.map(lambda g: g / scale, grads)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, train_state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_loss_state = loss.update_state(loss_state, metrics)
    if skip_nonfinite:
      ok = jnp.isfinite(loss_value) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
      new_params = keep(new_params, params)
      new_opt_state = keep(new_opt_state, train_state.opt_state)
      new_loss_state = keep(new_loss_state, loss.skip_state(loss_state))
      model_state = keep(model_state, train_state.model_state)
    else:
      ok = jnp.ones((), bool)
    new_scale = None
    if float16:
      ls = train_state.loss_scale
      grow = ok & (ls.good_steps + 1 >= ls_cfg.period)
      new_scale = LossScale(
          scale=jnp.where(ok, jnp.where(grow, ls.scale * ls_cfg.factor, ls.scale),
                          jnp.maximum(ls.scale / ls_cfg.factor, ls_cfg.min)),
          good_steps=jnp.where(ok & ~grow, ls.good_steps + 1, 0))
    new_state = TrainState(step=train_state.step + 1, params=new_params,
                           opt_state=new_opt_state, sad_state=new_loss_state,
                           rng=jax.random.key_data(key), model_state=model_state,
                           loss_scale=new_scale, graphdef=graphdef)
    out = {"loss": loss_value, "grad_norm": grad_norm, "skipped": ~ok, "spans": metrics}
    if float16:
      out["loss_scale"] = scale
    return new_state, out

  return train_step


def summarize(metrics) -> dict[str, float]:
  """Host-side numbers for logging from a step's metrics.

  Returns ``loss``, ``grad_norm``, ``skipped`` (and ``loss_scale`` when present) and the
  per-span-type values of :func:`sad_jax.objective.finalize_metrics`
  (``"divergence/action"``, ...).
  """
  out = {k: float(np.asarray(metrics[k])) for k in ("loss", "grad_norm", "skipped",
                                                    "loss_scale") if k in metrics}
  out.update(objective.finalize_metrics(metrics["spans"]))
  return out


__all__ = ["TrainState", "LossScale", "default_config", "resolve_config", "make_optimizer",
           "init_train_state", "make_train_step", "summarize", "COMPUTE_DTYPES", "OPTIMIZERS"]
