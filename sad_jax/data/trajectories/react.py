"""ReAct text: ``Question:`` / ``Thought n:`` / ``Action n:`` / ``Observation n:`` lines.

Covers the HotpotQA / FEVER layout (numbered markers), the WebShop layout
(``Action: think[...]`` is reasoning, ``Instruction:`` is the prompt) and the
LangChain layout (``Action Input:``, ``Final Answer:``).

A marker only counts at the start of a line, so "Action:" inside a thought
sentence does not start an action. A block runs from its marker line up to the
next marker line (multi-line thoughts); the marker, the content and the
trailing newline all take the block's type. Text before the first marker is
the prompt.

Malformed (``TrajectoryError`` when strict): no ``Thought``/``Action`` line at
all (recovery: the whole text is the prompt), an empty action (recovery: kept
as an action).
"""
from __future__ import annotations

import re

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Recovery, Segmented, SpanBuilder, lines

MARKER = re.compile(
    r"(Question|Instruction|Task|Thought|Action Input|Action|Final Answer|Observation)"
    r"(?:[ \t]+\d+)?[ \t]*:")
_TYPES = {
    "Question": SpanType.PROMPT, "Instruction": SpanType.PROMPT, "Task": SpanType.PROMPT,
    "Thought": SpanType.REASONING, "Action": SpanType.ACTION,
    "Action Input": SpanType.ACTION, "Final Answer": SpanType.ACTION,
    "Observation": SpanType.OBSERVATION,
}
_THINK_ACTION = re.compile(r"\s*think\[", re.IGNORECASE)


def segment_react(text: str, strict: bool = True) -> Segmented:
  """Segments ReAct text; see the module docstring for the rules."""
  rec = Recovery(text, strict)
  blocks = []  # [start, end, type, content_start]
  for start, end, line in lines(text):
    m = MARKER.match(line)
    if m:
      typ = _TYPES[m.group(1)]
      if m.group(1) == "Action" and _THINK_ACTION.match(line, m.end()):
        typ = SpanType.REASONING
      blocks.append([start, end, typ, start + m.end()])
    elif blocks:
      blocks[-1][1] = end
    else:
      blocks.append([start, end, SpanType.PROMPT, start])
  if not any(b[2] in (SpanType.REASONING, SpanType.ACTION) for b in blocks):
    rec.fail("no 'Thought:' or 'Action:' line found in ReAct text", 0)
    blocks = [[0, len(text), SpanType.PROMPT, 0]]
  builder = SpanBuilder()
  for start, end, typ, content_start in blocks:
    if typ == SpanType.ACTION and not text[content_start:end].strip():
      rec.fail("empty action", start)
    builder.add(start, end, typ)
  return builder.build(text, "react", rec.warnings)
