"""Checkpointing of the full training state with orbax, verified on restore.

A :class:`Checkpointer` wraps an ``orbax.checkpoint.CheckpointManager``. Each
checkpoint ``<directory>/<step>/`` holds:

* ``state/`` -- the whole :class:`~sad_jax.training.TrainState` (step, params,
  optimizer state, :class:`~sad_jax.objective.SADState`, RNG), orbax's format;
* ``data/`` -- a small JSON ``data_state`` (where the data pipeline is: epoch,
  position, a Grain iterator's ``get_state()``, ...);
* ``config/`` -- the run's config as JSON, when the checkpointer was given one;
* ``sad_checksums.json`` -- ``{"format_version": 1, "algorithm": "sha256",
  "files": {path: {"bytes": n, "sha256": hex}}}`` for every file of the three items,
  written after the arrays are complete and before orbax renames the step directory
  into place, so a complete step directory always has its checksums.

Saving is asynchronous and does not wait for the device: the step number comes from
a host-side counter (the step of the last restore or save, plus one per call), so
``save()`` on a step that is not saved returns at once; on a save step the device
step is compared with the counter (the arrays are being copied then anyway).
Restoring first checks every file against its checksum: a flipped bit raises
:class:`CheckpointError`, and :meth:`Checkpointer.restore_or` then falls back to the
newest intact step (with a warning).

.. code-block:: python

  ckpt = Checkpointer("/ckpt/run1", every_steps=100, keep=3, config=cfg)
  state, data_state = ckpt.restore_or(state, {"position": 0})   # resume if possible
  for ...:
    state, metrics = step(state, next_batch(data_state))
    data_state = {"position": data_state["position"] + 1}
    ckpt.save(state, data_state)         # saves when the step is a multiple of 100
  ckpt.save(state, data_state, force=True)  # the final step (no-op if already saved)
  ckpt.close()                            # waits for pending writes

A checkpoint that does not fit the state it is restored into (other shapes, dtypes,
missing or extra fields), that was written under another config (by default), or
that cannot be read raises :class:`CheckpointError` naming the path and the mismatch.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_DATA = "data"
_CONFIG = "config"
_ITEMS = (_STATE, _DATA, _CONFIG)
CHECKSUMS = "sad_checksums.json"
CONFIG_MISMATCH = ("raise", "warn")


class CheckpointError(ValueError):
  """A checkpoint is corrupt or does not match the state it is restored into."""


class _IntegrityError(CheckpointError):
  """A damaged, incomplete or unreadable checkpoint (restore_or tries an older one)."""


def _brief(error: Exception, limit: int = 400) -> str:
  text = f"{type(error).__name__}: {error}"
  return text if len(text) <= limit else text[:limit] + " ..."


def _abstract(template) -> Any:
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def leaf(x):
    sharding = getattr(x, "sharding", None) or default
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(leaf, template)


def _jsonable(value) -> Any:
  """A config (ConfigDict, mapping, sequences, scalars) as plain JSON values."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (bool, int, float, str)) or value is None:
    return value
  if isinstance(value, np.generic):
    return value.item()
  return repr(value)


def _flatten(value, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict) and value:
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: value}


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
  """``"key: saved -> current"`` for every dotted key whose value differs."""
  a, b = _flatten(_jsonable(saved)), _flatten(_jsonable(current))
  out = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return out


def _item_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for item in _ITEMS if (step_dir / item).is_dir()
                for p in (step_dir / item).rglob("*") if p.is_file())


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def write_checksums(step_dir: pathlib.Path) -> None:
  """Writes ``sad_checksums.json`` for the item files under ``step_dir``."""
  files = {p.relative_to(step_dir).as_posix(): dict(bytes=p.stat().st_size, sha256=_sha256(p))
           for p in _item_files(step_dir)}
  text = json.dumps(dict(format_version=1, algorithm="sha256", files=files), indent=1)
  tmp = step_dir / f".{CHECKSUMS}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, step_dir / CHECKSUMS)


def verify_checksums(step_dir: pathlib.Path) -> None:
  """Checks every file listed in ``sad_checksums.json`` (raises :class:`CheckpointError`)."""
  try:
    listed = json.loads((step_dir / CHECKSUMS).read_text())["files"]
  except FileNotFoundError:
    raise _IntegrityError(f"checkpoint {step_dir} has no {CHECKSUMS}: it cannot be verified "
                          "(pass verify=False to restore it unverified)") from None
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise _IntegrityError(f"checkpoint {step_dir}: damaged {CHECKSUMS}: {_brief(e)}") from None
  for name, want in listed.items():
    path = step_dir / name
    if not path.is_file():
      raise _IntegrityError(f"checkpoint {step_dir}: {name} is missing")
    size = path.stat().st_size
    if size != want["bytes"]:
      raise _IntegrityError(f"checkpoint {step_dir}: {name} has {size} bytes, {want['bytes']} "
                            "were written")
    digest = _sha256(path)
    if digest != want["sha256"]:
      raise _IntegrityError(f"checkpoint {step_dir}: {name} fails its checksum (sha256 "
                            f"{digest[:16]}... != {want['sha256'][:16]}...): the file is damaged")


class Checkpointer:
  """Saves and restores ``(TrainState, data_state)`` pairs under one directory.

  Args:
    directory: where step directories (``<directory>/<step>``) are written.
    every_steps: :meth:`save` writes the steps that are multiples of it (step 0
      included) and those it is forced to; nothing else (``>= 1``).
    keep: number of most recent checkpoints kept (``>= 1``).
    async_save: write in a background thread (``save`` returns once the arrays are
      copied off the device); ``False`` waits for each write to finish.
    config: the run's config (a ``ConfigDict`` or mapping), saved as JSON with every
      checkpoint and compared with the saved one on restore.
    config_mismatch: on restore, a saved config that differs from ``config``:
      ``"raise"`` a :class:`CheckpointError` listing the differences, or ``"warn"``
      (list them in a warning and in :attr:`config_differences`, and restore).
    verify: check every file's sha256 before restoring (``False`` also reads
      checkpoints written without checksums).
  """

  def __init__(self, directory: str | os.PathLike, *, every_steps: int = 100, keep: int = 3,
               async_save: bool = True, config: Any = None, config_mismatch: str = "raise",
               verify: bool = True):
    for name, value in (("every_steps", every_steps), ("keep", keep)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not os.fspath(directory):
      raise ValueError("directory must be a non-empty path")
    if config_mismatch not in CONFIG_MISMATCH:
      raise ValueError(f"config_mismatch must be one of {CONFIG_MISMATCH}, got "
                       f"{config_mismatch!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_steps = every_steps
    self.async_save = async_save
    self.config = None if config is None else _jsonable(config)
    self.config_mismatch = config_mismatch
    self.verify = verify
    self.config_differences: list[str] = []
    self._next_step: int | None = None
    self._in_flight: int | None = None
    self._saved: set[int] = set()
    # Always orbax's async path: its post-finalization hook writes the checksums
    # into the temporary step directory before it is renamed into place.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._on_finalized))
    # Handlers are registered up front so that a fresh process can read metadata.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _DATA: ocp.JsonCheckpointHandler(),
                       _CONFIG: ocp.JsonCheckpointHandler()})

  @classmethod
  def from_config(cls, checkpoint_config, config: Any = None, **kwargs) -> "Checkpointer":
    """From the ``checkpoint`` sub-config of :func:`sad_jax.training.default_config`.

    Args:
      checkpoint_config: ``directory``, ``every_steps``, ``keep``, ``async_save``.
      config: the whole run config, saved with each checkpoint (see ``config``).
      **kwargs: ``config_mismatch``, ``verify``.
    """
    c = checkpoint_config
    return cls(c["directory"], every_steps=c["every_steps"], keep=c["keep"],
               async_save=c["async_save"], config=config, **kwargs)

  # -- saving ---------------------------------------------------------------

  def _on_finalized(self) -> None:
    """orbax's post-finalization hook: the step's files are complete, not yet renamed."""
    if jax.process_index() != 0 or self._in_flight is None:
      return
    root = pathlib.Path(self.directory)
    candidates = sorted(root.glob(f"{self._in_flight}.orbax-checkpoint-tmp*"))
    step_dir = candidates[-1] if candidates else root / str(self._in_flight)
    write_checksums(step_dir)

  def save(self, train_state, data_state: Mapping[str, Any] | None = None, *,
           step: int | None = None, force: bool = False) -> bool:
    """Saves ``train_state`` if its step is a multiple of ``every_steps`` (or ``force``).

    Args:
      train_state: the :class:`~sad_jax.training.TrainState` (any pytree with ``step``).
      data_state: JSON-serializable position of the data pipeline.
      step: the host's number for this step. Default: the host-side counter, the
        step of the last :meth:`restore` / :meth:`restore_or` / :meth:`save` plus
        one (one call per train step); a forced save reads the device step.
      force: save even when the step is not a multiple of ``every_steps``. A step
        that is already saved is never written twice (returns ``False``).

    Returns:
      Whether a save was started.

    Raises:
      CheckpointError: on a save step, the device's ``train_state.step`` differs from
        the host's step (pass ``step=``, or call ``save`` once per train step).
    """
    if step is None:
      if force or self._next_step is None:
        step = int(jax.device_get(train_state.step))
      else:
        step = self._next_step
    elif isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be an int >= 0, got {step!r}")
    step = int(step)
    self._next_step = step + 1
    if not force and step % self.every_steps:
      return False
    if step in self._saved or step in self._manager.all_steps():
      return False
    device_step = int(jax.device_get(train_state.step))  # the arrays are being copied now
    if device_step != step:
      raise CheckpointError(
          f"save at host step {step}, but train_state.step is {device_step}: pass step= or "
          "call save() once per train step after restore()/restore_or()")
    self._manager.wait_until_finished()  # one write in flight: the hook knows its step
    self._in_flight = step
    items = {_STATE: ocp.args.StandardSave(train_state),
             _DATA: ocp.args.JsonSave(dict(data_state or {}))}
    if self.config is not None:
      items[_CONFIG] = ocp.args.JsonSave(self.config)
    started = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    if started:
      self._saved.add(step)
    if not self.async_save:
      self._manager.wait_until_finished()
    return started

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

  def _pick(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: "
                            f"{self.all_steps()}")
    return step

  def _verify(self, step: int) -> None:
    if self.verify:
      verify_checksums(pathlib.Path(self._step_path(step)))

  def _saved_tree(self, step: int) -> dict:
    try:
      saved = self._manager.item_metadata(step)[_STATE]
      return ocp.tree.to_flat_dict(saved.tree, sep="/")
    except Exception as e:  # orbax raises many types for unreadable metadata
      raise _IntegrityError(f"checkpoint {self._step_path(step)} is corrupt or unreadable "
                            f"(metadata): {_brief(e)}") from e

  def _check_compatible(self, step: int, template, prefix: str = "") -> None:
    path = self._step_path(step)
    saved = {k[len(prefix):]: v for k, v in self._saved_tree(step).items()
             if k.startswith(prefix)}
    wanted = ocp.tree.to_flat_dict(template, sep="/")
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    if missing or extra:
      what = f"the {prefix[:-1]} of " if prefix else ""
      raise CheckpointError(
          f"checkpoint {path} does not match {what}the train state: fields missing from the "
          f"checkpoint {missing[:8]}{' ...' if len(missing) > 8 else ''}, fields not in the "
          f"train state {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    for name, want in wanted.items():
      have = saved[name]
      want_shape, have_shape = tuple(np.shape(want)), tuple(getattr(have, "shape", ()) or ())
      if want_shape != have_shape:
        raise CheckpointError(f"checkpoint {path}: {prefix}{name} has shape {have_shape} but "
                              f"the train state expects {want_shape}")
      have_dtype = getattr(have, "dtype", None)
      if have_dtype is not None and np.dtype(have_dtype) != np.dtype(want.dtype):
        raise CheckpointError(f"checkpoint {path}: {prefix}{name} has dtype "
                              f"{np.dtype(have_dtype)} but the train state expects "
                              f"{np.dtype(want.dtype)}")

  def _check_config(self, step: int) -> None:
    self.config_differences = []
    config_dir = pathlib.Path(self._step_path(step)) / _CONFIG
    if self.config is None or not config_dir.is_dir():
      return
    try:
      saved = self._manager.restore(step, args=ocp.args.Composite(
          **{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]
    except Exception as e:  # a damaged JSON item
      raise _IntegrityError(f"checkpoint {self._step_path(step)}: unreadable config: "
                            f"{_brief(e)}") from e
    diff = config_differences(saved, self.config)
    if not diff:
      return
    listing = "\n  ".join(diff)
    if self.config_mismatch == "raise":
      raise CheckpointError(
          f"checkpoint {self._step_path(step)} was saved with another config (saved -> "
          f"now):\n  {listing}\n(Checkpointer(config_mismatch='warn') restores anyway)")
    self.config_differences = diff
    warnings.warn(f"checkpoint {self._step_path(step)} was saved with another config (saved "
                  f"-> now):\n  {listing}", RuntimeWarning, stacklevel=3)

  def restore(self, template, *, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores a checkpoint into the structure, shapes, dtypes and shardings of ``template``.

    Args:
      template: a train state (or its ``jax.ShapeDtypeStruct`` tree, with
        shardings) of the run being resumed; the restored arrays get its shardings.
      step: which checkpoint; default the latest.

    Returns:
      ``(train_state, data_state)``; the host step counter continues from ``step``.

    Raises:
      CheckpointError: no checkpoint exists, a file fails its checksum, it is
        corrupt, incompatible with ``template``, or saved under another config (with
        ``config_mismatch="raise"``) -- naming the path and the mismatch.
    """
    step = self._pick(step)
    self._verify(step)
    abstract = _abstract(template)
    self._check_compatible(step, abstract)
    self._check_config(step)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardRestore(abstract), _DATA: ocp.args.JsonRestore()}))
    except Exception as e:  # corrupt files surface as many different error types
      raise _IntegrityError(f"checkpoint {self._step_path(step)} is corrupt or unreadable: "
                            f"{_brief(e)}") from e
    state = out[_STATE]
    if jax.tree.structure(state) != jax.tree.structure(abstract):
      raise CheckpointError(f"checkpoint {self._step_path(step)} restored into a different tree "
                            "structure than the train state")
    self._next_step = step + 1
    return state, dict(out[_DATA] or {})

  def restore_or(self, template, data_state: Mapping[str, Any] | None = None
                 ) -> tuple[Any, dict[str, Any]]:
    """:meth:`restore` the newest intact checkpoint, or ``(template, data_state)`` if none exists.

    A checkpoint that fails its checksums or cannot be read is skipped with a
    ``RuntimeWarning`` for the next older one. When checkpoints exist but none is
    intact, or one does not fit ``template`` or the config, :class:`CheckpointError`
    is raised: a run is never silently restarted from scratch.
    """
    steps = self.all_steps()
    if not steps:
      self._next_step = None
      return template, dict(data_state or {})
    damaged = []
    for step in reversed(steps):
      try:
        return self.restore(template, step=step)
      except _IntegrityError as e:
        damaged.append(str(e))
        warnings.warn(f"skipping damaged checkpoint: {e}", RuntimeWarning, stacklevel=2)
    raise CheckpointError(f"no intact checkpoint in {self.directory}:\n  " + "\n  ".join(damaged))

  def restore_params(self, params_template, *, step: int | None = None) -> Any:
    """Restores only ``train_state.params`` (to start a student from a teacher or an SFT run).

    The optimizer state, SAD state and data position are not read; checksums are
    verified as for :meth:`restore`; the config is not compared.

    Args:
      params_template: a params pytree (arrays or ``jax.ShapeDtypeStruct`` with
        shardings) of the checkpoint's structure, shapes and dtypes.
      step: which checkpoint; default the latest.

    Returns:
      The params, with the template's shardings.
    """
    step = self._pick(step)
    self._verify(step)
    abstract = {"params": _abstract(params_template)}
    self._check_compatible(step, abstract["params"], prefix="params/")
    path = pathlib.Path(self._step_path(step)) / _STATE
    try:
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        out = reader.restore(path, args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True))
    except Exception as e:  # corrupt files surface as many different error types
      raise _IntegrityError(f"checkpoint {self._step_path(step)} is corrupt or unreadable: "
                            f"{_brief(e)}") from e
    return out["params"]


__all__ = ["Checkpointer", "CheckpointError", "config_differences", "write_checksums",
           "verify_checksums", "CHECKSUMS"]
