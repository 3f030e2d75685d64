"""OpenAI-style chat messages, rendered to text with exact character spans.

A trajectory is a list of messages (or a dict with ``"messages"`` and optional
``"tools"``). Each message has a ``role`` (``system``, ``developer``, ``user``,
``assistant``, ``tool``) and a ``content`` that is a string, ``None`` or a list
of ``{"type": "text", "text": ...}`` parts. Assistant messages may carry
``tool_calls`` (``[{"function": {"name", "arguments"}}]``; ``arguments`` a JSON
string or an object) and a ``reasoning_content`` string.

Labels: system/developer/user content is ``PROMPT``; tool content is
``OBSERVATION``; in assistant content ``<think>...</think>`` and
``reasoning_content`` are ``REASONING``; the rest of the content and the tool
calls are ``ACTION``.

Rendering:

* built-in (default): the Qwen2.5 / Hermes ChatML layout (without Qwen's
  default system prompt); ``reasoning_content`` renders as a leading
  ``<think>\\n...\\n</think>\\n\\n`` block. The result is exactly what
  :func:`~sad_jax.data.trajectories.chatml.segment_chatml` gives for the rendered text.
* ``chat_template=`` a Jinja2 template string: see
  :mod:`sad_jax.data.trajectories.templates` (offsets stay exact; only characters
  copied from the messages are labelled, template text is ``OTHER``).

Malformed (``TrajectoryError`` when strict), recovery otherwise: not a list of
messages, or a message that is not an object (no recovery); an unknown role
(rendered, content ``OTHER``); content of another type or a non-text part
(dropped); a tool call without a name (empty name) or with arguments that are
not a JSON object (rendered verbatim); an unclosed ``<think>`` (reasoning to the
end of the message). ``position`` is the offset in the rendered text: of the
tag for an unclosed ``<think>``, else of the start of the offending message
(0 with ``chat_template``, where the reason names the message).
"""
from __future__ import annotations

import dataclasses
import json

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories import chatml
from sad_jax.data.trajectories.segmented import Recovery, Segmented, SpanBuilder, TrajectoryError

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclasses.dataclass
class Message:
  role: str
  content: str
  reasoning: str | None
  tool_calls: list  # [(name, arguments dict or raw str, original tool call dict)]
  extra: dict


def _content(value, where: str, rec: Recovery, pos: int) -> str:
  if value is None:
    return ""
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    parts = []
    for j, part in enumerate(value):
      if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
        parts.append(part["text"])
      else:
        rec.fail(f"{where}[{j}] is not a text part", pos)
    return "".join(parts)
  rec.fail(f"{where} must be a string, null or a list of text parts, got {type(value).__name__}", pos)
  return ""


def _tool_call(call, where: str, rec: Recovery, pos: int):
  if not isinstance(call, dict):
    rec.fail(f"{where} must be an object, got {type(call).__name__}", pos)
    return "", {}, {}
  fn = call.get("function", call)
  fn = fn if isinstance(fn, dict) else {}
  name = fn.get("name")
  if not isinstance(name, str) or not name:
    rec.fail(f"{where} has no function name", pos)
    name = name if isinstance(name, str) else ""
  args = fn.get("arguments")
  if args is None:
    args = {}
  elif isinstance(args, str):
    try:
      parsed = json.loads(args)
    except json.JSONDecodeError as e:
      rec.fail(f"{where}.function.arguments is not valid JSON: {e.msg} at char {e.pos}", pos)
    else:
      if isinstance(parsed, dict):
        args = parsed
      else:
        rec.fail(f"{where}.function.arguments must be a JSON object", pos)
  elif not isinstance(args, dict):
    rec.fail(f"{where}.function.arguments must be a JSON string or an object", pos)
    args = str(args)
  return name, args, call


def normalize_message(i: int, msg, rec: Recovery, pos: int) -> Message:
  if not isinstance(msg, dict):
    raise TrajectoryError(f"messages[{i}] must be an object, got {type(msg).__name__}", pos)
  role = msg.get("role")
  if role not in ROLES:
    rec.fail(f"messages[{i}] has unknown role {role!r} (expected one of {ROLES})", pos)
    role = str(role)
  content = _content(msg.get("content"), f"messages[{i}].content", rec, pos)
  reasoning = msg.get("reasoning_content")
  if reasoning is not None and not isinstance(reasoning, str):
    rec.fail(f"messages[{i}].reasoning_content must be a string", pos)
    reasoning = None
  calls = msg.get("tool_calls") or []
  if not isinstance(calls, list):
    rec.fail(f"messages[{i}].tool_calls must be a list", pos)
    calls = []
  tool_calls = [_tool_call(c, f"messages[{i}].tool_calls[{j}]", rec, pos) for j, c in enumerate(calls)]
  extra = {k: v for k, v in msg.items() if k not in ("content", "tool_calls", "reasoning_content")}
  return Message(role, content, reasoning, tool_calls, extra)


def split_messages(trajectory):
  if isinstance(trajectory, dict) and "messages" in trajectory:
    return trajectory["messages"], trajectory.get("tools")
  return trajectory, None


def check_messages(messages) -> None:
  if not isinstance(messages, (list, tuple)) or not messages:
    raise TrajectoryError(
        "chat trajectory must be a non-empty list of messages (or {'messages': [...]}), "
        f"got {type(messages).__name__}{'' if messages else ' (empty)'}", 0)


def _call_json(name: str, args) -> str:
  rendered = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else args
  return '{"name": "' + name + '", "arguments": ' + rendered + "}"


def render_builtin(trajectory, strict: bool = True) -> Segmented:
  """Renders messages in the Qwen2.5 ChatML layout with exact spans."""
  messages, _ = split_messages(trajectory)
  check_messages(messages)
  rec = Recovery("", strict)
  builder = SpanBuilder()
  parts: list[str] = []
  length = 0

  def emit(s: str) -> int:
    nonlocal length
    parts.append(s)
    length += len(s)
    return length - len(s)

  msgs = []
  for i, raw in enumerate(messages):
    msgs.append(normalize_message(i, raw, rec, length))
    m = msgs[-1]
    if m.role == "tool":
      first = i == 0 or msgs[i - 1].role != "tool"
      if first:
        emit("<|im_start|>user\n")
      else:
        builder.add(emit("\n"), length, SpanType.OBSERVATION)
      builder.add(emit("<tool_response>\n" + m.content + "\n</tool_response>"), length,
                  SpanType.OBSERVATION)
      last = i + 1 == len(messages) or not (
          isinstance(messages[i + 1], dict) and messages[i + 1].get("role") == "tool")
      if last:
        emit("<|im_end|>\n")
      continue
    emit(f"<|im_start|>{m.role}\n")
    body = m.content
    if m.role == "assistant":
      if m.reasoning is not None:
        body = "<think>\n" + m.reasoning.strip("\n") + "\n</think>\n\n" + body.lstrip("\n")
      for name, args, _ in m.tool_calls:
        body += ("\n" if body else "") + "<tool_call>\n" + _call_json(name, args) + "\n</tool_call>"
    start = emit(body)
    if m.role in chatml.ROLES:
      rec.text = "".join(parts)
      try:
        pieces = chatml.content_pieces(m.role, rec.text, start, length, rec)
      except TrajectoryError as e:
        raise TrajectoryError(f"messages[{i}]: {e.reason}", e.position, rec.text) from None
      chatml.add_pieces(pieces, builder)
    emit("<|im_end|>\n")
  return builder.build("".join(parts), "chat", rec.warnings)
