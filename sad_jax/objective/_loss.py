r"""Loss objects: the objectives a train step optimizes.

A loss object is what :func:`sad_jax.training.make_train_step` calls on the model's
outputs. It owns everything objective-specific -- which batch fields it reads, its
state (:class:`~sad_jax.objective._state.SADState`), the global normalizer of the batch
and the rule that advances the state -- so the step itself knows nothing about spans,
teachers or divergences. The interface (:class:`Loss`):

.. code-block:: python

  state = loss.init_state()
  norm = loss.normalizer(batch)                          # on the FULL batch
  value, metrics = loss(student, teacher, micro_batch, state, normalizer=norm)
  # ... sum (value, metrics) over micro-batches ...
  state = loss.update_state(state, summed_metrics)       # once per optimizer step
  state = loss.skip_state(state)                         # when the step is dropped

``student`` is a :class:`ModelOutput` (:func:`as_model_output` turns arrays, mappings
and HF-style objects with ``.logits`` into one); ``teacher`` is dense logits, a
:class:`~sad_jax.losses.SparseTeacher`, a :class:`ModelOutput` (e.g. hidden states and
lm-head for the fused backend) or ``None`` for losses without a teacher. ``metrics`` are
``(sum, count)`` pairs, so that the sum over micro-batches is exact.

Ready losses, all one composition (:func:`sad_jax.objective.sad_loss`):

* :class:`SADLoss` -- the Structured Agent Distillation objective of a config;
* :func:`token_kd_loss` -- token-level knowledge distillation (Hinton et al., 2015):
  the same objective with uniform weights over all agent tokens, ``tokens``
  normalization;
* :func:`cross_entropy_loss` -- supervised fine-tuning: hard-label cross-entropy on
  the agent tokens (``divergence_weight = 0``: no teacher).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from sad_jax.losses import _sparse as sparse
from sad_jax.objective import _config as config_lib
from sad_jax.objective import _sad as objective
from sad_jax.objective import _state as state_lib

Metrics = objective.Metrics


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelOutput:
  """What a model gives a loss (a pytree; absent fields are ``None``).

  Attributes:
    logits: ``[B, T, V]`` vocabulary logits.
    hidden: ``[B, T, d]`` final hidden states (fused lm-head backend).
    head: ``[d, V]`` lm-head (unembedding) matrix (fused lm-head backend).
    router_logits: ``[L, B, T, E]`` MoE router logits (``moe_load_balance``).
    expert_ids: ``[L, B, T, K]`` the experts each token was routed to.
  """
  logits: Any = None
  hidden: Any = None
  head: Any = None
  router_logits: Any = None
  expert_ids: Any = None


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelOutput))


def as_model_output(out: Any, *, what: str = "student_apply") -> ModelOutput:
  """Normalizes a model's output to a :class:`ModelOutput`.

  Accepts a :class:`ModelOutput`; an array (the logits); a mapping with any of the
  fields of :class:`ModelOutput` (other keys are ignored); or an object with a
  ``.logits`` attribute such as a Hugging Face ``FlaxCausalLMOutput`` (``router_logits``
  and ``expert_ids`` attributes are read too when present).

  Raises:
    TypeError: naming ``what`` and the type it returned.
  """
  if isinstance(out, ModelOutput):
    return out
  if isinstance(out, (jax.Array, jnp.ndarray)) or (
      hasattr(out, "shape") and hasattr(out, "dtype")):
    return ModelOutput(logits=out)
  if isinstance(out, Mapping):
    found = {k: out[k] for k in _FIELDS if k in out}
    if not found:
      raise TypeError(f"{what} returned a mapping with keys {sorted(out)}; it needs at least "
                      f"one of {list(_FIELDS)}")
    return ModelOutput(**found)
  if hasattr(out, "logits") or hasattr(out, "hidden"):
    return ModelOutput(**{k: getattr(out, k, None) for k in _FIELDS})
  raise TypeError(f"{what} returned {type(out).__name__}; expected logits [B, T, V], a "
                  f"ModelOutput, a mapping with {list(_FIELDS)}, or an object with .logits")


def batch_field(batch, name: str, *, required: bool = True):
  """``batch[name]`` for a mapping, ``batch.name`` for a NamedTuple/dataclass batch."""
  if isinstance(batch, Mapping):
    if name in batch:
      return batch[name]
  elif hasattr(batch, name):
    return getattr(batch, name)
  if required:
    have = (list(batch.keys()) if isinstance(batch, Mapping)
            else list(getattr(batch, "_fields", ())) or type(batch).__name__)
    raise ValueError(f"batch has no field {name!r}; it has {have}")
  return None


@runtime_checkable
class Loss(Protocol):
  """The interface :func:`sad_jax.training.make_train_step` optimizes.

  Attributes:
    needs_teacher: the loss reads a teacher (online ``teacher_apply`` or
      ``batch["teacher"]``).
  """
  needs_teacher: bool

  def init_state(self) -> Any:
    """The loss's initial state (a pytree; ``()`` for a stateless loss)."""

  def normalizer(self, batch) -> Any:
    """The denominators of the FULL batch (a pytree), computed before micro-batching."""

  def __call__(self, student: ModelOutput, teacher: Any, batch, state, *,
               normalizer: Any, micro_batches: int = 1) -> tuple[jax.Array, Metrics]:
    """``(loss, metrics)`` of one micro-batch; both add up over micro-batches."""

  def update_state(self, state, metrics: Metrics) -> Any:
    """The state after one optimizer step, from the step's summed metrics."""

  def skip_state(self, state) -> Any:
    """The state after a dropped (non-finite) step."""


class SADLoss:
  """The Structured Agent Distillation objective as a loss object.

  The config is merged and validated once, here; the traced call does no config work.

  Args:
    config: the objective config (:func:`sad_jax.objective.default_config`) or a
      mapping of overrides of it.
    backend: the vocabulary backend (:mod:`sad_jax.backends`): ``None`` or
      ``"dense"`` for logits ``[B, T, V]``; a backend object (e.g.
      :func:`sad_jax.backends.vocab_parallel`, :func:`sad_jax.backends.fused`).
      A combination the backend cannot compute is refused here, naming it.

  Batch fields read: ``span_ids [B, T]``; ``labels [B, T]`` when
  ``hard_label_weight > 0``. The student's ``router_logits``/``expert_ids`` feed
  ``moe_load_balance``.
  """

  def __init__(self, config=None, *, backend=None):
    from sad_jax import backends as backends_lib  # pylint: disable=g-import-not-at-top
    self.config = config_lib.resolve({} if config is None else config)
    self.backend = backends_lib.get_backend(backend)
    self.backend.check(self.config)
    self.needs_teacher = self.config.divergence_weight > 0
    self.needs_labels = self.config.hard_label_weight > 0

  def init_state(self) -> state_lib.SADState:
    return state_lib.init_state(self.config)

  def normalizer(self, batch) -> jax.Array:
    return objective.batch_normalizer(batch_field(batch, "span_ids"), self.config)

  def __call__(self, student: ModelOutput, teacher, batch, state, *, normalizer=None,
               micro_batches: int = 1):
    student = as_model_output(student)
    if (teacher is not None and not isinstance(teacher, sparse.SparseTeacher)
        and not hasattr(teacher, "shape")):
      teacher = as_model_output(teacher, what="the teacher")
      if teacher.hidden is None:
        teacher = teacher.logits
    labels = batch_field(batch, "labels") if self.needs_labels else None

    def run(student, teacher, span_ids, labels, state, normalizer, axis_name):
      return objective.compose(student, teacher, span_ids, state, self.config,
                               backend=self.backend, labels=labels, axis_name=axis_name,
                               normalizer=normalizer, update_state=False,
                               moe_scale=1.0 / micro_batches)

    loss, (metrics, _) = self.backend.run(run, student, teacher, batch_field(batch, "span_ids"),
                                          labels, state, normalizer)
    return loss, metrics

  def update_state(self, state, metrics):
    return state_lib.update_state(state, metrics, self.config)

  def skip_state(self, state):
    return state_lib.skip_step(state)

  def __repr__(self):
    divergence = self.config.divergence if self.needs_teacher else None
    return (f"SADLoss(divergence={divergence!r}, weighting="
            f"{self.config.weighting!r}, normalization={self.config.normalization!r}, "
            f"backend={self.backend.name!r})")


def token_kd_loss(divergence: str = "forward_kl", *, temperature: float = 1.0,
                  backend=None, **overrides) -> SADLoss:
  """Token-level knowledge distillation (Hinton et al., 2015) on the agent tokens.

  :class:`SADLoss` with ``weighting = "uniform"`` and ``normalization = "tokens"``:
  every reasoning and action token counts the same, whatever its span -- the baseline
  SAD is compared against.

  Args:
    divergence: a divergence name (:data:`sad_jax.losses.DIVERGENCES`).
    temperature: the distillation temperature.
    backend: as in :class:`SADLoss`.
    **overrides: further objective fields (e.g. ``divergence_kwargs={"beta": 0.5}``).
  """
  return SADLoss(dict(dict(divergence=divergence, temperature=temperature,
                           weighting="uniform", normalization="tokens"), **overrides),
                 backend=backend)


def cross_entropy_loss(*, label_smoothing: float = 0.0, backend=None,
                       **overrides) -> SADLoss:
  """Supervised fine-tuning: hard-label cross-entropy on the agent tokens.

  :class:`SADLoss` with ``divergence_weight = 0`` (no teacher is read),
  ``hard_label_weight = 1`` and ``tokens`` normalization: the mean of
  :func:`sad_jax.objective.hard_label_ce` over the reasoning and action tokens (the
  span weights say which). Reads ``labels [B, T]`` from the batch.

  Args:
    label_smoothing: :math:`\\epsilon \\in [0, 1)`.
    backend: as in :class:`SADLoss`.
    **overrides: further objective fields (e.g. ``span_weights``).
  """
  return SADLoss(dict(dict(divergence_weight=0.0, hard_label_weight=1.0,
                           label_smoothing=label_smoothing, normalization="tokens"),
                      **overrides), backend=backend)


__all__ = ["Loss", "ModelOutput", "SADLoss", "as_model_output", "batch_field",
           "cross_entropy_loss", "token_kd_loss"]
