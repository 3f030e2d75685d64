"""Terminal rendering of segmented trajectories: coloured spans and per-token views."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Segmented

COLORS = {
    SpanType.PAD: "\033[2m", SpanType.PROMPT: "\033[34m", SpanType.REASONING: "\033[33m",
    SpanType.ACTION: "\033[32m", SpanType.OBSERVATION: "\033[36m", SpanType.OTHER: "\033[2m",
}
RESET = "\033[0m"
LETTERS = {SpanType.PAD: "_", SpanType.PROMPT: "P", SpanType.REASONING: "R",
           SpanType.ACTION: "A", SpanType.OBSERVATION: "O", SpanType.OTHER: "x"}
_VISIBLE = str.maketrans({" ": "·", "\n": "↵", "\t": "→", "\r": "␍"})


def paint(text: str, span_type: SpanType, color: bool) -> str:
  """``text`` in the colour of ``span_type`` (each line coloured, so pagers keep it)."""
  if not color or not text:
    return text
  return "\n".join(COLORS[span_type] + line + RESET if line else line for line in text.split("\n"))


def legend(color: bool) -> str:
  types = [t for t in SpanType if t != SpanType.PAD]
  if color:
    return "legend: " + " ".join(paint(t.name, t, True) for t in types)
  return "legend: " + " ".join(f"⟨{LETTERS[t]}|…⟩ {t.name}" for t in types)


def render_spans(seg: Segmented, color: bool) -> str:
  """The whole text, each span coloured (or wrapped in ``⟨T|...⟩`` without colour).

  Without colour, a piece's trailing newlines go after its closing ``⟩`` and
  whitespace-only pieces are printed bare.
  """
  out = []
  for start, end, typ in seg.pieces():
    piece = seg.text[start:end]
    core = piece.rstrip("\n")
    if color:
      out.append(paint(piece, typ, True))
    elif core.strip():
      out.append(f"⟨{LETTERS[typ]}|{core}⟩{piece[len(core):]}")
    else:
      out.append(piece)
  return "".join(out)


def render_tokens(text: str, offsets: np.ndarray, span_ids: Sequence[int], color: bool) -> str:
  """One line per run of same-type tokens: ``TYPE  tok│tok│...`` (whitespace made visible)."""
  lines, run, run_type = [], [], None
  for (start, end), typ in zip(np.asarray(offsets).tolist(), span_ids):
    typ = SpanType(int(typ))
    if typ != run_type and run:
      lines.append((run_type, run))
      run = []
    run_type = typ
    run.append(text[start:end].translate(_VISIBLE) or "∅")
  if run:
    lines.append((run_type, run))
  sep = paint("│", SpanType.OTHER, color) if color else "│"
  return "\n".join(f"{typ.name:<11} " + sep.join(paint(t, typ, color) for t in toks)
                   for typ, toks in lines)
