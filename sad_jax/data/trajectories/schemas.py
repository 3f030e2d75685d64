"""Dataset schemas normalized to OpenAI-style chat messages (before rendering).

=============  ==================================================================
``chat``       OpenAI messages (``role`` / ``content`` / ``tool_calls`` /
               ``reasoning_content``), a list or ``{"messages": [...],
               "tools": [...]}``, with these dialects understood per message:
               role aliases (``human``/``gpt``/``bot``/``model``; ``function``,
               ``observation``, ``tool_response``, ``ipython``, ``environment`` are
               tool output; ms-swift ``tool_call`` / ShareGPT ``function_call``
               are an assistant tool call, merged into the assistant message just
               before it); content parts (``{"type": "text" | "reasoning" |
               "thinking" | "tool_call" | "tool_use" | "tool_result", ...}``, the
               payload under ``text`` / ``value`` / ``content`` / ``reasoning`` /
               ``thinking`` / ``input``, as LLaMA-Factory and Anthropic write them;
               image / audio / video / file parts have no text and are left out;
               Gemini ``parts`` with ``text`` / ``functionCall`` / ``functionResponse``);
               Qwen-Agent ``function_call: {"name", "arguments"}``; SWE-agent
               ``message_type: "observation"`` user messages.
``sharegpt``   ``{"conversations": [{"from": ..., "value": ...}], "system": ...,
               "tools": "<json>"}`` (or the bare list): ``human`` / ``gpt`` /
               ``function_call`` / ``observation`` / ``system``.
``turns``      a list of strings (AgentBench / ALFWorld turn lists): user, agent,
               user, ...; the user turns after the first agent turn are the
               environment's observations.
``swe-agent``  SWE-agent ``.traj`` steps (``[{"response" | "thought", "action",
               "observation"}]``, or ``{"trajectory": [...]}`` / ``{"history":
               [...]}``): each step is an assistant message (its response, else the
               thought then the action in a fence) and an observation.
``openhands``  OpenHands event streams (``[{"source", "action", "args"} |
               {"observation", "content"}]``): ``system`` and user ``message``
               actions are the prompt; an agent action is an assistant message
               (its ``thought`` as prose, the action and its arguments as a tool
               call; ``message`` / ``finish`` as the answer, ``think`` as
               reasoning); observations are tool output; state-change events
               are dropped.
``alpaca``     ``{"instruction", "input", "output", "system", "history"}``
               (Alpaca / LLaMA-Factory alpaca format): ``history`` pairs, then the
               instruction (with its input) and the output.
``xlam``       function-calling samples ``{"query", "answers", "tools"}`` (APIGen /
               xLAM): the query, then the answers as tool calls.
``dspy``       DSPy ReAct trajectories ``{"thought_0", "tool_name_0", "tool_args_0",
               "observation_0", ...}``: per step an assistant message (the thought,
               the tool call) and the observation.
=============  ==================================================================
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sad_jax.data.trajectories.segmented import Recovery, TrajectoryError

SCHEMAS = ("chat", "sharegpt", "turns", "swe-agent", "openhands", "alpaca", "xlam", "dspy")

ROLE_ALIASES = {
    "human": "user", "user": "user", "system": "system", "developer": "developer",
    "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
    "assistant": "assistant", "agent": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "tool_response": "tool",
    "ipython": "tool", "environment": "tool", "env": "tool", "tool_output": "tool",
}
_CALL_ROLES = ("tool_call", "function_call")
_TEXT_TYPES = ("text", "input_text", "output_text")
_REASONING_TYPES = ("reasoning", "thinking")
_CALL_TYPES = ("tool_call", "tool_use", "function_call")
_PAYLOAD = ("text", "value", "content", "reasoning", "thinking")
_MEDIA_TYPES = ("image", "image_url", "input_image", "audio", "input_audio", "video", "file", "input_file",
                "redacted_thinking")


@dataclasses.dataclass
class Conversation:
  """Messages in the OpenAI layout, plus what the schema says about them.

  Attributes:
    messages: dicts with ``role``, ``content`` and optionally ``tool_calls`` /
      ``reasoning_content`` (other keys kept for chat templates).
    tools: the tool schemas (a list) or None.
    kinds: per message ``"observation"`` when the schema says the message is
      the environment's reply although its role is ``user``, else None.
    schema: which of :data:`SCHEMAS` the input was.
  """
  messages: list
  tools: list | None
  kinds: list
  schema: str


def detect_schema(trajectory: Any) -> str | None:
  """Which of :data:`SCHEMAS` a non-text trajectory is, or None."""
  if isinstance(trajectory, Mapping):
    if "thought_0" in trajectory and "tool_name_0" in trajectory:
      return "dspy"
    if "query" in trajectory and "answers" in trajectory:
      return "xlam"
    if isinstance(trajectory.get("instruction"), str) and "output" in trajectory:
      return "alpaca"
    if isinstance(trajectory.get("conversations"), list):
      inner = trajectory["conversations"]
      return "turns" if inner and all(isinstance(t, str) for t in inner) else "sharegpt"
    if "messages" in trajectory:
      return "chat"
    for key in ("trajectory", "history"):
      if isinstance(trajectory.get(key), list):
        return "openhands" if detect_schema(trajectory[key]) == "openhands" else "swe-agent"
    return None
  if isinstance(trajectory, (list, tuple)) and trajectory:
    if all(isinstance(t, str) for t in trajectory):
      return "turns"
    first = next((t for t in trajectory if isinstance(t, Mapping)), None)
    if first is not None and "source" in first and ("action" in first or "observation" in first):
      return "openhands"
    if first is not None and "from" in first and "role" not in first:
      return "sharegpt"
    if first is not None and "observation" in first and "role" not in first and "from" not in first:
      return "swe-agent"
    return "chat"
  if isinstance(trajectory, (list, tuple)):
    return "chat"
  return None


def _tools(value, rec: Recovery):
  if value is None or value == "" or value == []:
    return None
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      rec.fail(f"tools is not valid JSON: {e.msg} at char {e.pos}", 0)
      return None
  if isinstance(value, Mapping):
    value = [value]
  if not isinstance(value, list):
    rec.fail(f"tools must be a list of tool schemas, got {type(value).__name__}", 0)
    return None
  return value


def _call_from_payload(payload, where: str, rec: Recovery) -> dict | None:
  """A tool call from a JSON string or dict ``{"name", "arguments" | "parameters" | "input"}``."""
  if isinstance(payload, str):
    try:
      payload = json.loads(payload)
    except json.JSONDecodeError as e:
      rec.fail(f"{where} is not valid JSON: {e.msg} at char {e.pos}", 0)
      return None
  if isinstance(payload, Mapping) and "function" in payload and isinstance(payload["function"], Mapping):
    return dict(payload)
  if not isinstance(payload, Mapping) or not isinstance(payload.get("name"), str):
    rec.fail(f'{where} must be a JSON object with a "name"', 0)
    return None
  args = next((payload[k] for k in ("arguments", "parameters", "input", "args") if k in payload), {})
  call = {"type": "function", "function": {"name": payload["name"], "arguments": args}}
  if "id" in payload:
    call["id"] = payload["id"]
  return call


def _calls(value, where: str, rec: Recovery) -> list:
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      rec.fail(f"{where} is not valid JSON: {e.msg} at char {e.pos}", 0)
      return []
  items = value if isinstance(value, list) else [value]
  calls = [_call_from_payload(v, f"{where}[{j}]" if isinstance(value, list) else where, rec)
           for j, v in enumerate(items)]
  return [c for c in calls if c is not None]


def _payload(part: Mapping):
  return next((part[k] for k in _PAYLOAD if isinstance(part.get(k), str)), None)


def _split_parts(msg: dict, where: str, rec: Recovery) -> tuple[dict, list]:
  """Content parts -> text content, reasoning and tool calls; tool results -> extra messages."""
  parts = msg["content"]
  texts, reasoning, calls, results = [], [], [], []
  for j, part in enumerate(parts):
    kind = part.get("type", "text") if isinstance(part, Mapping) else None
    if isinstance(part, Mapping) and "type" not in part:  # Gemini parts
      if isinstance(part.get("functionCall"), Mapping):
        kind, part = "tool_call", {"value": {"name": part["functionCall"].get("name"),
                                             "arguments": part["functionCall"].get("args", {})}}
      elif isinstance(part.get("functionResponse"), Mapping):
        response = part["functionResponse"].get("response")
        kind, part = "tool_result", {"content": response if isinstance(response, str)
                                     else json.dumps(response, ensure_ascii=False)}
      elif any(k in part for k in ("inlineData", "fileData", "inline_data", "file_data")):
        continue
    if isinstance(part, str):
      texts.append(part)
    elif kind in _TEXT_TYPES and _payload(part) is not None:
      texts.append(_payload(part))
    elif kind in _REASONING_TYPES and _payload(part) is not None:
      reasoning.append(_payload(part))
    elif kind in _CALL_TYPES:
      payload = part.get("value", part.get("text", part))
      calls += _calls(payload, f"{where}.content[{j}]", rec)
    elif kind in _MEDIA_TYPES:
      continue  # not text: no characters to label
    elif kind == "tool_result":
      content = part.get("content")
      if isinstance(content, list):
        content = "".join(_payload(c) or "" for c in content if isinstance(c, Mapping))
      results.append({"role": "tool", "content": content if isinstance(content, str) else "",
                      **({"tool_call_id": part["tool_use_id"]} if "tool_use_id" in part else {})})
    else:
      rec.fail(f"{where}.content[{j}] is not a text part", 0)
  out = {k: v for k, v in msg.items() if k != "content"}
  out["content"] = "".join(texts)
  if reasoning:
    out["reasoning_content"] = "".join(reasoning)
  if calls:
    out["tool_calls"] = list(out.get("tool_calls") or []) + calls
  return out, results


def _message(i: int, msg, rec: Recovery) -> list[tuple[dict, str | None]]:
  """One raw message -> ``[(OpenAI message, kind hint)]`` (tool results may add messages)."""
  if not isinstance(msg, Mapping):
    raise TrajectoryError(f"messages[{i}] must be an object, got {type(msg).__name__}", 0)
  msg = dict(msg)
  if "content" not in msg and isinstance(msg.get("parts"), list):  # Gemini contents
    msg["content"] = msg.pop("parts")
  if "role" not in msg and "from" in msg:
    msg["role"] = msg.pop("from")
    if "value" in msg and "content" not in msg:
      msg["content"] = msg.pop("value")
  role = msg.get("role")
  kind = "observation" if msg.get("message_type") == "observation" else None
  if isinstance(role, str) and role.lower() in _CALL_ROLES:
    calls = _calls(msg.get("content"), f"messages[{i}].content", rec)
    return [({"role": "assistant", "content": "", "tool_calls": calls, "_call_only": True}, None)]
  if isinstance(role, str) and role.lower() in ROLE_ALIASES and role not in ("tool", "user", "system",
                                                                             "assistant", "developer"):
    msg["role"] = ROLE_ALIASES[role.lower()]
  extra: list = []
  if isinstance(msg.get("content"), list):
    msg, results = _split_parts(msg, f"messages[{i}]", rec)
    extra = [(r, None) for r in results]
  if isinstance(msg.get("function_call"), Mapping):
    msg["tool_calls"] = list(msg.get("tool_calls") or []) + _calls(
        msg.pop("function_call"), f"messages[{i}].function_call", rec)
  if msg.get("role") == "tool" and not isinstance(msg.get("content"), (str, list, type(None))):
    msg["content"] = json.dumps(msg["content"], ensure_ascii=False)
  return ([(msg, kind)] if msg.get("content") or msg.get("tool_calls") or msg.get("reasoning_content")
          or not extra else []) + extra


def _messages(raw: Sequence, rec: Recovery) -> tuple[list, list]:
  messages, kinds = [], []
  for i, m in enumerate(raw):
    for msg, kind in _message(i, m, rec):
      if msg.pop("_call_only", False) and messages and messages[-1].get("role") == "assistant" \
          and not messages[-1].get("tool_calls"):
        messages[-1] = {**messages[-1], "tool_calls": msg["tool_calls"]}
        continue
      messages.append(msg)
      kinds.append(kind)
  return messages, kinds


def _fence(action: str) -> str:
  return "```\n" + action.strip("\n") + "\n```"


def _steps(steps: Sequence, rec: Recovery) -> tuple[list, list]:
  messages, kinds = [], []
  for i, step in enumerate(steps):
    if not isinstance(step, Mapping):
      raise TrajectoryError(f"trajectory[{i}] must be an object, got {type(step).__name__}", 0)
    response = step.get("response")
    if not isinstance(response, str) or not response.strip():
      thought, action = step.get("thought") or "", step.get("action") or ""
      if not isinstance(thought, str) or not isinstance(action, str):
        rec.fail(f"trajectory[{i}] thought/action must be strings", 0)
        thought, action = str(thought), str(action)
      response = (thought.strip() + "\n\n" if thought.strip() else "") + (_fence(action) if action.strip() else "")
    messages.append({"role": "assistant", "content": response})
    kinds.append(None)
    obs = step.get("observation")
    if obs is not None:
      messages.append({"role": "user", "content": obs if isinstance(obs, str) else json.dumps(obs)})
      kinds.append("observation")
  return messages, kinds


_SKIP_EVENTS = ("change_agent_state", "agent_state_changed", "recall", "null", "condensation")
_BOOKKEEPING = ("thought", "is_input", "blocking", "hidden", "confirmation_state", "security_risk",
                "is_confirmed", "kernel_init_code", "include_extra", "wait_for_response", "image_urls",
                "impl_source", "translated_ipython_code")


def _events(events: Sequence, rec: Recovery) -> tuple[list, list]:
  messages, kinds = [], []
  for i, ev in enumerate(events):
    if not isinstance(ev, Mapping):
      raise TrajectoryError(f"events[{i}] must be an object, got {type(ev).__name__}", 0)
    if "observation" in ev:
      if ev["observation"] in _SKIP_EVENTS:
        continue
      content = ev.get("content", ev.get("message", ""))
      messages.append({"role": "tool", "content": content if isinstance(content, str) else json.dumps(content)})
      kinds.append(None)
      continue
    action, args = ev.get("action"), ev.get("args") if isinstance(ev.get("args"), Mapping) else {}
    if action in _SKIP_EVENTS or action is None:
      continue
    text = args.get("content") or args.get("final_thought") or ""
    thought = args.get("thought") or ""
    if not isinstance(text, str) or not isinstance(thought, str):
      rec.fail(f"events[{i}].args content/thought must be strings", 0)
      text, thought = str(text), str(thought)
    if action == "system" or ev.get("source") == "user":
      messages.append({"role": "system" if action == "system" else "user", "content": text})
    elif action == "think":
      messages.append({"role": "assistant", "content": "", "reasoning_content": thought})
    elif action in ("message", "finish"):
      messages.append({"role": "assistant", "content": text or thought,
                       **({"reasoning_content": thought} if text and thought else {})})
    else:
      arguments = {k: v for k, v in args.items() if k not in _BOOKKEEPING}
      messages.append({"role": "assistant", "content": thought,
                       "tool_calls": [{"type": "function", "function": {"name": str(action),
                                                                        "arguments": arguments}}]})
    kinds.append(None)
  return messages, kinds


def _flat(schema: str, d: Mapping, rec: Recovery) -> tuple[list, list]:
  """The single-record schemas (alpaca, xlam, dspy) as messages."""
  if schema == "alpaca":
    if not isinstance(d.get("instruction"), str):
      raise TrajectoryError(f"an alpaca sample needs an 'instruction' string, got {d.get('instruction')!r:.40}", 0)
    messages = [{"role": "system", "content": d["system"]}] if isinstance(d.get("system"), str) and d["system"] else []
    for j, pair in enumerate(d.get("history") or []):
      if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise TrajectoryError(f"history[{j}] must be a [prompt, response] pair of strings", 0)
      messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = d.get("instruction", "")
    if isinstance(d.get("input"), str) and d["input"]:
      prompt += "\n" + d["input"]
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": d.get("output")}], \
        [None] * (len(messages) + 2)
  if schema == "xlam":
    calls = _calls(d.get("answers"), "answers", rec)
    return [{"role": "user", "content": d.get("query")},
            {"role": "assistant", "content": "", "tool_calls": calls}], [None, None]
  messages, kinds, i = [], [], 0
  while f"thought_{i}" in d or f"tool_name_{i}" in d:
    thought = d.get(f"thought_{i}") or ""
    call = {"type": "function", "function": {"name": d.get(f"tool_name_{i}") or "",
                                             "arguments": d.get(f"tool_args_{i}") or {}}}
    messages.append({"role": "assistant", "content": thought if isinstance(thought, str) else str(thought),
                     "tool_calls": [call]})
    kinds.append(None)
    if f"observation_{i}" in d:
      obs = d[f"observation_{i}"]
      messages.append({"role": "tool", "content": obs if isinstance(obs, str) else json.dumps(obs, default=str)})
      kinds.append(None)
    i += 1
  return messages, kinds


def normalize(trajectory: Any, schema: str, rec: Recovery) -> Conversation:
  """``trajectory`` in ``schema`` (one of :data:`SCHEMAS`) as a :class:`Conversation`."""
  tools = None
  if schema in ("alpaca", "xlam", "dspy"):
    if not isinstance(trajectory, Mapping):
      raise TrajectoryError(f"an {schema!r} trajectory must be an object, got {type(trajectory).__name__}", 0)
    messages, kinds = _flat(schema, trajectory, rec)
    return Conversation(messages, _tools(trajectory.get("tools"), rec), kinds, schema)
  if schema == "turns":
    turns = trajectory.get("conversations") if isinstance(trajectory, Mapping) else trajectory
    if not isinstance(turns, (list, tuple)) or not turns or not all(isinstance(t, str) for t in turns):
      raise TrajectoryError("a 'turns' trajectory must be a non-empty list of strings", 0)
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    kinds = ["observation" if i % 2 == 0 and i > 0 else None for i in range(len(turns))]
    return Conversation(messages, None, kinds, schema)
  if schema == "openhands":
    events = trajectory
    if isinstance(trajectory, Mapping):
      events = next((trajectory[k] for k in ("trajectory", "history") if isinstance(trajectory.get(k), list)),
                    None)
    if not isinstance(events, (list, tuple)) or not events:
      raise TrajectoryError("an 'openhands' trajectory must be a non-empty list of events", 0)
    messages, kinds = _events(events, rec)
    return Conversation(messages, None, kinds, schema)
  if schema == "swe-agent":
    if isinstance(trajectory, Mapping):
      tools = _tools(trajectory.get("tools"), rec)
      if isinstance(trajectory.get("history"), list):
        messages, kinds = _messages(trajectory["history"], rec)
        return Conversation(messages, tools, kinds, schema)
      trajectory = trajectory.get("trajectory")
    if not isinstance(trajectory, (list, tuple)) or not trajectory:
      raise TrajectoryError("a 'swe-agent' trajectory must be a non-empty list of steps", 0)
    messages, kinds = _steps(trajectory, rec)
    return Conversation(messages, tools, kinds, schema)
  raw = trajectory
  if isinstance(trajectory, Mapping):
    key = "conversations" if schema == "sharegpt" else "messages"
    raw = trajectory.get(key, trajectory.get("messages", trajectory.get("conversations")))
    tools = _tools(trajectory.get("tools"), rec)
    system = trajectory.get("system")
    if isinstance(raw, list) and isinstance(system, str) and system and not (
        raw and isinstance(raw[0], Mapping) and raw[0].get("role", raw[0].get("from")) == "system"):
      raw = [{"role": "system", "content": system}] + list(raw)
  if not isinstance(raw, (list, tuple)) or not raw:
    raise TrajectoryError(
        "chat trajectory must be a non-empty list of messages (or {'messages': [...]}), "
        f"got {type(raw).__name__}{'' if raw else ' (empty)'}", 0)
  messages, kinds = _messages(raw, rec)
  return Conversation(messages, tools, kinds, schema)
