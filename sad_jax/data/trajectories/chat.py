"""Chat messages rendered to text with exact character spans.

A trajectory is a list of messages, or a dict with ``"messages"`` and optional
``"tools"``, in any dialect :mod:`sad_jax.data.trajectories.schemas` normalizes
(ShareGPT, content parts, Qwen-Agent, ms-swift roles, turn lists, SWE-agent
steps). After normalization each message has a ``role`` (``system``,
``developer``, ``user``, ``assistant``, ``tool``), a ``content`` string (or
``None``), optional ``tool_calls`` (``[{"function": {"name", "arguments"}}]``;
``arguments`` a JSON string or an object) and ``reasoning_content``.

Labels: system/developer/user content is ``PROMPT`` (a ``<tool_response>``
block in it is ``OBSERVATION``); tool content, and a user message the schema
marks as the environment's reply or that starts like one after the first
assistant message (``Observation:``, ``OBSERVATION:``, ...), is
``OBSERVATION``; assistant content follows the agent content rules of
:mod:`sad_jax.data.trajectories.formats` (``<think>`` and ``reasoning_content``
are ``REASONING``, tool calls ``ACTION``, prose before a tool call
``REASONING``, the answer ``ACTION``).

Rendering:

* built-in (default): the Qwen2.5 / Hermes ChatML layout (without Qwen's
  default system prompt); ``tools`` render into the system prompt inside
  ``<tools></tools>`` (one JSON schema a line), as Qwen2.5's and Hermes'
  templates do; ``reasoning_content`` renders as a leading
  ``<think>\\n...\\n</think>\\n\\n`` block. The result is what the ``chatml``
  text format gives for the rendered text.
* ``chat_template=`` a Jinja2 template string: see
  :mod:`sad_jax.data.trajectories.templates` (offsets stay exact; only characters
  copied from the messages are labelled, template text is ``OTHER``).

Malformed (``TrajectoryError`` when strict), recovery otherwise: not a list of
messages, or a message that is not an object (no recovery); an unknown role
(rendered, content ``OTHER``); content of another type or a non-text part
(dropped); a tool call without a name (empty name) or with arguments that are
not a JSON object (rendered verbatim); an unclosed ``<think>`` (reasoning to the
end of the message); no assistant content at all. ``position`` is the offset
in the rendered text: of the tag for an unclosed ``<think>``, else of the start
of the offending message (0 for schema errors and with ``chat_template``, where
the reason names the message).
"""
from __future__ import annotations

import dataclasses
import json

from sad_jax.data.trajectories import formats, schemas, spec as spec_lib
from sad_jax.data.trajectories.segmented import Recovery, Segmented, TrajectoryError

ROLES = ("system", "developer", "user", "assistant", "tool")
ROLE_KINDS = {"system": "prompt", "developer": "prompt", "user": "prompt", "assistant": "agent",
              "tool": "observation"}


@dataclasses.dataclass
class Message:
  role: str
  content: str
  reasoning: str | None
  tool_calls: list  # [(name, arguments dict or raw str, original tool call dict)]
  extra: dict
  kind: str  # prompt / agent / observation / other


def _content(value, where: str, rec: Recovery, pos: int) -> str:
  if value is None:
    return ""
  if isinstance(value, str):
    return value
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


def normalize_message(i: int, msg, rec: Recovery, pos: int, kind_hint: str | None = None) -> Message:
  """One normalized message dict as a :class:`Message` (errors name ``messages[i]``)."""
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
  kind = kind_hint or ROLE_KINDS.get(role, "other")
  return Message(role, content, reasoning, tool_calls, extra, kind)


def conversation(trajectory, schema: str, rec: Recovery) -> schemas.Conversation:
  """Normalizes ``trajectory`` (``schema`` one of :data:`schemas.SCHEMAS`), checking it is not empty."""
  conv = schemas.normalize(trajectory, schema, rec)
  if not conv.messages:
    raise TrajectoryError("chat trajectory has no message with content", 0)
  return conv


def _kind(spec, m: Message, state: dict, body: str) -> str:
  """The message's kind in context (system messages never become observations)."""
  if m.kind == "observation" and m.role == "user" and spec_lib.task_turn(spec, m.content):
    m.kind = "prompt"  # a turn list's later user turn that states a task
  kind = m.kind if m.role == "system" else spec_lib.next_kind(spec, m.kind, m.content, state)
  if kind == "agent":
    state["reply"] = spec_lib.expects_reply(spec, body, 0, len(body))
  return kind


def resolve_kinds(msgs: list[Message]) -> list[str]:
  """Message kinds, with later user messages that are environment replies as observations."""
  spec = formats.builtin("chatml")
  state: dict = {}
  return [_kind(spec, m, state, m.content) for m in msgs]


def tools_section(tools) -> str:
  """The system-prompt text that lists ``tools`` (Qwen2.5 / Hermes layout)."""
  lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
  return ("\n\n# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
          "<tools>\n" + lines + "\n</tools>")


def _call_json(name: str, args) -> str:
  rendered = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else args
  return '{"name": "' + name + '", "arguments": ' + rendered + "}"


def render_builtin(trajectory, strict: bool = True, schema: str = "chat") -> Segmented:
  """Renders messages in the Qwen2.5 ChatML layout with exact spans."""
  rec = Recovery("", strict)
  conv = conversation(trajectory, schema, rec)
  spec = formats.builtin("chatml")
  parts: list[str] = []
  length = 0

  def emit(s: str) -> int:
    nonlocal length
    parts.append(s)
    length += len(s)
    return length - len(s)

  if conv.tools and not (conv.messages and isinstance(conv.messages[0], dict)
                         and conv.messages[0].get("role") == "system"):
    emit("<|im_start|>system\n")
    start = emit(tools_section(conv.tools).lstrip("\n"))
    regions = [(start, length, "prompt", -1)]
    emit("<|im_end|>\n")
  else:
    regions = []
  state: dict = {}
  for i, raw in enumerate(conv.messages):
    m = normalize_message(i, raw, rec, length, conv.kinds[i])
    kind = _kind(spec, m, state, m.content)
    nxt = conv.messages[i + 1] if i + 1 < len(conv.messages) else None
    if m.role == "tool":
      if i == 0 or conv.messages[i - 1].get("role") != "tool":
        emit("<|im_start|>user\n")
        start = length
      else:
        emit("\n")
        start = regions.pop()[0]
      wrapped = m.content.strip()
      if wrapped.startswith("<tool_response>") and wrapped.endswith("</tool_response>"):
        emit(m.content)  # already in the Hermes layout
      else:
        emit("<tool_response>\n" + m.content + "\n</tool_response>")
      regions.append((start, length, "observation", i))
      if not (isinstance(nxt, dict) and nxt.get("role") == "tool"):
        emit("<|im_end|>\n")
      continue
    emit(f"<|im_start|>{m.role}\n")
    body = m.content
    if m.role == "system" and i == 0 and conv.tools:
      body += tools_section(conv.tools)
    if m.role == "assistant":
      if m.reasoning is not None:
        body = "<think>\n" + m.reasoning.strip("\n") + "\n</think>\n\n" + body.lstrip("\n")
      for name, args, _ in m.tool_calls:
        body += ("\n" if body else "") + "<tool_call>\n" + _call_json(name, args) + "\n</tool_call>"
    start = emit(body)
    regions.append((start, length, kind, i))
    emit("<|im_end|>\n")
  text = "".join(parts)
  rec.text = text
  pieces = []
  acting_regions = spec_lib.acting_turns([r[2] for r in regions])
  for (start, end, kind, i), acting in zip(regions, acting_regions):
    try:
      pieces += spec_lib.label_region(spec, text, start, end, kind, rec, acting)
    except TrajectoryError as e:
      raise TrajectoryError(f"messages[{i}]: {e.reason}", e.position, text) from None
  seg = spec_lib.build(text, pieces, None, schema, rec.warnings)
  if not spec_lib.has_agent_span(seg):
    rec.fail("no assistant message with content (no reasoning or action span)", 0)
    seg = dataclasses.replace(seg, warnings=tuple(rec.warnings))
  return seg
