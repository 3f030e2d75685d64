"""The text conventions and the episode base class every agent environment shares.

Trajectories are ChatML in the Qwen / Hermes tool-calling layout (the layout
:func:`sad_jax.data.trajectories.segment` reads with ``format="chatml"``)::

  <|im_start|>system
  SYSTEM PROMPT<|im_end|>
  <|im_start|>user
  QUESTION<|im_end|>
  <|im_start|>assistant
  <think>REASONING</think>
  <tool_call>{"name": TOOL, "arguments": {ARGUMENT: VALUE}}</tool_call><|im_end|>
  <|im_start|>user
  <tool_response>RESULT</tool_response><|im_end|>
  <|im_start|>assistant
  <think>REASONING</think>
  FINAL ANSWER<|im_end|>

An assistant turn is ``<think>...</think>`` followed by either one tool call or
a final answer (no tool call). The segmenter makes ``<think>`` text REASONING,
the tool call and the answer ACTION, the tool response OBSERVATION.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def distinct_tasks(n: int, draw: Callable[[], Any]) -> list:
  """The first ``n`` distinct results of repeated ``draw()`` calls, in draw order."""
  tasks, seen = [], set()
  while len(tasks) < n:
    task = draw()
    if task not in seen:
      seen.add(task)
      tasks.append(task)
  return tasks


def prompt_text(system: str, user: str) -> str:
  """The ChatML prefix an agent continues: system, user message, assistant header."""
  return (f"{IM_START}system\n{system}{IM_END}\n"
          f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")


def observation_text(result: str) -> str:
  """What follows an assistant turn that called a tool (ends with the next header)."""
  return (f"\n{IM_START}user\n<tool_response>{result}</tool_response>{IM_END}\n"
          f"{IM_START}assistant\n")


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
  """``<tool_call>{"name": name, "arguments": arguments}</tool_call>`` (compact JSON)."""
  return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class ToolCallError(ValueError):
  """A malformed tool call; the message is what the environment answers the agent."""


def parse_tool_call(content: str, name: str, argument: str) -> str | None:
  """The string argument ``argument`` of the one call to tool ``name`` in ``content``.

  Args:
    content: an assistant turn without its closing ``<|im_end|>``.
    name: the tool's name.
    argument: the name of its one string argument.

  Returns:
    The argument's value, or None when the turn holds no tool call (a final answer).

  Raises:
    ToolCallError: more than one call, a call that is not JSON, or one that is not
      ``{"name": name, "arguments": {argument: <string>}}``.
  """
  calls = _TOOL_CALL.findall(content)
  if not calls:
    return None
  if len(calls) > 1:
    raise ToolCallError("one tool call per turn")
  try:
    call = json.loads(calls[0])
  except json.JSONDecodeError:
    raise ToolCallError("tool call is not valid JSON") from None
  if not (isinstance(call, dict) and call.get("name") == name
          and isinstance(call.get("arguments"), dict)
          and isinstance(call["arguments"].get(argument), str)):
    raise ToolCallError(f'expected {{"name": "{name}", "arguments": {{"{argument}": ...}}}}')
  return call["arguments"][argument]


@dataclasses.dataclass
class StepResult:
  """What the environment answers to one assistant turn.

  Attributes:
    observation: text to append before the next assistant turn (None when done).
    done: the episode is over: the turn held no tool call (an answer, or
      neither: a failure) or the turn limit was reached.
    success: the episode is over with the correct answer.
    valid_action: the turn held exactly one well-formed tool call that the tool
      could run, or a well-formed answer.
  """
  observation: str | None
  done: bool
  success: bool
  valid_action: bool


class ToolEnv:
  """One episode of a task: keeps the text, counts turns, ends the episode.

  Subclasses implement :meth:`prompt` (the task's ChatML prefix) and :meth:`act`
  (run one turn's tool call, or judge its final answer); :meth:`step` does the
  rest: the turn limit, the running text, the counters.

  Args:
    task: the task.
    max_turns: the episode ends (unsuccessfully) after this many assistant turns.

  Attributes:
    task, max_turns: the arguments.
    text: the trajectory so far (prompt, turns, observations).
    turns: assistant turns taken.
    valid_actions: turns with a valid tool call or a well-formed answer.
    done, success: the episode is over / over with the correct answer.
  """

  def __init__(self, task, max_turns: int):
    if max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    self.task = task
    self.max_turns = max_turns
    self.turns = 0
    self.valid_actions = 0
    self.done = False
    self.success = False
    self.text = ""

  def prompt(self) -> str:
    """The ChatML prefix of :attr:`task` (:func:`prompt_text`)."""
    raise NotImplementedError

  def act(self, content: str) -> tuple[str | None, bool, bool]:
    """Runs one assistant turn (without its ``<|im_end|>``).

    Returns:
      ``(result, valid, correct)``: ``result`` is the tool's answer (or an error
      text) to show in the next observation, or None when the turn ends the
      episode (a final answer, or a turn with neither call nor answer);
      ``valid``: see :attr:`StepResult.valid_action`; ``correct``: the turn
      ends the episode with the right answer (False when ``result`` is not None).
    """
    raise NotImplementedError

  def reset(self) -> str:
    """Starts the episode; returns the prompt (ending with the assistant header)."""
    self.turns = self.valid_actions = 0
    self.done = self.success = False
    self.text = self.prompt()
    return self.text

  def step(self, assistant_turn: str) -> StepResult:
    """Executes one assistant turn (its text, with or without the closing ``<|im_end|>``)."""
    if self.done:
      raise RuntimeError("step() on a finished episode; call reset()")
    if not assistant_turn.endswith(IM_END):
      assistant_turn += IM_END
    content = assistant_turn[:-len(IM_END)]
    self.text += assistant_turn
    self.turns += 1
    result, valid, correct = self.act(content)
    self.valid_actions += int(valid)
    if result is None:
      self.done = True
      self.success = bool(correct)
      return StepResult(None, True, self.success, valid)
    if self.turns >= self.max_turns:
      self.done = True
      return StepResult(None, True, False, valid)
    obs = observation_text(result)
    self.text += obs
    return StepResult(obs, False, False, valid)
