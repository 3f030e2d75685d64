"""Rendered ChatML / Hermes text: ``<|im_start|>role\\n ... <|im_end|>`` turns.

Labels:

* turn glue (``<|im_start|>role\\n``, ``<|im_end|>``, text between turns): ``OTHER``;
* ``system`` / ``developer`` / ``user`` content: ``PROMPT``, except
  ``<tool_response>...</tool_response>`` blocks (tags included): ``OBSERVATION``;
* ``tool`` content: ``OBSERVATION``;
* ``assistant`` content: ``<think>...</think>`` (tags included) is ``REASONING``;
  ``<tool_call>...</tool_call>`` (tags included) and all other text is ``ACTION``.
  A ``</think>`` without an opening ``<think>`` closes reasoning that started
  at the beginning of the turn (the DeepSeek-R1 / Qwen3 layout where the
  template wrote ``<think>``).

Whitespace between two labelled pieces of one turn (e.g. the ``\\n\\n`` after
``</think>``) takes the type of the piece before it (the one after it when it
opens the turn).

Malformed (``TrajectoryError`` when strict), with the recovery used otherwise:
an unknown role (content left ``OTHER``); a turn without ``<|im_end|>`` (runs
to the next ``<|im_start|>`` or the end); an unclosed ``<think>`` /
``<tool_call>`` / ``<tool_response>`` (runs to the end of the turn); a tool call
that is not a JSON object with a ``"name"`` (kept as an action); non-space text
outside turns (left ``OTHER``); no turn at all (everything ``OTHER``).
"""
from __future__ import annotations

import json
import re

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Recovery, Segmented, SpanBuilder

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = {"system": SpanType.PROMPT, "developer": SpanType.PROMPT, "user": SpanType.PROMPT,
         "assistant": SpanType.ACTION, "tool": SpanType.OBSERVATION}
_ASSISTANT_TAGS = re.compile(r"<think>|</think>|<tool_call>")
_USER_TAGS = re.compile(r"<tool_response>")


def _close(text: str, open_tag: str, start: int, end: int, rec: Recovery) -> int:
  """End of the block opened at ``start`` (past its closing tag), at most ``end``."""
  close_tag = "</" + open_tag[1:]
  pos = text.find(close_tag, start + len(open_tag), end)
  if pos < 0:
    rec.fail(f"unclosed {open_tag}", start)
    return end
  return pos + len(close_tag)


def _check_tool_call(text: str, start: int, end: int, rec: Recovery) -> None:
  inner_start = start + len("<tool_call>")
  inner = text[inner_start:max(inner_start, end - len("</tool_call>"))]
  try:
    call = json.loads(inner)
  except json.JSONDecodeError as e:
    rec.fail(f"tool call is not valid JSON: {e.msg}", inner_start + e.pos)
    return
  if not isinstance(call, dict) or "name" not in call:
    rec.fail('tool call must be a JSON object with a "name"', inner_start)


def add_pieces(pieces, builder: SpanBuilder) -> None:
  """Labels ``(start, end, type)`` pieces; whitespace-only pieces have type None."""
  resolved = [list(p) for p in pieces]
  for i, piece in enumerate(resolved):
    if piece[2] is None:
      piece[2] = resolved[i - 1][2] if i else next(
          (p[2] for p in resolved if p[2] is not None), None)
  for start, end, typ in resolved:
    builder.add(start, end, typ)


def _text_pieces(text, start, end, typ, out):
  """Appends ``text[start:end]`` as a typed piece after its leading whitespace piece."""
  body = start + len(text[start:end]) - len(text[start:end].lstrip())
  if body > start:
    out.append((start, body, None))
  if end > body:
    out.append((body, end, typ))


def assistant_pieces(text: str, start: int, end: int, rec: Recovery) -> list:
  """Typed pieces of assistant content ``text[start:end]`` (think, tool calls, text)."""
  out, pos = [], start
  first_close = text.find("</think>", start, end)
  first_open = text.find("<think>", start, end)
  if first_close >= 0 and (first_open < 0 or first_open > first_close):
    pos = first_close + len("</think>")
    out.append((start, pos, SpanType.REASONING))
  while pos < end:
    m = _ASSISTANT_TAGS.search(text, pos, end)
    if m is None:
      _text_pieces(text, pos, end, SpanType.ACTION, out)
      break
    _text_pieces(text, pos, m.start(), SpanType.ACTION, out)
    if m.group() == "</think>":
      rec.fail("</think> without <think>", m.start())
      out.append((m.start(), m.end(), SpanType.REASONING))
      pos = m.end()
      continue
    block_end = _close(text, m.group(), m.start(), end, rec)
    if m.group() == "<think>":
      out.append((m.start(), block_end, SpanType.REASONING))
    else:
      _check_tool_call(text, m.start(), block_end, rec)
      out.append((m.start(), block_end, SpanType.ACTION))
    pos = block_end
  return out


def user_pieces(text: str, start: int, end: int, rec: Recovery) -> list:
  """Typed pieces of user content: prompt text and ``<tool_response>`` blocks."""
  out, pos = [], start
  while pos < end:
    m = _USER_TAGS.search(text, pos, end)
    if m is None:
      _text_pieces(text, pos, end, SpanType.PROMPT, out)
      break
    _text_pieces(text, pos, m.start(), SpanType.PROMPT, out)
    pos = _close(text, m.group(), m.start(), end, rec)
    out.append((m.start(), pos, SpanType.OBSERVATION))
  return out


def content_pieces(role: str, text: str, start: int, end: int, rec: Recovery) -> list:
  """Typed pieces of one turn's content ``text[start:end]`` for ``role``."""
  if role == "assistant":
    return assistant_pieces(text, start, end, rec)
  if role == "user":
    return user_pieces(text, start, end, rec)
  return [(start, end, ROLES[role])]


def segment_chatml(text: str, strict: bool = True) -> Segmented:
  """Segments rendered ChatML text; see the module docstring for the rules."""
  rec = Recovery(text, strict)
  builder = SpanBuilder()
  pos, turns = 0, 0
  while True:
    start = text.find(IM_START, pos)
    gap_end = len(text) if start < 0 else start
    stray = len(text[pos:gap_end]) - len(text[pos:gap_end].lstrip())
    if pos + stray < gap_end:
      rec.fail("text outside a <|im_start|> ... <|im_end|> turn", pos + stray)
    if start < 0:
      break
    turns += 1
    next_start = text.find(IM_START, start + len(IM_START))
    limit = len(text) if next_start < 0 else next_start
    header_end = text.find("\n", start, limit)
    if header_end < 0:
      rec.fail("turn header without a newline after the role", start)
      pos = limit
      continue
    role = text[start + len(IM_START):header_end].strip()
    content_start = header_end + 1
    content_end = text.find(IM_END, content_start, limit)
    if content_end < 0:
      rec.fail("turn without <|im_end|>", start)
      content_end = pos = limit
    else:
      pos = content_end + len(IM_END)
    if role not in ROLES:
      rec.fail(f"unknown role {role!r}", start + len(IM_START))
      continue
    add_pieces(content_pieces(role, text, content_start, content_end, rec), builder)
  if not turns:
    rec.fail("no <|im_start|> turn found in ChatML text", 0)
  return builder.build(text, "chatml", rec.warnings)
