"""ALFWorld text: ``> cmd`` lines are the agent's, everything else the environment's.

``> think: ...`` lines are reasoning, other ``> cmd`` lines are actions, the
lines the environment prints after the first command are observations, and the
text before the first command (room description and ``Your task is to: ...``)
is the prompt. Each line keeps its trailing newline.

Malformed (``TrajectoryError`` when strict): no ``>`` command line (recovery:
the whole text is the prompt), an empty command or thought (recovery: kept
with its line's type).
"""
from __future__ import annotations

import re

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Recovery, Segmented, SpanBuilder, lines

COMMAND = re.compile(r">[ \t]?")
_THINK = re.compile(r"[ \t]*think[ \t]*:")


def segment_alfworld(text: str, strict: bool = True) -> Segmented:
  """Segments ALFWorld text; see the module docstring for the rules."""
  rec = Recovery(text, strict)
  builder = SpanBuilder()
  seen_command = False
  for start, end, line in lines(text):
    m = COMMAND.match(line)
    if m:
      seen_command = True
      think = _THINK.match(line, m.end())
      body = line[think.end() if think else m.end():]
      if not body.strip():
        rec.fail("empty thought" if think else "empty command", start)
      builder.add(start, end, SpanType.REASONING if think else SpanType.ACTION)
    else:
      builder.add(start, end, SpanType.OBSERVATION if seen_command else SpanType.PROMPT)
  if not seen_command:
    rec.fail("no '> command' line found in ALFWorld text", 0)
    builder = SpanBuilder()
    builder.add(0, len(text), SpanType.PROMPT)
  return builder.build(text, "alfworld", rec.warnings)
