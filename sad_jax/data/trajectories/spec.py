"""Declarative trajectory formats: :class:`FormatSpec` and the one segmenter that runs them.

A text layout is described by data, not code: how the text splits into turns
(a header pattern with a ``role`` group, end tokens, role names -> kinds), and
inside the text which line-initial **markers** (``Thought:``) and which
**tags** (``<think>...</think>``) open spans of which type, which whole
**harness** lines are ``OTHER`` (run-log banners, score lines) and which inline
**other** patterns are ``OTHER`` (BOS tokens, ANSI colour codes). Every
built-in text format (:mod:`sad_jax.data.trajectories.formats`) is such a spec;
a user writes the same thing in YAML or a dict (see :func:`load_spec`)::

  name: mylog
  extends: react                 # optional: start from a built-in format
  harness: ['Episode \\d+ done']  # whole lines -> OTHER (added to the built-in list)
  markers:
    - {match: 'Plan:', type: reasoning}

Span types are written ``prompt``, ``reasoning``, ``action``, ``observation``,
``other``, or ``agent``: agent text outside every marker and tag, which is
``reasoning`` when an action follows it in the same step (the prose before a tool
call) and ``action`` otherwise (the answer). Role kinds are ``prompt``,
``agent``, ``observation`` and ``other``.

Rules, per region (a turn's content, or the whole text of a layout without
turns), scanned line by line:

1. a line whose start (after any inline ``other`` match) matches a harness
   pattern is ``OTHER``;
2. in an agent region, or anywhere in a layout without turns, a line-initial
   marker sets the type of its line and, for ``scope: block`` (default), of the
   following lines up to the next marker; a ``scope: line`` marker types only
   its line and then switches to ``next``;
3. a tag's open pattern (anywhere in the line, or only at a line start with
   ``line: true``) starts a span of the tag's type that runs to its close
   (possibly lines later; to the end of the region when ``close`` is null);
4. the rest takes the current block's type. Leading whitespace of a piece takes
   the type of the piece before it (of the one after it at the region start).

Turn roles map names to kinds; the name ``"*"`` is the kind of every other
role (AutoGen's agent names). A prompt-role turn after the first agent turn
whose content matches an ``observation_turns`` pattern is an observation (ReAct-in-chat ``Observation:``
user turns, SWE-agent and OpenHands environment replies); an agent turn
followed by an observation is *acting*, which enables tags marked ``acting``
(a fenced command is an action only when the environment answered it).

Also: an agent turn that is one JSON object is typed key by key (``json_keys``);
in layouts without turns, few-shot examples before an ``examples_end`` line, or
before the last new ``last_task`` line, are prompt, and observations before the
agent's first span are the task. The next prompt-role turn after an agent turn
whose last explicit action is not ``final`` (``Action: search[...]``, a tool
call; not ``Final Answer:``) is the environment's reply. The full field list is
:class:`FormatSpec`'s, and the table in ``docs/trajectories.md``.

Malformed (``TrajectoryError`` when strict, a warning otherwise): an unclosed
tag (runs to the end of the region), an empty marker block that must not be
empty (``nonempty``), an unknown role (content ``OTHER``), a turn without its end token,
non-space text outside the turns, a tool call that is not a JSON object (or
Python dict literal) with a ``"name"``, and no reasoning or action span at all.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Recovery, Segmented, Span

#: Internal type of agent text outside markers and tags (resolved per step).
AGENT = -1
TYPE_NAMES = {"prompt": SpanType.PROMPT, "reasoning": SpanType.REASONING,
              "action": SpanType.ACTION, "observation": SpanType.OBSERVATION,
              "other": SpanType.OTHER, "agent": AGENT}
KINDS = ("prompt", "agent", "observation", "other")
_LIST_FIELDS = ("markers", "tags", "prompt_tags", "observation_turns", "task_turns", "harness",
                "other", "examples_end")
_FIELDS = ("name", "description", "extends", "start", "turns", "default_harness",
           "require_agent", "json_keys", "last_task", *_LIST_FIELDS)
_STEP_BREAK = (SpanType.PROMPT, SpanType.OBSERVATION, SpanType.OTHER)


def _type(value, where: str, allowed=TYPE_NAMES) -> int:
  if isinstance(value, str) and value.lower() in allowed:
    return int(allowed[value.lower()])
  raise ValueError(f"{where} must be one of {sorted(allowed)}, got {value!r}")


def _regex(value, where: str, literal: bool = False) -> re.Pattern:
  if not isinstance(value, str) or not value:
    raise ValueError(f"{where} must be a non-empty string, got {value!r}")
  try:
    return re.compile(re.escape(value) if literal else value, re.MULTILINE)
  except re.error as e:
    raise ValueError(f"{where} is not a valid regular expression ({e}): {value!r}") from None


def _keys(d, allowed, where: str) -> dict:
  if not isinstance(d, Mapping):
    raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
  unknown = sorted(set(d) - set(allowed))
  if unknown:
    raise ValueError(f"{where} has unknown keys {unknown} (allowed: {sorted(allowed)})")
  return dict(d)


@dataclasses.dataclass(frozen=True)
class Tag:
  """A span from an open pattern to a close pattern (see the module docstring)."""
  open: re.Pattern
  close: re.Pattern | None
  type: int
  name: str
  within: frozenset | None = None
  after: int | None = None
  implicit_open: bool = False
  validate: str | None = None
  acting: bool = False
  final: bool = False

  @classmethod
  def from_dict(cls, d, where: str) -> Tag:
    d = _keys(d, ("open", "close", "type", "regex", "name", "line", "within", "after",
                  "implicit_open", "validate", "acting", "final"), where)
    if "open" not in d or "type" not in d:
      raise ValueError(f"{where} needs 'open' and 'type', got keys {sorted(d)}")
    literal = not d.get("regex", False)
    open_ = _regex(d["open"], f"{where}.open", literal)
    if d.get("line"):
      open_ = re.compile("^" + open_.pattern, re.MULTILINE)
    close = d.get("close")
    close = None if close is None else _regex(close, f"{where}.close", literal)
    if d.get("validate") not in (None, "tool_call_json"):
      raise ValueError(f"{where}.validate must be null or 'tool_call_json', got {d['validate']!r}")
    if d.get("implicit_open") and close is None:
      raise ValueError(f"{where}: implicit_open needs a close pattern")
    within = d.get("within")
    if within is not None:
      if isinstance(within, str) or not isinstance(within, Sequence):
        raise ValueError(f"{where}.within must be a list of span types, got {within!r}")
      within = frozenset(_type(w, f"{where}.within[{i}]") for i, w in enumerate(within))
    after = d.get("after")
    return cls(open_, close, _type(d["type"], f"{where}.type"), str(d.get("name", d["open"])),
               within, None if after is None else _type(after, f"{where}.after"),
               bool(d.get("implicit_open", False)), d.get("validate"), bool(d.get("acting", False)),
               bool(d.get("final", False)))


@dataclasses.dataclass(frozen=True)
class Marker:
  """A line-initial pattern that opens a block (or types one line)."""
  match: re.Pattern
  type: int
  scope: str = "block"
  next: int | None = None
  nonempty: str | None = None
  within: frozenset | None = None
  final: bool = False

  @classmethod
  def from_dict(cls, d, where: str) -> Marker:
    d = _keys(d, ("match", "type", "scope", "next", "nonempty", "within", "final"), where)
    if "match" not in d or "type" not in d:
      raise ValueError(f"{where} needs 'match' and 'type', got keys {sorted(d)}")
    scope = d.get("scope", "block")
    if scope not in ("block", "line"):
      raise ValueError(f"{where}.scope must be 'block' or 'line', got {scope!r}")
    within = d.get("within")
    if within is not None:
      within = frozenset(_type(w, f"{where}.within[{i}]") for i, w in enumerate(within))
    nxt = d.get("next")
    return cls(_regex(d["match"], f"{where}.match"), _type(d["type"], f"{where}.type"), scope,
               None if nxt is None else _type(nxt, f"{where}.next"), d.get("nonempty"), within,
               bool(d.get("final", False)))


@dataclasses.dataclass(frozen=True)
class Turns:
  """How a text splits into role turns."""
  header: re.Pattern
  end: re.Pattern | None
  end_name: str
  roles: Mapping[str, str]
  preamble: int

  @classmethod
  def from_dict(cls, d, where: str) -> Turns:
    d = _keys(d, ("header", "end", "roles", "preamble"), where)
    if "header" not in d or "roles" not in d:
      raise ValueError(f"{where} needs 'header' and 'roles', got keys {sorted(d)}")
    header = _regex(d["header"], f"{where}.header")
    if "role" not in header.groupindex:
      raise ValueError(f"{where}.header must have a (?P<role>...) group, got {d['header']!r}")
    ends = d.get("end") or []
    ends = [ends] if isinstance(ends, str) else list(ends)
    for i, e in enumerate(ends):
      if not isinstance(e, str) or not e:
        raise ValueError(f"{where}.end[{i}] must be a non-empty string, got {e!r}")
    end = re.compile("|".join(re.escape(e) for e in ends)) if ends else None
    roles = d["roles"]
    if not isinstance(roles, Mapping) or not roles:
      raise ValueError(f"{where}.roles must be a non-empty mapping of role name -> kind, got {roles!r}")
    for role, kind in roles.items():
      if kind not in KINDS:
        raise ValueError(f"{where}.roles[{role!r}] must be one of {KINDS}, got {kind!r}")
    preamble = _type(d.get("preamble", "other"), f"{where}.preamble",
                     {k: v for k, v in TYPE_NAMES.items() if k in ("prompt", "other")})
    return cls(header, end, ends[0] if ends else "", {str(k): v for k, v in roles.items()}, preamble)


@dataclasses.dataclass(frozen=True)
class FormatSpec:
  """A text layout as data; build one with :func:`load_spec` (fields as in the module doc).

  Attributes:
    name: the format name ``Segmented.format`` reports.
    description: one line for the format table.
    start: type of text before the first marker (layouts without turns).
    turns: :class:`Turns`, or None for a single stream of text.
    markers, tags: rules inside agent regions (and everywhere without turns).
    prompt_tags: tags recognised inside prompt turns.
    observation_turns: patterns that make a later prompt-role turn an observation.
    task_turns: patterns that keep a prompt-role turn the prompt although it
      follows the agent (``Here is your task.`` after an agent's ``OK.``).
    harness: whole-line patterns that are ``OTHER``.
    other: inline ``OTHER`` pattern (None: none).
    require_agent: the error when no reasoning or action span is found.
    json_keys: ``{key: type}``: an agent turn that is one JSON object (AutoGPT's
      ``{"thoughts": ..., "command": ...}``) has each top-level key and its value
      typed by the key (other keys are agent text).
    examples_end: layouts without turns: line patterns that end the few-shot
      examples of a prompt (``Here is the task.``); everything up to the end of
      the last matching line is ``PROMPT``.
    last_task: layouts without turns: the line pattern that states a task
      (``Question:``); when it occurs more than once and its last line differs
      from every earlier one, the earlier ones were few-shot examples and all
      text before the last one is ``PROMPT`` (repeated lines are retries of
      one task, as in Reflexion, and are kept).
    source: the dict the spec was built from (``extends`` merges these).
  """
  name: str
  description: str
  start: int
  turns: Turns | None
  markers: tuple[Marker, ...]
  tags: tuple[Tag, ...]
  prompt_tags: tuple[Tag, ...]
  observation_turns: tuple[re.Pattern, ...]
  task_turns: tuple[re.Pattern, ...]
  harness: tuple[re.Pattern, ...]
  other: re.Pattern | None
  require_agent: str
  examples_end: tuple[re.Pattern, ...] = ()
  json_keys: Mapping[str, int] = dataclasses.field(default_factory=dict)
  last_task: re.Pattern | None = None
  source: Mapping[str, Any] = dataclasses.field(repr=False, compare=False, default_factory=dict)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> FormatSpec:
    """Validates ``d`` (keys as in the module docstring) and compiles its patterns."""
    from sad_jax.data.trajectories import formats  # pylint: disable=g-import-not-at-top
    d = _keys(d, _FIELDS, "format spec")
    base_name = d.pop("extends", None)
    if base_name is not None:
      builtins = formats.SPECS
      if base_name not in builtins:
        raise ValueError(f"format spec extends unknown format {base_name!r} "
                         f"(built-in text formats: {sorted(builtins)})")
      merged = dict(builtins[base_name])
      for key, value in d.items():
        merged[key] = list(value) + list(merged.get(key, [])) if key in _LIST_FIELDS else value
      d = merged
    name = d.get("name")
    if not isinstance(name, str) or not name:
      raise ValueError(f"format spec needs a non-empty 'name', got {name!r}")
    lists = {}
    for key in _LIST_FIELDS:
      value = d.get(key) or []
      if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"format spec {key!r} must be a list, got {type(value).__name__}")
      lists[key] = list(value)
    harness = lists["harness"] + (list(formats.HARNESS) if d.get("default_harness", True) else [])
    other = [_regex(p, f"other[{i}]").pattern for i, p in enumerate(lists["other"])]
    return cls(
        name=name, description=str(d.get("description", "")),
        start=_type(d.get("start", "prompt"), "start"),
        turns=None if d.get("turns") is None else Turns.from_dict(d["turns"], "turns"),
        markers=tuple(Marker.from_dict(m, f"markers[{i}]") for i, m in enumerate(lists["markers"])),
        tags=tuple(Tag.from_dict(t, f"tags[{i}]") for i, t in enumerate(lists["tags"])),
        prompt_tags=tuple(Tag.from_dict(t, f"prompt_tags[{i}]")
                          for i, t in enumerate(lists["prompt_tags"])),
        observation_turns=tuple(_regex(p, f"observation_turns[{i}]")
                                for i, p in enumerate(lists["observation_turns"])),
        task_turns=tuple(_regex(p, f"task_turns[{i}]") for i, p in enumerate(lists["task_turns"])),
        harness=tuple(_regex(p, f"harness[{i}]") for i, p in enumerate(harness)),
        other=re.compile("|".join(f"(?:{p})" for p in other), re.MULTILINE) if other else None,
        require_agent=str(d.get("require_agent") or "no reasoning or action span found"),
        examples_end=tuple(_regex(p, f"examples_end[{i}]") for i, p in enumerate(lists["examples_end"])),
        json_keys=_json_keys(d.get("json_keys") or {}),
        last_task=None if d.get("last_task") is None else _regex(d["last_task"], "last_task"),
        source=dict(d))


def _json_keys(d) -> dict[str, int]:
  d = _keys(d, [k for k in TYPE_NAMES if k != "agent"], "json_keys")
  out = {}
  for name, keys in d.items():
    if isinstance(keys, str) or not isinstance(keys, Sequence):
      raise ValueError(f"json_keys[{name!r}] must be a list of keys, got {keys!r}")
    out.update({str(k): int(TYPE_NAMES[name]) for k in keys})
  return out


def load_spec(source: Any) -> FormatSpec:
  """A :class:`FormatSpec` from a dict, an ``ml_collections.ConfigDict``, a YAML string or a YAML file.

  Args:
    source: a mapping; a ``ConfigDict`` (``to_dict()`` is used); a path to a
      ``.yaml``/``.yml``/``.json`` file; or YAML text.

  Raises:
    ValueError: an unknown key, a bad span type or role kind, an invalid
      regular expression, or YAML that is not a mapping (the message names it).
  """
  if isinstance(source, FormatSpec):
    return source
  if hasattr(source, "to_dict") and callable(source.to_dict):
    source = source.to_dict()
  if isinstance(source, (str, os.PathLike)):
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or (
        "\n" not in text and text.endswith((".yaml", ".yml", ".json")) and os.path.exists(text)):
      with open(text, encoding="utf-8") as f:
        text = f.read()
    try:
      import yaml  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("loading a format spec from YAML needs pyyaml: pip install pyyaml") from e
    try:
      source = yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ValueError(f"format spec is not valid YAML: {e}") from None
  if not isinstance(source, Mapping):
    raise ValueError(f"format spec must be a mapping, got {type(source).__name__}")
  return FormatSpec.from_dict(source)


# ------------------------------------------------------------------ engine


class _TagSearch:
  """Earliest allowed tag (or stray close) at or after a position; each pattern re-searched lazily."""

  def __init__(self, text: str, end: int, tags: Sequence[Tag], acting: bool):
    self.text, self.end = text, end
    self.events = []  # (pattern, tag, is_stray_close)
    for tag in tags:
      if tag.acting and not acting:
        continue
      self.events.append((tag.open, tag, False))
      if tag.implicit_open:
        self.events.append((tag.close, tag, True))
    self.cache: list = [False] * len(self.events)  # False: not searched; None: no more matches

  def next(self, pos: int, limit: int, current: int):
    best = None
    for i, (pattern, tag, stray) in enumerate(self.events):
      if tag.within is not None and current not in tag.within:
        continue
      m = self.cache[i]
      if m is False or (m is not None and m.start() < pos):
        m = self.cache[i] = pattern.search(self.text, pos, self.end)
        while m is not None and m.end() == m.start():
          m = self.cache[i] = pattern.search(self.text, m.end() + 1, self.end) if m.end() < self.end else None
      if m is not None and m.start() < limit and (best is None or m.start() < best[0].start()):
        best = (m, tag, stray)
    return best


def _note(info: dict, rule) -> None:
  if rule.type == SpanType.ACTION:
    info["reply"] = not rule.final
  elif rule.type == SpanType.OBSERVATION:
    info["reply"] = False


_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")


def _json_pieces(text: str, start: int, end: int, keys: Mapping[str, int], info: dict):
  """Pieces of a region that is one JSON object with known keys, else None."""
  chunk = text[start:end]
  lo = start + len(chunk) - len(chunk.lstrip())
  hi = start + len(chunk.rstrip())
  if hi - lo < 2 or text[lo] != "{" or text[hi - 1] != "}":
    return None
  try:
    obj = json.loads(text[lo:hi])
  except json.JSONDecodeError:
    return None
  if not isinstance(obj, dict) or not any(k in keys for k in obj):
    return None
  pos = _WS.match(text, lo + 1).end()
  pieces = [[start, pos, None]]
  while text[pos] == '"':
    key, after_key = _DECODER.raw_decode(text, pos)
    value_start = _WS.match(text, _WS.match(text, after_key).end() + 1).end()
    value, value_end = _DECODER.raw_decode(text, value_start)
    typ = keys.get(key, AGENT)
    pieces.append([pos, value_end, typ])
    if typ == SpanType.ACTION:
      info["reply"] = not (isinstance(value, str) and "final" in value.lower())
    nxt = _WS.match(text, value_end).end()
    if text[nxt] == ",":
      nxt = _WS.match(text, nxt + 1).end()
    pieces.append([value_end, nxt, None])
    pos = nxt
  pieces.append([pos, end, None])
  return [p for p in pieces if p[1] > p[0]]


def _check_tool_call(text: str, start: int, end: int, rec: Recovery) -> None:
  """A tool call must be a JSON object with a "name" (a Python dict literal, as some datasets write, too)."""
  inner = text[start:max(start, end)]
  try:
    call = json.loads(inner)
  except json.JSONDecodeError as e:
    try:
      call = ast.literal_eval(inner.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
      rec.fail(f"tool call is not valid JSON: {e.msg}", start + e.pos)
      return
  if not isinstance(call, dict) or "name" not in call:
    rec.fail('tool call must be a JSON object with a "name"', start)


def _line_start(text: str, pos: int, end: int, other: re.Pattern | None) -> int:
  """``pos`` moved past any inline ``other`` matches (ANSI codes) at the start of a line."""
  while other is not None:
    m = other.match(text, pos, end)
    if m is None or m.end() == pos:
      break
    pos = m.end()
  return pos


def _add(pieces: list, text: str, start: int, end: int, typ) -> None:
  """Appends ``text[start:end]`` typed ``typ``, its leading whitespace as an untyped piece."""
  if end <= start:
    return
  chunk = text[start:end]
  body = start + len(chunk) - len(chunk.lstrip())
  if body > start:
    pieces.append([start, body, None])
  if end > body:
    pieces.append([body, end, typ])


def _resolve(pieces: list, free_type: int) -> list:
  """Untyped whitespace takes its neighbour's type; agent text becomes reasoning or action."""
  for i, piece in enumerate(pieces):
    if piece[2] is None:
      piece[2] = pieces[i - 1][2] if i else next((p[2] for p in pieces if p[2] is not None), None)
  step_start = 0
  for i in range(len(pieces) + 1):
    if i < len(pieces) and pieces[i][2] not in _STEP_BREAK:
      continue
    step = pieces[step_start:i]
    last_action = max((j for j, p in enumerate(step) if p[2] == SpanType.ACTION), default=-1)
    for j, piece in enumerate(step):
      if piece[2] == AGENT:
        piece[2] = SpanType.REASONING if j < last_action else free_type
    step_start = i + 1
  return pieces


def scan(spec: FormatSpec, text: str, start: int, end: int, base: int, rec: Recovery, *,
         agent: bool, acting: bool = True, free_type: int = SpanType.ACTION,
         info: dict | None = None) -> list:
  """Typed pieces ``[start, end, type]`` of the region ``text[start:end]``.

  Args:
    spec: the format.
    text: the whole text (positions are absolute).
    start, end: the region.
    base: the type of text before any marker (``AGENT`` for agent turns).
    rec: where failures go.
    agent: markers and agent tags apply (else only ``prompt_tags``).
    acting: the region is followed by an observation (enables ``acting`` tags).
    free_type: what agent text with no action after it becomes.
    info: if given, ``info["reply"]`` is set to whether the last explicit action
      (an action marker or tag) is one the environment answers (not ``final``,
      and no observation written after it in the region).
  """
  info = {} if info is None else info
  pieces: list = []
  tags = spec.tags if agent else spec.prompt_tags
  search = _TagSearch(text, end, tags, acting)
  current = base
  pos = start
  if agent and spec.json_keys:
    as_json = _json_pieces(text, start, end, spec.json_keys, info)
    if as_json is not None:
      return _resolve(as_json, free_type)
  if agent:  # a close tag before any open: the template wrote the open tag (R1 / Qwen3 '</think>')
    for tag in tags:
      if tag.implicit_open:
        close = tag.close.search(text, start, end)
        opened = tag.open.search(text, start, close.start()) if close else None
        if close is not None and opened is None:
          pieces.append([start, close.end(), tag.type])
          pos = close.end()
          break
  pending = None  # (message, marker line start, content start) of a block that must not be empty

  def check_pending(block_end: int) -> None:
    if pending is not None and not text[pending[2]:block_end].strip():
      rec.fail(pending[0], pending[1])

  while pos < end:
    nl = text.find("\n", pos, end)
    line_end = end if nl < 0 else nl + 1
    if pos == start or text[pos - 1] == "\n":
      p = _line_start(text, pos, line_end, spec.other)
      if any(h.match(text, p, line_end) for h in spec.harness):
        check_pending(pos)
        pending = None
        pieces.append([pos, line_end, SpanType.OTHER])
        pos = line_end
        continue
      for marker in spec.markers if agent else ():
        if marker.within is not None and current not in marker.within:
          continue
        m = marker.match.match(text, p, line_end)
        if m is None:
          continue
        check_pending(pos)
        pending = None
        if marker.nonempty and marker.scope == "line" and not text[m.end():line_end].strip():
          rec.fail(marker.nonempty, pos)
        elif marker.nonempty:
          pending = (marker.nonempty, pos, m.end())
        _note(info, marker)
        if marker.scope == "line":
          _add(pieces, text, pos, line_end, marker.type)
          current = current if marker.next is None else marker.next
          pos = line_end
        else:
          current = marker.type
        break
      if pos == line_end:
        continue
    found = search.next(pos, line_end, current)
    if found is None:
      _add(pieces, text, pos, line_end, current)
      pos = line_end
      continue
    m, tag, stray = found
    _add(pieces, text, pos, m.start(), current)
    if stray:
      rec.fail(f"{m.group()} without its opening tag", m.start())
      pieces.append([m.start(), m.end(), tag.type])
      pos = m.end()
      continue
    if tag.close is None:
      block_end = close_start = end
    else:
      close = tag.close.search(text, m.end(), end)
      if close is None:
        rec.fail(f"unclosed {tag.name}", m.start())
        block_end = close_start = end
      else:
        block_end, close_start = close.end(), close.start()
    _note(info, tag)
    if tag.validate == "tool_call_json":
      _check_tool_call(text, m.end(), close_start, rec)
    pieces.append([m.start(), block_end, tag.type])
    current = current if tag.after is None else tag.after
    pos = block_end
  check_pending(end)
  return _resolve(pieces, free_type)


def observation_turn(spec: FormatSpec, content: str) -> bool:
  """Whether a prompt-role turn's content starts like an environment reply."""
  body = content.lstrip()
  return any(p.match(body) for p in spec.observation_turns)


def task_turn(spec: FormatSpec, content: str) -> bool:
  """Whether a prompt-role turn's content starts like a (new) task for the agent."""
  body = content.lstrip()
  return any(p.match(body) for p in spec.task_turns)


def expects_reply(spec: FormatSpec, text: str, start: int, end: int) -> bool:
  """Whether an agent turn ends with an explicit action the environment answers.

  True when its last action marker or tag (``Action: search[...]``, a tool
  call, ``<execute>``) is not ``final`` (``Final Answer:``, ``finish[...]``,
  ``<solution>``) and no observation follows it inside the turn: the next
  prompt-role turn is then the environment's reply.
  """
  info: dict = {}
  scan(spec, text, start, end, AGENT, Recovery(text, False), agent=True, acting=False, info=info)
  return bool(info.get("reply", False))


def next_kind(spec: FormatSpec, kind: str, content: str, state: dict) -> str:
  """The kind of the next turn, given the turns before it (``state`` carries what was seen).

  A prompt-role turn after the first agent turn is an observation when it
  starts like one (``observation_turns``) or when the agent turn before it
  expects a reply (:func:`expects_reply`, recorded by the caller in
  ``state["reply"]``), unless it starts like a task (``task_turns``).
  """
  if kind == "prompt" and state.get("seen_agent") and not task_turn(spec, content) and (
      state.get("reply") or observation_turn(spec, content)):
    kind = "observation"
  state["seen_agent"] = state.get("seen_agent", False) or kind == "agent"
  if kind != "agent":
    state["reply"] = False
  return kind


def label_region(spec: FormatSpec, text: str, start: int, end: int, kind: str, rec: Recovery,
                 acting: bool) -> list:
  """Typed pieces of one turn's content for a role ``kind``."""
  if kind == "agent":
    return scan(spec, text, start, end, AGENT, rec, agent=True, acting=acting)
  if kind == "prompt":
    return scan(spec, text, start, end, SpanType.PROMPT, rec, agent=False)
  if kind == "observation":
    return scan(spec, text, start, end, SpanType.OBSERVATION, rec, agent=False)
  return [[start, end, SpanType.OTHER]] if end > start else []


def build(text: str, pieces: Sequence, spec_other: re.Pattern | None, fmt: str,
          warnings: Sequence[str]) -> Segmented:
  """A :class:`Segmented` from typed pieces, inline ``other`` matches carved out."""
  types = np.full(len(text), int(SpanType.OTHER), np.int8)
  for s, e, t in pieces:
    if t is not None and t >= 0:
      types[s:e] = int(t)
  if spec_other is not None:
    for m in spec_other.finditer(text):
      types[m.start():m.end()] = int(SpanType.OTHER)
  return Segmented(text, runs(types), fmt, tuple(warnings))


def runs(types: np.ndarray) -> tuple[Span, ...]:
  """Maximal runs of one labelled type (``OTHER`` runs are gaps) of a per-character array."""
  if types.size == 0:
    return ()
  cuts = np.flatnonzero(np.diff(types)) + 1
  starts = np.concatenate([[0], cuts])
  ends = np.concatenate([cuts, [types.size]])
  return tuple(Span(int(s), int(e), SpanType(int(types[s])))
               for s, e in zip(starts, ends) if types[s] != SpanType.OTHER)


def has_agent_span(seg: Segmented) -> bool:
  return any(t in (SpanType.REASONING, SpanType.ACTION) for _, _, t in seg.spans)


def segment_text(spec: FormatSpec, text: str, strict: bool = True) -> Segmented:
  """Segments ``text`` with ``spec`` (rules in the module docstring)."""
  rec = Recovery(text, strict)
  if spec.turns is None:
    begin = _examples_end(spec, text)
    pieces = scan(spec, text, 0, begin, SpanType.PROMPT, rec, agent=False)  # few-shot examples
    pieces += _task_before_first_act(scan(spec, text, begin, len(text), spec.start, rec, agent=True))
  else:
    pieces = _segment_turns(spec, text, rec)
  seg = build(text, pieces, spec.other, spec.name, rec.warnings)
  if not has_agent_span(seg):
    rec.fail(spec.require_agent, 0)
    seg = dataclasses.replace(seg, warnings=tuple(rec.warnings))
  return seg


def _examples_end(spec: FormatSpec, text: str) -> int:
  """Where the real task starts after few-shot examples (0 when there are none)."""
  end = 0
  for pattern in spec.examples_end:
    for m in pattern.finditer(text):
      nl = text.find("\n", m.end())
      end = max(end, len(text) if nl < 0 else nl + 1)
  if spec.last_task is not None:
    found = list(spec.last_task.finditer(text))
    if len(found) > 1:
      tasks = [_task_statement(text, m) for m in found]
      if tasks[-1] not in tasks[:-1]:
        end = max(end, found[-1].start())
  return end


def _task_statement(text: str, m: re.Match) -> str:
  """The task a ``last_task`` match states: the rest of its line, or the next line if that is blank."""
  nl = text.find("\n", m.end())
  line = text[m.end():len(text) if nl < 0 else nl].strip()
  if line or nl < 0:
    return line
  nl2 = text.find("\n", nl + 1)
  return text[nl + 1:len(text) if nl2 < 0 else nl2].strip()


def _task_before_first_act(pieces: list) -> list:
  """Observations before the agent's first span are the task (the environment's first page)."""
  for piece in pieces:
    if piece[2] in (SpanType.REASONING, SpanType.ACTION):
      break
    if piece[2] == SpanType.OBSERVATION:
      piece[2] = SpanType.PROMPT
  return pieces


def _outside(spec: FormatSpec, text: str, start: int, end: int, rec: Recovery) -> None:
  pos = start
  while pos < end:
    pos = _line_start(text, pos, end, spec.other)
    chunk = text[pos:end]
    stripped = len(chunk) - len(chunk.lstrip())
    if stripped == 0 or not chunk.strip():
      break
    pos += stripped
  if pos < end and text[pos:end].strip():
    rec.fail("text outside a turn", pos)


def _segment_turns(spec: FormatSpec, text: str, rec: Recovery) -> list:
  turns = spec.turns
  headers = list(turns.header.finditer(text))
  headers = [h for h in headers if h.end() > h.start()]
  pieces: list = []
  if not headers:
    rec.fail(f"no turn found (header pattern {turns.header.pattern!r})", 0)
    return pieces
  first = headers[0].start()
  if turns.preamble == SpanType.PROMPT:
    pieces += scan(spec, text, 0, first, SpanType.PROMPT, rec, agent=False)
  else:
    _outside(spec, text, 0, first, rec)
  regions = []  # (content_start, content_end, role, role_pos)
  for i, h in enumerate(headers):
    limit = headers[i + 1].start() if i + 1 < len(headers) else len(text)
    content_end = limit
    if turns.end is not None:
      m = turns.end.search(text, h.end(), limit)
      if m is None:
        rec.fail(f"turn without {turns.end_name}", h.start())
      else:
        content_end = m.start()
        _outside(spec, text, m.end(), limit, rec)
    role = h.group("role").strip()
    regions.append((h.end(), content_end, role, h.start("role")))
  kinds = []
  for start, end, role, role_pos in regions:
    kind = turns.roles.get(role, turns.roles.get("*"))
    if kind is None:
      rec.fail(f"unknown role {role!r} (known: {sorted(turns.roles)})", role_pos)
      kind = "other"
    kinds.append(kind)
  state: dict = {}
  for i, (start, end, _, _) in enumerate(regions):
    kinds[i] = next_kind(spec, kinds[i], text[start:end], state)
    if kinds[i] == "agent":
      state["reply"] = expects_reply(spec, text, start, end)
  for (start, end, _, _), kind, acting in zip(regions, kinds, acting_turns(kinds)):
    pieces += label_region(spec, text, start, end, kind, rec, acting)
  return pieces


def acting_turns(kinds: Sequence[str]) -> list[bool]:
  """Per turn: an agent turn the environment answers (the next turn is an observation).

  The last agent turn, answered by nothing, is acting when an earlier agent
  turn was (an episode of commands ends with a command, e.g. SWE-agent's ``submit``).
  """
  out = [k == "agent" and i + 1 < len(kinds) and kinds[i + 1] == "observation" for i, k in enumerate(kinds)]
  last_agent = max((i for i, k in enumerate(kinds) if k == "agent"), default=None)
  if last_agent is not None and not any(k != "agent" and k != "other" for k in kinds[last_agent + 1:]) \
      and any(out[:last_agent]):
    out[last_agent] = True
  return out
