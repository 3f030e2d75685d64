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
  :func:`~sad_jax.trajectories.chatml.segment_chatml` gives for the rendered text.
* ``chat_template=`` a Jinja2 template string (e.g. the ``chat_template`` of a
  ``tokenizer_config.json``), rendered like Hugging Face does
  (``trim_blocks``, ``lstrip_blocks``, ``tojson``, ``raise_exception``). Offsets
  stay exact: every message piece is wrapped in private-use sentinel characters
  around its non-space core, the template is rendered twice (with and without
  sentinels) and the sentinel positions become the spans once the two renderings
  agree. Only characters that come from the messages are labelled; everything
  the template writes (role headers, tags, JSON glue) is ``OTHER``.

Malformed (``TrajectoryError`` when strict), recovery otherwise: not a list of
messages (no recovery); an unknown role (rendered, content ``OTHER``); content
of another type or a non-text part (dropped); a tool call without a name
(empty name) or with arguments that are not a JSON object (rendered verbatim);
an unclosed ``<think>`` (reasoning to the end of the message); a template that
rewrites message content so the renderings disagree (pieces located by a
forward search; those not found stay ``OTHER``). ``position`` is where the
offending message starts in the built-in rendering (0 with ``chat_template``,
where the reason names the message).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
from typing import Any

from sad_jax.spans import SpanType
from sad_jax.trajectories import chatml
from sad_jax.trajectories.segmented import Recovery, Segmented, SpanBuilder, TrajectoryError

ROLES = ("system", "developer", "user", "assistant", "tool")
_SENTINEL_BASE = 0x10FFF0
_CLOSE = chr(0x10FFFF)
_SENTINELS = re.compile("[\U0010FFF0-\U0010FFFF]")
_TAGS = re.compile(r"^(<think>|<tool_call>|<tool_response>)?(.*?)(</think>|</tool_call>|</tool_response>)?$",
                   re.DOTALL)


@dataclasses.dataclass
class _Message:
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


def _message(i: int, msg, rec: Recovery, pos: int) -> _Message:
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
  return _Message(role, content, reasoning, tool_calls, extra)


def _split(trajectory):
  if isinstance(trajectory, dict) and "messages" in trajectory:
    return trajectory["messages"], trajectory.get("tools")
  return trajectory, None


def _check_list(messages) -> None:
  if not isinstance(messages, (list, tuple)) or not messages:
    raise TrajectoryError(
        "chat trajectory must be a non-empty list of messages (or {'messages': [...]}), "
        f"got {type(messages).__name__}{'' if messages else ' (empty)'}", 0)


def _call_json(name: str, args) -> str:
  rendered = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else args
  return '{"name": "' + name + '", "arguments": ' + rendered + "}"


def render_builtin(trajectory, strict: bool = True) -> Segmented:
  """Renders messages in the Qwen2.5 ChatML layout with exact spans."""
  messages, _ = _split(trajectory)
  _check_list(messages)
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
    msgs.append(_message(i, raw, rec, length))
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


# ----------------------------------------------------------------- templates


def _wrap(text: str, span_type: SpanType) -> str:
  """``text`` with its non-space core between sentinels (tags of known blocks left bare)."""
  m = _TAGS.match(text)
  inner = m.group(2)
  core = inner.strip()
  if not core:
    return text
  lead = inner[:len(inner) - len(inner.lstrip())]
  trail = inner[len(inner.rstrip()):]
  return ((m.group(1) or "") + lead + chr(_SENTINEL_BASE + span_type) + core + _CLOSE
          + trail + (m.group(3) or ""))


def _wrap_content(i: int, m: _Message, rec: Recovery) -> str:
  local = Recovery(m.content, rec.strict)
  try:
    pieces = chatml.content_pieces(m.role, m.content, 0, len(m.content), local)
  except TrajectoryError as e:
    raise TrajectoryError(f"messages[{i}].content: {e.reason} at char {e.position}", 0) from None
  rec.warnings.extend(f"messages[{i}].content: {w}" for w in local.warnings)
  out, pos = [], 0
  for start, end, typ in pieces:
    out.append(m.content[pos:start])
    out.append(m.content[start:end] if typ is None else _wrap(m.content[start:end], typ))
    pos = end
  out.append(m.content[pos:])
  return "".join(out)


class _TaggedArguments(dict):
  """Tool-call arguments whose ``tojson`` rendering is labelled as an action."""


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  """Hugging Face's ``tojson``; tool-call arguments (also nested) come out labelled."""
  kw = dict(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
  if isinstance(x, _TaggedArguments):
    return chr(_SENTINEL_BASE + SpanType.ACTION) + json.dumps(x, **kw) + _CLOSE
  item_sep, key_sep = separators or (", ", ": ")
  if indent is None and isinstance(x, dict) and all(isinstance(k, str) for k in x):
    items = sorted(x.items()) if sort_keys else x.items()
    return "{" + item_sep.join(json.dumps(k, ensure_ascii=ensure_ascii) + key_sep + _tojson(v, **kw)
                               for k, v in items) + "}"
  if indent is None and isinstance(x, (list, tuple)):
    return "[" + item_sep.join(_tojson(v, **kw) for v in x) + "]"
  return json.dumps(x, **kw)


def _raise_exception(message):
  raise TrajectoryError(f"chat_template rejected the conversation: {message}", 0)


@functools.lru_cache(maxsize=16)
def _compile(chat_template: str):
  try:
    import jinja2  # pylint: disable=g-import-not-at-top
    from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("chat_template needs jinja2: pip install jinja2") from e
  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(chat_template)
  except jinja2.TemplateSyntaxError as e:
    raise ValueError(f"chat_template has a Jinja syntax error at line {e.lineno}: {e.message}") from None


def _template_messages(msgs: list[_Message], tagged: bool, rec: Recovery) -> list[dict]:
  out = []
  for i, m in enumerate(msgs):
    d = dict(m.extra)
    known = m.role in chatml.ROLES and tagged
    d["content"] = _wrap_content(i, m, rec) if known else m.content
    if m.reasoning is not None:
      d["reasoning_content"] = _wrap(m.reasoning, SpanType.REASONING) if known else m.reasoning
    if m.tool_calls:
      calls = []
      for name, args, call in m.tool_calls:
        if known:
          name = _wrap(name, SpanType.ACTION)
          args = _TaggedArguments(args) if isinstance(args, dict) else _wrap(args, SpanType.ACTION)
        fn = dict(call.get("function", {})) if isinstance(call.get("function"), dict) else {}
        fn.update(name=name, arguments=args)
        calls.append({**call, "type": call.get("type", "function"), "function": fn})
      d["tool_calls"] = calls
    out.append(d)
  return out


def _render(template, messages: list[dict], tools, kwargs: dict[str, Any]) -> str:
  try:
    return template.render(messages=messages, tools=tools, add_generation_prompt=False,
                           bos_token="", eos_token="", **kwargs)
  except TrajectoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise TrajectoryError(f"chat_template failed to render: {type(e).__name__}: {e}", 0) from None


def _spans_from_sentinels(tagged: str) -> tuple[str, list]:
  clean, spans, pos, removed, current = [], [], 0, 0, None
  for m in _SENTINELS.finditer(tagged):
    clean.append(tagged[pos:m.start()])
    at = m.start() - removed
    removed += 1
    pos = m.end()
    if m.group() == _CLOSE:
      if current is not None and at > current[0]:
        spans.append((current[0], at, current[1]))
      current = None
    else:
      current = (at, SpanType(ord(m.group()) - _SENTINEL_BASE))
  clean.append(tagged[pos:])
  return "".join(clean), spans


def _locate(text: str, tagged: str) -> list:
  """Fallback: finds the sentinel-wrapped pieces of ``tagged`` in ``text`` in order."""
  spans, cursor = [], 0
  for m in re.finditer("([\U0010FFF0-\U0010FFFE])([^\U0010FFF0-\U0010FFFF]*)\U0010FFFF", tagged):
    at = text.find(m.group(2), cursor)
    if at >= 0 and m.group(2):
      spans.append((at, at + len(m.group(2)), SpanType(ord(m.group(1)) - _SENTINEL_BASE)))
      cursor = at + len(m.group(2))
  return spans


def render_template(trajectory, chat_template: str, strict: bool = True,
                    template_kwargs: dict[str, Any] | None = None) -> Segmented:
  """Renders messages with a Jinja2 chat template, keeping exact spans."""
  if not isinstance(chat_template, str) or not chat_template.strip():
    raise ValueError(f"chat_template must be a non-empty Jinja2 string, got {chat_template!r:.60}")
  template = _compile(chat_template)
  messages, tools = _split(trajectory)
  _check_list(messages)
  rec = Recovery("", strict)
  msgs = [_message(i, m, rec, 0) for i, m in enumerate(messages)]
  kwargs = dict(template_kwargs or {})
  text = _render(template, _template_messages(msgs, False, rec), tools, kwargs)
  if _SENTINELS.search(text):
    rec.text = text
    rec.fail("private-use characters U+10FFF0..U+10FFFF are reserved for span sentinels",
             _SENTINELS.search(text).start())
  tagged = _render(template, _template_messages(msgs, True, rec), tools, kwargs)
  clean, spans = _spans_from_sentinels(tagged)
  if clean != text:
    at = next((i for i, (a, b) in enumerate(zip(clean, text)) if a != b), min(len(clean), len(text)))
    rec.text = text
    rec.fail("chat_template rewrites message content, so pieces were located by search", at)
    spans = _locate(text, tagged)
  builder = SpanBuilder()
  for start, end, typ in spans:
    builder.add(start, end, typ)
  return builder.build(text, "chat", rec.warnings)
