"""Streaming JSONL reader: one trajectory per line, malformed lines counted, not fatal."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from sad_jax.data.trajectories.segment import FORMATS, segment
from sad_jax.data.trajectories.segmented import Segmented, TrajectoryError


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

  Attributes:
    lines: non-blank lines read.
    ok: lines that gave a trajectory.
    malformed: lines skipped (bad JSON or UTF-8, missing trajectory, unknown
      format, :class:`TrajectoryError`).
    errors: ``(line, reason)`` of the first ``max_errors`` malformed lines.
    max_errors: how many errors to keep.
  """
  lines: int = 0
  ok: int = 0
  malformed: int = 0
  errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  max_errors: int = 20

  def add_error(self, line: int, reason: str) -> None:
    self.malformed += 1
    if len(self.errors) < self.max_errors:
      self.errors.append((line, reason))

  def __str__(self) -> str:
    head = f"{self.lines} lines: {self.ok} ok, {self.malformed} malformed"
    more = self.malformed - len(self.errors)
    tail = [f"  line {n}: {reason}" for n, reason in self.errors]
    if more > 0:
      tail.append(f"  ... and {more} more")
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


def _trajectory(data: dict, fmt: str | None) -> tuple[Any, str]:
  if not isinstance(data, dict):
    raise TrajectoryError(f"line is a JSON {type(data).__name__}, expected an object", 0)
  fmt = fmt or data.get("format") or "auto"
  if fmt not in FORMATS:
    raise TrajectoryError(f"unknown format {fmt!r} (expected one of {FORMATS})", 0)
  if "trajectory" in data:
    return data["trajectory"], fmt
  if "messages" in data:
    return {"messages": data["messages"], "tools": data.get("tools")}, fmt
  raise TrajectoryError('record has neither "trajectory" nor "messages"', 0)


def read_jsonl(source, *, format: str | None = None, strict: bool = True,  # pylint: disable=redefined-builtin
               report: ReadReport | None = None, **segment_kwargs) -> Iterator[Record]:
  """Streams trajectories from a JSONL file, skipping and counting malformed lines.

  Each line is an object with ``"trajectory"`` (text, or a message list) or
  ``"messages"`` (plus optional ``"tools"``), an optional ``"format"`` and an
  optional ``"id"``/``"name"``. Lines are read one at a time (``.gz`` files
  too), so memory does not grow with the file.

  Args:
    source: path to a ``.jsonl`` / ``.jsonl.gz`` file, or an iterable of lines.
    format: overrides every record's ``"format"`` (default: the record's, else
      ``"auto"``).
    strict: passed to :func:`~sad_jax.data.trajectories.segment`; with True a
      malformed trajectory is a skipped line, with False it is recovered.
    report: a :class:`ReadReport` to fill in (counts and first errors).
    **segment_kwargs: more arguments for ``segment`` (e.g. ``chat_template``).

  Yields:
    :class:`Record` per good line.
  """
  if format is not None and format not in FORMATS:
    raise ValueError(f"format must be None or one of {FORMATS}, got {format!r}")
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
    report.ok += 1
    rid = data.get("id", data.get("name"))
    yield Record(str(rid) if rid is not None else f"line {n}", n, seg, data)
