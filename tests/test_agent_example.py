"""Tests of the end-to-end agent distillation example (examples/)."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples.agent_env import calculator as calc  # noqa: E402
from examples.agent_env import loop as rollout_lib  # noqa: E402
from sad_jax import trajectories as tj  # noqa: E402
from sad_jax.spans import SpanType  # noqa: E402


# ---------------------------------------------------------------- environment


def test_tasks_are_deterministic_and_seeded():
  a = calc.generate_tasks("train", 50, seed=3)
  assert a == calc.generate_tasks("train", 50, seed=3)
  assert a != calc.generate_tasks("train", 50, seed=4)
  assert len(set(a)) == 50


def test_held_out_split_has_unseen_numbers():
  train = calc.generate_tasks("train", 500, seed=0)
  test = calc.generate_tasks("test", 500, seed=0)
  assert not any(calc.is_held_out_number(x) for t in train for x in t.operands)
  assert all(any(calc.is_held_out_number(x) for x in t.operands) for t in test)
  assert not set(train) & set(test)


def test_expert_succeeds_on_every_task():
  tasks = calc.generate_tasks("train", 200, seed=1) + calc.generate_tasks("test", 200, seed=1)
  episodes = rollout_lib.rollout(rollout_lib.ExpertPolicy(tasks), tasks)
  assert all(e.success for e in episodes)
  assert all(e.valid_actions == e.turns == len(e.task.ops) + 1 for e in episodes)
  assert [e.text for e in episodes] == [calc.expert_trajectory(t) for t in tasks]


def test_expert_trajectory_segments_into_reasoning_actions_observations():
  task = calc.Task((12, 30, 4), ("+", "*"))
  seg = tj.segment(calc.expert_trajectory(task), format="chatml")
  assert seg.texts(SpanType.OBSERVATION) == ["<tool_response>42</tool_response>",
                                             "<tool_response>168</tool_response>"]
  actions = seg.texts(SpanType.ACTION)
  assert json.loads(actions[1][len("<tool_call>"):-len("</tool_call>")]) == {
      "name": "calculator", "arguments": {"expression": "42 * 4"}}
  assert actions[-1] == "The answer is 168."
  assert len(seg.texts(SpanType.REASONING)) == 3


def test_env_executes_tool_calls_and_checks_the_answer_itself():
  task = calc.Task((12, 30), ("+",))
  env = calc.CalculatorEnv(task, max_turns=4)
  assert env.reset().endswith("<|im_start|>assistant\n")
  r = env.step(calc.tool_call_text("(12 + 30) * 2"))  # any valid expression is run
  assert r.valid_action and not r.done and "<tool_response>84</tool_response>" in r.observation
  r = env.step('<tool_call>{"name": "calc"}</tool_call>')
  assert not r.valid_action and "error" in r.observation
  r = env.step("<tool_call>not json</tool_call>")
  assert not r.valid_action and not r.done
  r = env.step("The answer is 43.")  # wrong answer
  assert r.done and r.valid_action and not r.success
  env.reset()
  assert env.step("<think>easy</think>\nThe answer is 42.<|im_end|>").success


def test_env_turn_limit_and_turn_without_action():
  env = calc.CalculatorEnv(calc.Task((2, 3), ("*",)), max_turns=2)
  env.reset()
  assert not env.step(calc.tool_call_text("2 * 3")).done
  r = env.step(calc.tool_call_text("2 * 3"))
  assert r.done and not r.success
  env.reset()
  r = env.step("<think>hmm</think>")
  assert r.done and not r.success and not r.valid_action
  with pytest.raises(RuntimeError, match="finished episode"):
    env.step("The answer is 6.")


@pytest.mark.parametrize("expr,value", [("2 + 3 * 4", 14), ("-(5 - 7) * 3", 6), ("10 - -2", 12)])
def test_calculator_evaluates(expr, value):
  assert calc.evaluate_expression(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os')", "7 / 2", "1.5 + 1", "x + 1", "99999999 * 99999999"])
def test_calculator_rejects(expr):
  with pytest.raises(ValueError):
    calc.evaluate_expression(expr)


class _ScriptedPolicy:
  """Answers from a fixed script and records what the loop fed it."""

  def __init__(self, scripts):
    self.scripts = scripts
    self.fed: dict[int, list[str]] = {}

  def begin(self, n):
    self.fed = {i: [] for i in range(n)}

  def act(self, feeds):
    out = {}
    for i, text in feeds.items():
      self.fed[i].append(text)
      out[i] = self.scripts[i][len(self.fed[i]) - 1]
    return out


def test_rollout_loop_with_a_scripted_policy():
  tasks = [calc.Task((2, 3), ("*",)), calc.Task((4, 5, 6), ("+", "-"))]
  policy = _ScriptedPolicy([
      [calc.tool_call_text("2 * 3"), "The answer is 6."],
      ["oops", "never used"],
  ])
  eps = rollout_lib.rollout(policy, tasks, max_turns=5)
  assert [e.success for e in eps] == [True, False]
  assert [e.turns for e in eps] == [2, 1]
  assert [e.valid_actions for e in eps] == [2, 0]
  assert policy.fed[0][0] == calc.prompt_text(tasks[0])
  assert policy.fed[0][1] == calc.observation_text("6")
  assert eps[0].text == (calc.prompt_text(tasks[0]) + calc.tool_call_text("2 * 3") + "<|im_end|>"
                         + calc.observation_text("6") + "The answer is 6.<|im_end|>")
