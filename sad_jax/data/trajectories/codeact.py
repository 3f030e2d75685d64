"""CodeAct text (smolagents layout): ``Thought:`` prose, fenced code, ``Observation:``.

Blocks start at line-initial markers: ``Task:`` / ``Question:`` (prompt),
``Thought:`` (reasoning), ``Code:`` / ``Final answer:`` (action),
``Observation:`` (observation). Inside a thought or code block, a fenced code
block (a line ```` ``` ````, ```` ```py ```` or ```` ```python ````, or
``<code>``, up to the closing fence or ``</code>``, with an optional
``<end_code>`` after it) is an action; code fences inside the prompt or an
observation are left to that block. Text before the first marker is the
prompt; each block keeps its trailing newline.

Malformed (``TrajectoryError`` when strict): an unclosed code fence (recovery:
the action runs to the end of the text), no ``Thought:`` or code at all
(recovery: the whole text is the prompt).
"""
from __future__ import annotations

import re

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Recovery, Segmented, SpanBuilder, lines

MARKER = re.compile(r"(Task|Question|Thought|Code|Final [Aa]nswer|Observation)[ \t]*:")
FENCE_OPEN = re.compile(r"[ \t]*(```(?:py|python)?|<code>)[ \t\r]*$")
_CLOSE = {"<code>": re.compile(r"[ \t]*</code>")}
_FENCE_CLOSE = re.compile(r"[ \t]*```")
_TYPES = {"Task": SpanType.PROMPT, "Question": SpanType.PROMPT,
          "Thought": SpanType.REASONING, "Code": SpanType.ACTION,
          "Final answer": SpanType.ACTION, "Final Answer": SpanType.ACTION,
          "Observation": SpanType.OBSERVATION}


def segment_codeact(text: str, strict: bool = True) -> Segmented:
  """Segments CodeAct text; see the module docstring for the rules."""
  rec = Recovery(text, strict)
  builder = SpanBuilder()
  block = SpanType.PROMPT
  fence = None  # (opening line start, closing regex) while inside code
  agent_steps = 0
  for start, end, line in lines(text):
    if fence is not None:
      builder.add(start, end, SpanType.ACTION)
      if fence[1].match(line):
        fence = None
      continue
    m = MARKER.match(line)
    if m:
      block = _TYPES[m.group(1)]
      agent_steps += block in (SpanType.REASONING, SpanType.ACTION)
    f = FENCE_OPEN.match(line) if block in (SpanType.REASONING, SpanType.ACTION) else None
    if f:
      fence = (start, _CLOSE.get(f.group(1), _FENCE_CLOSE))
      block = SpanType.ACTION
      agent_steps += 1
    builder.add(start, end, block)
  if fence is not None:
    rec.fail("unclosed code block", fence[0])
  if not agent_steps:
    rec.fail("no 'Thought:' or code block found in CodeAct text", 0)
    builder = SpanBuilder()
    builder.add(0, len(text), SpanType.PROMPT)
  return builder.build(text, "codeact", rec.warnings)
