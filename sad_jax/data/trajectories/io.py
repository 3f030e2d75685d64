"""Streaming JSONL reader: one trajectory per line, malformed lines counted, not fatal."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from sad_jax.data.trajectories.schemas import detect_schema
from sad_jax.data.trajectories.segment import FORMATS, segment
from sad_jax.data.trajectories.segmented import Segmented, TrajectoryError
from sad_jax.data.trajectories.spec import load_spec


class Record(NamedTuple):
  """One trajectory read from a JSONL file.

  Attributes:
    id: the record's ``"id"`` (or ``"name"``), else ``"line <n>"``.
    line: 1-based line number in the file.
    segmented: the segmented trajectory (``segmented.format`` says which format).
    data: the whole JSON object of the line (extra fields such as ``expect``).
  """
  id: str
  line: int
  segmented: Segmented
  data: dict


@dataclasses.dataclass
class ReadReport:
  """What :func:`read_jsonl` saw; filled in while iterating.

  Every non-blank line lands in exactly one count: ``lines == ok + recovered +
  flagged + malformed``.

  Attributes:
    lines: non-blank lines read.
    ok: trajectories segmented cleanly, with agent spans and a plausible mix.
    recovered: ``strict=False`` only: malformed trajectories repaired as their
      format documents (``Segmented.warnings`` says how); yielded.
    flagged: ``strict=False`` only: trajectories yielded although they should
      not be trusted (:meth:`Segmented.issues`: no agent span, or more than
      ``max_other`` of the text unlabelled); with ``strict=True`` these are
      malformed instead.
    malformed: lines skipped (bad JSON or UTF-8, missing trajectory, unknown
      format, :class:`TrajectoryError`, and with ``strict=True`` the issues above).
    errors: ``(line, reason)`` of the first ``max_errors`` malformed lines.
    flags: ``(line, id, reasons)`` of the first ``max_errors`` flagged records.
    max_errors: how many errors and flags to keep.
  """
  lines: int = 0
  ok: int = 0
  recovered: int = 0
  flagged: int = 0
  malformed: int = 0
  errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  flags: list[tuple[int, str, tuple[str, ...]]] = dataclasses.field(default_factory=list)
  max_errors: int = 20

  def add_error(self, line: int, reason: str) -> None:
    self.malformed += 1
    if len(self.errors) < self.max_errors:
      self.errors.append((line, reason))

  def add_flag(self, line: int, rid: str, reasons) -> None:
    self.flagged += 1
    if len(self.flags) < self.max_errors:
      self.flags.append((line, rid, tuple(reasons)))

  def __str__(self) -> str:
    head = (f"{self.lines} lines: {self.ok} ok, {self.recovered} recovered, {self.flagged} flagged, "
            f"{self.malformed} malformed")
    tail = [f"  line {n}: {reason}" for n, reason in self.errors]
    if self.malformed > len(self.errors):
      tail.append(f"  ... and {self.malformed - len(self.errors)} more malformed")
    tail += [f"  line {n} ({rid}) flagged: {'; '.join(reasons)}" for n, rid, reasons in self.flags]
    if self.flagged > len(self.flags):
      tail.append(f"  ... and {self.flagged - len(self.flags)} more flagged")
    return "\n".join([head] + tail)


def _lines(source) -> Iterator[bytes | str]:
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      yield from f
  elif isinstance(source, Iterable):
    yield from source
  else:
    raise TypeError(f"source must be a path or an iterable of lines, got {type(source).__name__}")


_PAYLOAD_KEYS = ("trajectory", "messages", "conversations", "history")


def _trajectory(data: dict, fmt) -> tuple[Any, Any]:
  if not isinstance(data, dict):
    raise TrajectoryError(f"line is a JSON {type(data).__name__}, expected an object", 0)
  if fmt is None and not isinstance(data.get("format", ""), str):
    raise TrajectoryError(f"the record's format must be a string, got {type(data['format']).__name__}", 0)
  fmt = fmt or data.get("format") or "auto"
  if isinstance(fmt, str) and fmt not in FORMATS:
    raise TrajectoryError(f"unknown format {fmt!r} (expected one of {FORMATS})", 0)
  key = next((k for k in _PAYLOAD_KEYS if k in data), None)
  if key is None:
    if detect_schema(data) in ("alpaca", "xlam", "dspy"):
      return data, fmt  # the record is the sample
    raise TrajectoryError(f"record has none of the keys {_PAYLOAD_KEYS} and is no known sample schema", 0)
  trajectory = data[key]
  if key == "trajectory" and isinstance(trajectory, list) and "tools" in data:
    trajectory = {"messages": trajectory, "tools": data["tools"]}
  elif key != "trajectory":
    # The record is the trajectory: its "tools" / "system" travel with the messages.
    trajectory = {k: v for k, v in data.items() if k in (key, "tools", "system")}
  return trajectory, fmt


def read_jsonl(source, *, format: Any = None, strict: bool = True,  # pylint: disable=redefined-builtin
               report: ReadReport | None = None, max_other: float = 0.9,
               **segment_kwargs) -> Iterator[Record]:
  """Streams trajectories from a JSONL file, skipping and counting malformed lines.

  Each line is an object with ``"trajectory"`` (text, or messages in any
  schema), or ``"messages"`` / ``"conversations"`` / ``"history"`` (the record
  itself is then the trajectory, with its ``"tools"`` and ``"system"``), an
  optional ``"tools"`` (passed on to the chat rendering, which writes them into
  the system prompt), an optional ``"format"`` and an optional ``"id"``/``"name"``.
  Lines are read one at a time (``.gz`` files too), so memory does not grow
  with the file.

  Nothing is counted ``ok`` that should not be trusted: a record with no agent
  span, or with more than ``max_other`` of its non-space characters ``OTHER``,
  is malformed with ``strict=True`` and flagged (yielded, counted apart, with
  its reasons) with ``strict=False``; see :class:`ReadReport`.

  Args:
    source: path to a ``.jsonl`` / ``.jsonl.gz`` file, or an iterable of lines.
    format: overrides every record's ``"format"`` (default: the record's, else
      ``"auto"``); a name or a format spec (see :func:`~sad_jax.data.trajectories.segment`).
    strict: passed to :func:`~sad_jax.data.trajectories.segment`; with True a
      malformed or unlabelable trajectory is a skipped line, with False it is
      recovered or flagged.
    report: a :class:`ReadReport` to fill in (counts, first errors and flags).
    max_other: the largest fraction of ``OTHER`` characters still counted ok.
    **segment_kwargs: more arguments for ``segment`` (e.g. ``chat_template``).

  Yields:
    :class:`Record` per good, recovered or flagged line.
  """
  if isinstance(format, str) and format not in FORMATS:
    raise ValueError(f"format must be None, a format spec or one of {FORMATS}, got {format!r}")
  if format is not None and not isinstance(format, str):
    format = load_spec(format)
  if not 0.0 <= max_other <= 1.0:
    raise ValueError(f"max_other must be in [0, 1], got {max_other}")
  report = ReadReport() if report is None else report
  for n, raw in enumerate(_lines(source), start=1):
    try:
      line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
      report.lines += 1
      report.add_error(n, f"invalid UTF-8 at byte {e.start}")
      continue
    if not line.strip():
      continue
    report.lines += 1
    try:
      data = json.loads(line)
      trajectory, fmt = _trajectory(data, format)
      seg = segment(trajectory, format=fmt, strict=strict, **segment_kwargs)
    except json.JSONDecodeError as e:
      report.add_error(n, f"invalid JSON: {e.msg} at char {e.pos}")
      continue
    except RecursionError:
      report.add_error(n, "JSON nested too deeply")
      continue
    except TrajectoryError as e:
      report.add_error(n, str(e))
      continue
    rid = data.get("id", data.get("name"))
    rid = str(rid) if rid is not None else f"line {n}"
    issues = seg.issues(max_other)
    if issues and strict:
      report.add_error(n, f"format {seg.format}: " + "; ".join(issues))
      continue
    if issues:
      report.add_flag(n, rid, issues)
    elif seg.warnings:
      report.recovered += 1
    else:
      report.ok += 1
    yield Record(rid, n, seg, data)
