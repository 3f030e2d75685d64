"""The workdir of the agent distillation example: its layout, atomic files, locks.

Layout (every file is written atomically, by one process)::

  WORKDIR/config.json              the study's config (all but the run selection)
  WORKDIR/tokenizer.json           the byte-level BPE
  WORKDIR/teacher/                 ckpt/, metrics.jsonl, result.json
  WORKDIR/distill_data.jsonl       the teacher's rollouts on training tasks
  WORKDIR/students/METHOD-seedS/   ckpt/, metrics.jsonl, result.json (one run;
                                   an on-policy run adds pools/pool-RRRRR.npz)
  WORKDIR/on_policy_init/METHOD-seedS/  ckpt/, metrics.jsonl: the off-policy start
                                   of a seed's on-policy runs
  WORKDIR/summary.{json,md}, *.png the report: the union of the runs that exist
  WORKDIR/.*.lock, students/*.lock  the (empty) lock files of the phases and runs

Several processes may share a workdir (e.g. one per method): the shared phases
(tokenizer, teacher, teacher rollouts) and each run are done under a file lock
(:func:`locked`), so a phase is computed once and the others wait for it and
read its result; every run's result is its own file, and the report is rebuilt
from whatever results exist.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

from flax import traverse_util

# Fields that select runs (which methods and seeds to do) and never change results.
RUN_SELECTION = ("methods", "seeds")


def write_atomic(path: pathlib.Path, content: str | bytes) -> None:
  """Writes ``content`` to ``path`` via a temporary file and a rename (never half-written).

  The temporary name holds the process id, so two processes writing the same
  path at once never share a temporary file; the last rename wins whole.
  """
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
  if isinstance(content, bytes):
    tmp.write_bytes(content)
  else:
    tmp.write_text(content)
  os.replace(tmp, path)


def write_json(path: pathlib.Path, obj: Any) -> None:
  """``obj`` as indented, key-sorted JSON, atomically."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The JSON objects of a JSON-lines file, one per non-empty line (``[]`` if absent)."""
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def csv_list(value, cast=str) -> list:
  """``"a,b"`` (or a tuple / list / single value) -> ``[a, b]``."""
  if isinstance(value, str):
    return [cast(v.strip()) for v in value.split(",") if v.strip()]
  if isinstance(value, (list, tuple)):
    return [cast(v) for v in value]
  return [cast(value)]


@contextlib.contextmanager
def locked(path: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive ``flock`` on ``path`` (created if absent) for the block.

  Another process entering ``locked`` on the same path waits until the block
  ends (or its process dies: the kernel releases the lock).
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_locked(path: pathlib.Path) -> Iterator[bool]:
  """Like :func:`locked` without waiting: yields True holding the lock, False when
  another process holds it (then nothing is locked)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def study_config(cfg) -> dict:
  """The config as a flat ``{"a.b": value}`` dict, without :data:`RUN_SELECTION`."""
  flat = traverse_util.flatten_dict(json.loads(cfg.to_json_best_effort()), sep=".")
  return {k: v for k, v in flat.items() if k not in RUN_SELECTION}


def claim_workdir(cfg, workdir: pathlib.Path) -> None:
  """Stores the config in ``config.json``, or refuses a workdir made by another config.

  A workdir's tokenizer, teacher, teacher trajectories and finished runs are
  reused by later invocations (and shared by concurrent ones), so every field
  but ``methods`` and ``seeds`` (which only select the runs to do) must equal
  the stored one; otherwise results of two configs would be silently mixed.

  Raises:
    ValueError: listing every changed field as ``name: old -> new``.
  """
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / "config.json"
  new = study_config(cfg)
  with locked(workdir / ".config.lock"):
    if not path.exists():
      write_json(path, traverse_util.unflatten_dict(new, sep="."))
      return
    old = {k: v for k, v in traverse_util.flatten_dict(json.loads(path.read_text()),
                                                       sep=".").items()
           if k not in RUN_SELECTION}
  changed = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  if changed:
    raise ValueError(f"--workdir={workdir} holds results of another config ({'; '.join(changed)}); "
                     "use a new --workdir, or the config stored in its config.json")


def run_dir(workdir: pathlib.Path, method: str, seed: int) -> pathlib.Path:
  """The directory of one student run."""
  return workdir / "students" / f"{method}-seed{seed}"
