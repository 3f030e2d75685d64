"""Checkpointing of the full training state with orbax.

A :class:`Checkpointer` wraps an ``orbax.checkpoint.CheckpointManager``: it saves
the whole :class:`~sad_jax.training._step.TrainState` (step, params, optimizer state,
:class:`~sad_jax.objective._state.SADState`, RNG) plus a small JSON ``data_state`` (where the
data pipeline is: epoch, position, shuffling seed, ...) every ``every_steps``
steps, keeps the last ``keep``, and writes asynchronously when asked (the train
loop goes on while the arrays are written; a step directory appears only once it
is complete, so a run killed mid-write resumes from the previous checkpoint).

.. code-block:: python

  ckpt = Checkpointer("/ckpt/run1", every_steps=100, keep=3)
  state, data_state = ckpt.restore_or(state, {"position": 0})   # resume if possible
  for ...:
    state, metrics = step(state, next_batch(data_state))
    data_state = {"position": data_state["position"] + 1}
    ckpt.save(state, data_state)         # saves when state.step % every_steps == 0
  ckpt.close()                            # waits for pending writes

A checkpoint that does not fit the state it is restored into (other shapes,
dtypes, missing or extra fields) or that cannot be read raises
:class:`CheckpointError` naming the checkpoint path and the mismatch.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_DATA = "data"


class CheckpointError(ValueError):
  """A checkpoint is corrupt or does not match the state it is restored into."""


def _brief(error: Exception, limit: int = 400) -> str:
  text = f"{type(error).__name__}: {error}"
  return text if len(text) <= limit else text[:limit] + " ..."


def _abstract(template) -> Any:
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, template)


class Checkpointer:
  """Saves and restores ``(TrainState, data_state)`` pairs under one directory.

  Args:
    directory: where step directories (``<directory>/<step>``) are written.
    every_steps: save when ``train_state.step`` is a multiple of it (``>= 1``).
    keep: number of most recent checkpoints kept (``>= 1``).
    async_save: write in a background thread (``save`` returns at once).
  """

  def __init__(self, directory: str | os.PathLike, *, every_steps: int = 100, keep: int = 3,
               async_save: bool = True):
    for name, value in (("every_steps", every_steps), ("keep", keep)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not os.fspath(directory):
      raise ValueError("directory must be a non-empty path")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    # Handlers are registered up front so that a fresh process can read metadata.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _DATA: ocp.JsonCheckpointHandler()})

  @classmethod
  def from_config(cls, checkpoint_config) -> "Checkpointer":
    """From the ``checkpoint`` sub-config of :func:`sad_jax.training._step.default_config`."""
    c = checkpoint_config
    return cls(c["directory"], every_steps=c["every_steps"], keep=c["keep"],
               async_save=c["async_save"])

  # -- saving ---------------------------------------------------------------

  def save(self, train_state, data_state: Mapping[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Saves at ``train_state.step`` if it is a save step (or ``force``).

    Args:
      train_state: the :class:`~sad_jax.training._step.TrainState` (any pytree with ``step``).
      data_state: JSON-serializable position of the data pipeline.
      force: save even when the step is not a multiple of ``every_steps``.

    Returns:
      Whether a save was started.
    """
    step = int(jax.device_get(train_state.step))
    data_state = dict(data_state or {})
    return self._manager.save(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(train_state), _DATA: ocp.args.JsonSave(data_state)}),
        force=force)

  def wait(self) -> None:
    """Blocks until pending asynchronous writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- restoring ------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_compatible(self, step: int, template) -> None:
    path = self._step_path(step)
    try:
      saved = self._manager.item_metadata(step)[_STATE]
      saved = ocp.tree.to_flat_dict(saved.tree, sep="/")
    except Exception as e:  # orbax raises many types for unreadable metadata
      raise CheckpointError(f"checkpoint {path} is corrupt or unreadable (metadata): "
                            f"{_brief(e)}") from e
    wanted = ocp.tree.to_flat_dict(template, sep="/")
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing or extra:
      raise CheckpointError(
          f"checkpoint {path} does not match the train state: fields missing from the "
          f"checkpoint {missing[:8]}{' ...' if len(missing) > 8 else ''}, fields not in the "
          f"train state {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    for name, want in wanted.items():
      have = saved[name]
      want_shape, have_shape = tuple(np.shape(want)), tuple(getattr(have, "shape", ()) or ())
      if want_shape != have_shape:
        raise CheckpointError(f"checkpoint {path}: {name} has shape {have_shape} but the train "
                              f"state expects {want_shape}")
      have_dtype = getattr(have, "dtype", None)
      if have_dtype is not None and np.dtype(have_dtype) != np.dtype(want.dtype):
        raise CheckpointError(f"checkpoint {path}: {name} has dtype {np.dtype(have_dtype)} but "
                              f"the train state expects {np.dtype(want.dtype)}")

  def restore(self, template, *, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores a checkpoint into the structure, shapes, dtypes and shardings of ``template``.

    Args:
      template: a train state (or its ``jax.ShapeDtypeStruct`` tree, with
        shardings) of the run being resumed; the restored arrays get its shardings.
      step: which checkpoint; default the latest.

    Returns:
      ``(train_state, data_state)``.

    Raises:
      CheckpointError: no checkpoint exists, or it is corrupt or incompatible with
        ``template`` -- naming the path and the mismatch.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: "
                            f"{self.all_steps()}")
    abstract = _abstract(template)
    self._check_compatible(step, abstract)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardRestore(abstract), _DATA: ocp.args.JsonRestore()}))
    except Exception as e:  # corrupt files surface as many different error types
      raise CheckpointError(f"checkpoint {self._step_path(step)} is corrupt or unreadable: "
                            f"{_brief(e)}") from e
    state = out[_STATE]
    if jax.tree.structure(state) != jax.tree.structure(abstract):
      raise CheckpointError(f"checkpoint {self._step_path(step)} restored into a different tree "
                            "structure than the train state")
    return state, dict(out[_DATA] or {})

  def restore_or(self, template, data_state: Mapping[str, Any] | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """:meth:`restore` the latest checkpoint if there is one, else ``(template, data_state)``.

    A checkpoint that exists but is corrupt or incompatible still raises
    :class:`CheckpointError`: it is never silently replaced by a fresh start.
    """
    if self.latest_step() is None:
      return template, dict(data_state or {})
    return self.restore(template)


__all__ = ["Checkpointer", "CheckpointError"]
