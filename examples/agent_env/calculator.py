"""A multi-step calculator agent environment, its tasks and an expert policy.

A task asks for the value of a left-nested arithmetic expression such as
``((37 + 58) * 4) - 19``. The agent has one tool, ``calculator``, that evaluates
one expression; it must solve the task one operation at a time, copying each
intermediate result from the previous observation into the next tool call, then
state ``The answer is N.``. The numbers are large enough (products up to six
digits) that guessing does not work: the tool is needed and so is copying.

Everything is ChatML in the layout of :mod:`examples.agent_env.base`::

  <|im_start|>system
  Solve the task with the calculator tool, one operation per call.<|im_end|>
  <|im_start|>user
  What is ((37 + 58) * 4) - 19?<|im_end|>
  <|im_start|>assistant
  <think>First, 37 + 58.</think>
  <tool_call>{"name": "calculator", "arguments": {"expression": "37 + 58"}}</tool_call><|im_end|>
  <|im_start|>user
  <tool_response>95</tool_response><|im_end|>
  <|im_start|>assistant
  ...
  <|im_start|>assistant
  <think>So the result is 361.</think>
  The answer is 361.<|im_end|>

Splits. Operands lie in ``[2, 99]``. Numbers ending in 7 (``7, 17, ..., 97``) are
*held-out numbers*: a ``train`` task has none of them as an operand, a ``test``
task has at least one, so every held-out task is unseen in training.
"""
from __future__ import annotations

import ast
import dataclasses
import re

import numpy as np

from examples.agent_env import base
from examples.agent_env.base import IM_END, observation_text

SYSTEM_PROMPT = "Solve the task with the calculator tool, one operation per call."
OPS = ("+", "-", "*")
SPLITS = ("train", "test")
OPTIONS = {"min_ops": 2, "max_ops": 3}  # generate_tasks' options and their defaults
MAX_TURNS = 6  # 3 tool calls + the answer need 4
POSITIONS = "learned"  # a rotary teacher learns it more slowly (4.5% held-out at step 750)
STUDY_TEACHER_STEPS = 3500  # 91.2% held-out success (docs/agent_study.md)
MIN_OPERAND, MAX_OPERAND = 2, 99
_ANSWER = re.compile(r"The answer is (-?\d+)\.")


def is_held_out_number(value: int) -> bool:
  """Whether an operand is reserved for the ``test`` split (it ends in 7)."""
  return value % 10 == 7


@dataclasses.dataclass(frozen=True)
class Task:
  """One calculator task: ``((operands[0] ops[0] operands[1]) ops[1] ...)``.

  Attributes:
    operands: ``n + 1`` ints in ``[2, 99]``.
    ops: ``n`` operators from :data:`OPS`.
  """
  operands: tuple[int, ...]
  ops: tuple[str, ...]

  def __post_init__(self):
    if len(self.operands) != len(self.ops) + 1 or not self.ops:
      raise ValueError(f"a task needs n >= 1 ops and n + 1 operands, got ops={self.ops} "
                       f"operands={self.operands}")
    if any(op not in OPS for op in self.ops):
      raise ValueError(f"ops must be in {OPS}, got {self.ops}")

  @property
  def question(self) -> str:
    """``What is ((a + b) * c) - d?``: outer pair of parentheses omitted."""
    expr = str(self.operands[0])
    for i, (op, x) in enumerate(zip(self.ops, self.operands[1:])):
      expr = f"{expr} {op} {x}" if i == 0 else f"({expr}) {op} {x}"
    return f"What is {expr}?"

  def intermediate_results(self) -> list[int]:
    """The value after each operation; the last one is the answer."""
    out, value = [], self.operands[0]
    for op, x in zip(self.ops, self.operands[1:]):
      value = _apply(op, value, x)
      out.append(value)
    return out

  @property
  def answer(self) -> int:
    return self.intermediate_results()[-1]


def _apply(op: str, a: int, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  return a * b


def generate_tasks(split: str, n: int, seed: int, *, min_ops: int = OPTIONS["min_ops"],
                   max_ops: int = OPTIONS["max_ops"]) -> list[Task]:
  """``n`` distinct tasks of a split, a deterministic function of the arguments.

  Args:
    split: ``"train"`` (no operand ends in 7) or ``"test"`` (some operand does).
    n: number of tasks.
    seed: numpy seed; the same arguments always give the same list.
    min_ops, max_ops: range of the number of operations per task.

  Returns:
    ``n`` distinct :class:`Task` s.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 1 <= min_ops <= max_ops:
    raise ValueError(f"need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  values = np.arange(MIN_OPERAND, MAX_OPERAND + 1)
  allowed = values[~np.vectorize(is_held_out_number)(values)]
  held = values[np.vectorize(is_held_out_number)(values)]

  def draw() -> Task:
    k = int(rng.integers(min_ops, max_ops + 1))
    ops = tuple(str(o) for o in rng.choice(OPS, size=k))
    operands = [int(v) for v in rng.choice(allowed, size=k + 1)]
    if split == "test":
      # At least one held-out operand, at a random place (sometimes more).
      for j in {int(rng.integers(0, k + 1)), int(rng.integers(0, k + 1))}:
        operands[j] = int(rng.choice(held))
    return Task(tuple(operands), ops)

  return base.distinct_tasks(n, draw)


def prompt_text(task: Task) -> str:
  """The ChatML prefix an agent continues: system, user question, assistant header."""
  return base.prompt_text(SYSTEM_PROMPT, task.question)


def tool_call_text(expression: str) -> str:
  """The calculator call on ``expression``."""
  return base.tool_call_text("calculator", {"expression": expression})


def expert_turns(task: Task) -> list[str]:
  """The expert's assistant turns (each ends with ``<|im_end|>``)."""
  turns, value = [], task.operands[0]
  for i, (op, x) in enumerate(zip(task.ops, task.operands[1:])):
    expression = f"{value} {op} {x}"
    lead = "First" if i == 0 else "Next"
    turns.append(f"<think>{lead}, {expression}.</think>\n{tool_call_text(expression)}{IM_END}")
    value = _apply(op, value, x)
  turns.append(f"<think>So the result is {value}.</think>\nThe answer is {value}.{IM_END}")
  return turns


def expert_trajectory(task: Task) -> str:
  """The full ChatML trajectory of the expert on ``task``."""
  turns = expert_turns(task)
  results = task.intermediate_results()
  text = prompt_text(task)
  for i, turn in enumerate(turns):
    text += turn
    if i < len(results):
      text += observation_text(str(results[i]))
  return text


def evaluate_expression(expression: str) -> int:
  """Evaluates integer arithmetic with ``+ - *``, parentheses and unary minus.

  Raises:
    ValueError: anything else (names, calls, division, floats, huge numbers).
  """
  try:
    tree = ast.parse(expression.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"cannot parse expression {expression!r}") from e

  def ev(node):
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      v = ev(node.operand)
      return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
      a, b = ev(node.left), ev(node.right)
      out = _apply({ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}[type(node.op)], a, b)
      if abs(out) >= 10**12:
        raise ValueError("number too large")
      return out
    raise ValueError(f"unsupported syntax {type(node).__name__} in {expression!r}")

  return ev(tree)


class CalculatorEnv(base.ToolEnv):
  """One episode of a :class:`Task`: parses assistant turns, runs the tool, checks success.

  Args:
    task: the task.
    max_turns: the episode ends (unsuccessfully) after this many assistant turns.
  """

  def __init__(self, task: Task, max_turns: int = MAX_TURNS):
    super().__init__(task, max_turns)

  def prompt(self) -> str:
    return prompt_text(self.task)

  def act(self, content: str) -> tuple[str | None, bool, bool]:
    try:
      expression = base.parse_tool_call(content, "calculator", "expression")
    except base.ToolCallError as e:
      return f"error: {e}", False, False
    if expression is not None:
      try:
        return str(evaluate_expression(expression)), True, False
      except ValueError as e:
        return f"error: {e}", False, False
    match = _ANSWER.search(content)
    return None, match is not None, match is not None and int(match.group(1)) == self.task.answer


Env = CalculatorEnv  # the environment interface's name (examples.agent_env)
