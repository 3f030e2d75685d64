"""Fixed-length batches and packed rows, with next-token labels aligned to span ids.

The shift, once: position ``t`` of a row feeds ``tokens[t]`` to the model, whose
logits at ``t`` predict ``labels[t] = tokens[t + 1]`` (the next token of the same
trajectory). ``span_ids[t]`` is the span type of that *predicted* token, so a
loss over logits ``[B, T, V]`` weights position ``t`` by what it learns to emit.
The last token of each trajectory has no label: ``labels = pad_id`` and
``span_ids = PAD`` there, as on padding. When a trajectory is cut on the right,
its last kept position still gets the label of the first dropped token.

Example (``A`` = action, ``R`` = reasoning)::

  tokens          t0  t1  t2  t3
  input_span_ids  R   R   A   A
  labels          t1  t2  t3  pad
  span_ids        R   A   A   PAD
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sad_jax.objective._spans import SpanType

_TRUNCATE = ("right", "left")


class Batch(NamedTuple):
  """A host-side batch (a pytree of numpy arrays; ``jax.device_put`` takes it whole).

  Attributes:
    tokens: ``[B, T]`` int32 input ids, ``pad_id`` on padding.
    labels: ``[B, T]`` int32 next-token targets, ``pad_id`` where there is none.
    span_ids: ``[B, T]`` int32 span type of ``labels`` (``PAD`` where no label):
      the span ids a loss over the logits uses.
    input_span_ids: ``[B, T]`` int32 span type of ``tokens`` (``PAD`` on padding).
    segment_ids: ``[B, T]`` int32, ``1, 2, ...`` per trajectory in a row, 0 on padding.
    positions: ``[B, T]`` int32 position of each token inside its trajectory.
    truncated: ``[B]`` int32 number of tokens cut from the trajectories of each row.
  """
  tokens: np.ndarray
  labels: np.ndarray
  span_ids: np.ndarray
  input_span_ids: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  truncated: np.ndarray


def next_token_targets(tokens: np.ndarray, span_ids: np.ndarray, segment_ids: np.ndarray,
                       *, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Shifts ``tokens``/``span_ids`` ``[..., T]`` left within each segment.

  Returns:
    ``(labels, label_span_ids)``, both ``[..., T]`` int32: ``labels[..., t] =
    tokens[..., t + 1]`` and ``label_span_ids[..., t] = span_ids[..., t + 1]`` where
    ``t + 1`` is in the same non-zero segment, else ``pad_id`` / ``PAD``.
  """
  tokens, span_ids, segment_ids = map(np.asarray, (tokens, span_ids, segment_ids))
  if not tokens.shape == span_ids.shape == segment_ids.shape:
    raise ValueError(f"tokens {tokens.shape}, span_ids {span_ids.shape} and segment_ids "
                     f"{segment_ids.shape} must have the same shape")
  same = np.zeros(tokens.shape, bool)
  same[..., :-1] = (segment_ids[..., 1:] == segment_ids[..., :-1]) & (segment_ids[..., :-1] != 0)
  labels = np.full(tokens.shape, pad_id, np.int32)
  label_spans = np.full(tokens.shape, int(SpanType.PAD), np.int32)
  labels[..., :-1] = np.where(same[..., :-1], tokens[..., 1:], pad_id)
  label_spans[..., :-1] = np.where(same[..., :-1], span_ids[..., 1:], int(SpanType.PAD))
  return labels, label_spans


def _examples(examples, seq_len: int, truncate: str):
  """Per example: (tokens, labels, span_ids, label_span_ids, dropped), cut to seq_len."""
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
  if truncate not in _TRUNCATE:
    raise ValueError(f"truncate must be one of {_TRUNCATE}, got {truncate!r}")
  if len(examples) == 0:
    raise ValueError("examples is empty: need at least one (ids, span_ids) trajectory")
  out = []
  for i, ex in enumerate(examples):
    if not (isinstance(ex, tuple) and len(ex) >= 2):
      raise TypeError(f"examples[{i}] must be a Tokenized or an (ids, span_ids) pair, "
                      f"got {type(ex).__name__}")
    ids = np.asarray(ex[0]).reshape(-1)
    spans = np.asarray(ex[1]).reshape(-1)
    if ids.shape != spans.shape:
      raise ValueError(f"examples[{i}] has {ids.size} ids but {spans.size} span ids")
    n = ids.size
    labels = np.append(ids[1:], 0)
    label_spans = np.append(spans[1:], int(SpanType.PAD))
    keep = slice(0, seq_len) if truncate == "right" else slice(max(0, n - seq_len), n)
    out.append((ids[keep], labels[keep], spans[keep], label_spans[keep], max(0, n - seq_len)))
  return out


def _assemble(rows, seq_len: int, pad_id: int) -> Batch:
  b = len(rows)
  tokens = np.full((b, seq_len), pad_id, np.int32)
  labels = np.full((b, seq_len), pad_id, np.int32)
  span_ids = np.zeros((b, seq_len), np.int32)
  input_span_ids = np.zeros((b, seq_len), np.int32)
  segment_ids = np.zeros((b, seq_len), np.int32)
  positions = np.zeros((b, seq_len), np.int32)
  truncated = np.zeros((b,), np.int32)
  for r, row in enumerate(rows):
    pos = 0
    for seg, (ids, lab, spans, lab_spans, dropped) in enumerate(row, start=1):
      n = ids.size
      at = slice(pos, pos + n)
      tokens[r, at], input_span_ids[r, at], span_ids[r, at] = ids, spans, lab_spans
      labels[r, at] = np.where(lab_spans == int(SpanType.PAD), pad_id, lab)
      segment_ids[r, at] = seg
      positions[r, at] = np.arange(n)
      truncated[r] += dropped
      pos += n
  return Batch(tokens, labels, span_ids, input_span_ids, segment_ids, positions, truncated)


def batch(examples: Sequence, seq_len: int, *, pad_id: int = 0, truncate: str = "right") -> Batch:
  """One trajectory per row, padded (or cut) to ``seq_len``.

  Args:
    examples: ``N`` :class:`~sad_jax.data.trajectories.Tokenized` (or ``(ids, span_ids)``
      pairs of ``[T_i]`` arrays).
    seq_len: row length ``T``.
    pad_id: token id used for padding and for missing labels.
    truncate: ``"right"`` keeps the first ``seq_len`` tokens of a longer
      trajectory, ``"left"`` the last ones. ``Batch.truncated`` reports how many
      tokens each row lost.

  Returns:
    :class:`Batch` with ``B = N`` rows of length ``T = seq_len``.
  """
  return _assemble([[ex] for ex in _examples(examples, seq_len, truncate)], seq_len, pad_id)


def pack_layout(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
  """Which examples :func:`pack` puts in which row (first fit, in order).

  Args:
    lengths: ``N`` example lengths (longer than ``seq_len`` counts as ``seq_len``:
      such an example is cut and fills a row of its own).
    seq_len: row length ``T``.

  Returns:
    One list per row of the indices of its examples, in segment order: example
    ``layout[r][s - 1]`` is segment ``s`` of row ``r``.
  """
  rows, free = [], []
  for i, n in enumerate(lengths):
    n = min(int(n), seq_len)
    r = next((j for j, f in enumerate(free) if f >= n), None)
    if r is None:
      rows.append([])
      free.append(seq_len)
      r = len(rows) - 1
    rows[r].append(i)
    free[r] -= n
  return rows


def pack(examples: Sequence, seq_len: int, *, pad_id: int = 0, truncate: str = "right",
         num_rows: int | None = None) -> Batch:
  """Packs several trajectories per row (first fit, in order), with segment ids.

  Attention must stay inside a segment (``segment_ids``) and positions restart
  at 0 for each trajectory (``positions``); labels never cross segments.

  Args:
    examples: as in :func:`batch`.
    seq_len: row length ``T``; longer trajectories are cut as in :func:`batch`
      and fill a row of their own.
    pad_id: token id used for padding and for missing labels.
    truncate: ``"right"`` or ``"left"``, as in :func:`batch`.
    num_rows: if given, the batch has exactly this many rows (empty rows are all
      padding); a ValueError if the examples need more.

  Returns:
    :class:`Batch` of shape ``[B, seq_len]``.
  """
  cut = _examples(examples, seq_len, truncate)
  rows = [[cut[i] for i in row] for row in pack_layout([ex[0].size for ex in cut], seq_len)]
  if num_rows is not None:
    if len(rows) > num_rows:
      raise ValueError(f"pack needs {len(rows)} rows of seq_len={seq_len} for these "
                       f"{len(examples)} examples, but num_rows={num_rows}")
    rows += [[] for _ in range(num_rows - len(rows))]
  return _assemble(rows, seq_len, pad_id)
