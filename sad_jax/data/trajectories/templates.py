"""Chat messages rendered with a user-supplied Jinja2 chat template, offsets kept exact.

The template (e.g. the ``chat_template`` of a ``tokenizer_config.json``) is
rendered as Hugging Face does (``trim_blocks``, ``lstrip_blocks``, ``tojson``,
``raise_exception``, ``strftime_now``). Each message piece (prompt text, tool
output, reasoning, visible answer, tool-call name and arguments) has its
non-space core wrapped in private-use sentinel characters (U+10FFF0..U+10FFFF),
so ``strip`` / ``split('</think>')`` in the template act as on the real text. The
template is rendered with and without sentinels; when the two agree once the
sentinels are removed, the sentinel positions are the spans. Only characters
that come from the messages are labelled; whatever the template writes (role
headers, ``<think>`` tags it adds, JSON glue) is ``OTHER``. If the renderings
disagree (the template rewrites content), strict mode raises
:class:`TrajectoryError`; otherwise the pieces are located by a forward search
and those not found stay ``OTHER``.
"""
from __future__ import annotations

import datetime
import functools
import json
import re
from typing import Any

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories import formats, spec as spec_lib
from sad_jax.data.trajectories.chat import Message, conversation, normalize_message, resolve_kinds
from sad_jax.data.trajectories.segmented import Recovery, Segmented, TrajectoryError

_SENTINEL_BASE = 0x10FFF0
_CLOSE = chr(0x10FFFF)
_SENTINELS = re.compile("[\U0010FFF0-\U0010FFFF]")
_TAGS = re.compile(r"^(<think>|<tool_call>|<tool_response>)?(.*?)(</think>|</tool_call>|</tool_response>)?\Z",
                   re.DOTALL)


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


def _wrap_content(i: int, m: Message, kind: str, acting: bool, rec: Recovery) -> str:
  local = Recovery(m.content, rec.strict)
  try:
    pieces = spec_lib.label_region(formats.builtin("chatml"), m.content, 0, len(m.content), kind,
                                   local, acting)
  except TrajectoryError as e:
    raise TrajectoryError(f"messages[{i}].content: {e.reason} at char {e.position}", 0) from None
  rec.warnings.extend(f"messages[{i}].content: {w}" for w in local.warnings)
  out, pos = [], 0
  for start, end, typ in pieces:
    out.append(m.content[pos:start])
    piece = m.content[start:end]
    out.append(piece if typ == SpanType.OTHER else _wrap(piece, typ))
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


def _template_messages(msgs: list[Message], kinds: list[str], tagged: bool, rec: Recovery) -> list[dict]:
  out = []
  acting_messages = spec_lib.acting_turns(kinds)
  for i, m in enumerate(msgs):
    d = dict(m.extra)
    known = kinds[i] != "other" and tagged
    acting = acting_messages[i]
    d["content"] = _wrap_content(i, m, kinds[i], acting, rec) if known else m.content
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
                    template_kwargs: dict[str, Any] | None = None, schema: str = "chat") -> Segmented:
  """Renders messages with a Jinja2 chat template, keeping exact spans."""
  if not isinstance(chat_template, str) or not chat_template.strip():
    raise ValueError(f"chat_template must be a non-empty Jinja2 string, got {chat_template!r:.60}")
  template = _compile(chat_template)
  rec = Recovery("", strict)
  conv = conversation(trajectory, schema, rec)
  msgs = [normalize_message(i, m, rec, 0, conv.kinds[i]) for i, m in enumerate(conv.messages)]
  kinds = resolve_kinds(msgs)
  kwargs = dict(template_kwargs or {})
  tools = conv.tools
  text = _render(template, _template_messages(msgs, kinds, False, rec), tools, kwargs)
  if _SENTINELS.search(text):
    rec.text = text
    rec.fail("private-use characters U+10FFF0..U+10FFFF are reserved for span sentinels",
             _SENTINELS.search(text).start())
  tagged = _render(template, _template_messages(msgs, kinds, True, rec), tools, kwargs)
  clean, spans = _spans_from_sentinels(tagged)
  if clean != text:
    at = next((i for i, (a, b) in enumerate(zip(clean, text)) if a != b), min(len(clean), len(text)))
    rec.text = text
    rec.fail("chat_template rewrites message content, so pieces were located by search", at)
    spans = _locate(text, tagged)
  seg = spec_lib.build(text, spans, None, schema, rec.warnings)
  if not spec_lib.has_agent_span(seg):
    rec.text = text
    rec.fail("no assistant message with content (no reasoning or action span)", 0)
    seg = Segmented(seg.text, seg.spans, seg.format, tuple(rec.warnings))
  return seg
