"""Character-level segmentation results: :class:`Span`, :class:`Segmented`, errors.

A segmenter turns a trajectory into one string (``text``) and a tuple of
non-overlapping, sorted character ranges (``spans``), each typed with a
:class:`~sad_jax.objective._spans.SpanType`. Characters that no span covers count as
``OTHER``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from sad_jax.objective._spans import SpanType


class TrajectoryError(ValueError):
  """Malformed trajectory input.

  Attributes:
    reason: one-line description of what is wrong.
    position: character offset in the (rendered) text where the problem is.
  """

  def __init__(self, reason: str, position: int, text: str | None = None):
    self.reason = reason
    self.position = int(position)
    context = ""
    if text is not None:
      snippet = text[self.position:self.position + 30]
      context = f" near {snippet!r}" if snippet else ""
    super().__init__(f"{reason} (char {self.position}{context})")


class Span(NamedTuple):
  """A typed character range ``text[start:end]`` (``end`` exclusive)."""
  start: int
  end: int
  type: SpanType


@dataclasses.dataclass(frozen=True)
class Segmented:
  """A trajectory rendered to text, with typed character spans.

  Attributes:
    text: the rendered string (what the tokenizer sees).
    spans: sorted, non-overlapping, non-empty :class:`Span` s inside ``text``.
      Characters outside every span are ``OTHER``.
    format: the format that produced it (``"react"``, ``"chat"``, ...); with
      ``format="auto"`` this says which one was detected.
    warnings: what ``strict=False`` recovered from (empty when input was clean).
  """
  text: str
  spans: tuple[Span, ...]
  format: str = "custom"
  warnings: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.text, str):
      raise TypeError(f"text must be a str, got {type(self.text).__name__}")
    spans = tuple(Span(int(s), int(e), SpanType(t)) for s, e, t in self.spans)
    prev_end = 0
    for i, (start, end, typ) in enumerate(spans):
      if typ == SpanType.PAD:
        raise ValueError(f"spans[{i}] has type PAD, which is for padding tokens only")
      if not prev_end <= start < end <= len(self.text):
        raise ValueError(
            f"spans[{i}] = ({start}, {end}) must be non-empty, sorted, non-overlapping "
            f"and inside the text of length {len(self.text)} (previous span ends at {prev_end})")
      prev_end = end
    object.__setattr__(self, "spans", spans)
    object.__setattr__(self, "warnings", tuple(self.warnings))

  def char_types(self) -> np.ndarray:
    """Per-character span types: ``[len(text)]`` int8, ``OTHER`` where unlabelled."""
    out = np.full(len(self.text), int(SpanType.OTHER), np.int8)
    for start, end, typ in self.spans:
      out[start:end] = int(typ)
    return out

  def pieces(self) -> list[Span]:
    """All of ``text`` as consecutive spans, with the unlabelled gaps as ``OTHER``."""
    out, pos = [], 0
    for span in self.spans:
      if span.start > pos:
        out.append(Span(pos, span.start, SpanType.OTHER))
      out.append(span)
      pos = span.end
    if pos < len(self.text):
      out.append(Span(pos, len(self.text), SpanType.OTHER))
    return out

  @property
  def coverage(self) -> dict[str, int]:
    """Characters of each span type, ``{"prompt": n, "reasoning": n, ..., "other": n}``.

    ``other`` counts the unlabelled characters; the values sum to ``len(text)``.
    """
    out = {t.name.lower(): 0 for t in SpanType if t != SpanType.PAD}
    for start, end, typ in self.pieces():
      out[typ.name.lower()] += end - start
    return out

  def issues(self, max_other: float = 0.9) -> list[str]:
    """Why this segmentation should not be trusted as is (empty when it looks right).

    Reasons: no agent span (no ``REASONING`` or ``ACTION`` character: nothing
    would be trained); more than ``max_other`` of the non-whitespace characters
    unlabelled (``OTHER``): the format was probably not understood.
    """
    reasons = []
    if not any(t in (SpanType.REASONING, SpanType.ACTION) for _, _, t in self.spans):
      reasons.append("no agent span (no reasoning or action characters)")
    solid = len("".join(self.text.split()))
    if solid:
      other = sum(len("".join(self.text[s:e].split())) for s, e, t in self.pieces()
                  if t == SpanType.OTHER) / solid
      if other > max_other:
        reasons.append(f"{other:.0%} of the non-space characters are OTHER (> {max_other:.0%})")
    return reasons

  def texts(self, span_type) -> list[str]:
    """The substrings of all spans of ``span_type`` (``OTHER`` includes the gaps)."""
    span_type = SpanType(span_type)
    return [self.text[s:e] for s, e, t in self.pieces() if t == span_type]


class Recovery:
  """Raises :class:`TrajectoryError` when strict, otherwise records a warning."""

  def __init__(self, text: str, strict: bool):
    self.text = text
    self.strict = strict
    self.warnings: list[str] = []

  def fail(self, reason: str, position: int) -> None:
    error = TrajectoryError(reason, position, self.text)
    if self.strict:
      raise error
    self.warnings.append(str(error))
