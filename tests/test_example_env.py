"""The agent-environment interface (examples/agent_env): registry and per-environment contract.

Every module that :func:`examples.agent_env.names` lists is run through the
contract of the interface documented in ``examples/agent_env/__init__.py``.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import examples.agent_env as agent_env  # noqa: E402
from examples.agent_env import base  # noqa: E402
from sad_jax.data import trajectories as tj  # noqa: E402
from sad_jax.objective import SpanType  # noqa: E402

ENVS = agent_env.names()


def test_registry_lists_the_calculator_and_refuses_unknown_names():
  assert "calculator" in ENVS and "base" not in ENVS and "loop" not in ENVS
  with pytest.raises(ValueError, match=r"unknown environment 'nope' \(config.env\); available: "
                                       r".*calculator"):
    agent_env.get("nope")


def test_registry_names_what_a_module_lacks(tmp_path, monkeypatch):
  (tmp_path / "half.py").write_text("SPLITS = ('train', 'test')\nMAX_TURNS = 2\n")
  monkeypatch.setattr(agent_env, "__path__", [*agent_env.__path__, str(tmp_path)])
  with pytest.raises(ValueError, match="environment 'half' .* lacks OPTIONS, POSITIONS, "
                                       "STUDY_TEACHER_STEPS, Task, Env, generate_tasks, expert_turns, expert_trajectory"):
    agent_env.get("half")
  sys.modules.pop("examples.agent_env.half", None)


@pytest.mark.parametrize("name", ENVS)
def test_contract_positions_set_the_config_models(name):
  from configs import agent_distill  # pylint: disable=g-import-not-at-top
  from examples import agent_lm  # pylint: disable=g-import-not-at-top
  env = agent_env.get(name)
  assert env.POSITIONS in agent_lm.POSITIONS
  for preset in ("default", "smoke"):
    c = agent_distill.get_config(f"{preset},env={name}")
    assert c.teacher.model.positions == c.student.model.positions == env.POSITIONS
  assert agent_distill.get_config(f"study,env={name}").teacher.steps == env.STUDY_TEACHER_STEPS


@pytest.mark.parametrize("name", ENVS)
def test_contract_tasks_are_seeded_distinct_and_split(name):
  env = agent_env.get(name)
  a = env.generate_tasks("train", 40, 3, **env.OPTIONS)
  assert a == env.generate_tasks("train", 40, 3)
  assert a != env.generate_tasks("train", 40, 4)
  assert len(set(a)) == 40 and all(dataclasses.is_dataclass(t) for t in a)
  test = env.generate_tasks("test", 200, 3)
  train = env.generate_tasks("train", 200, 3)
  assert not set(train) & set(test)
  with pytest.raises(ValueError, match="split"):
    env.generate_tasks("dev", 1, 0)


@pytest.mark.parametrize("name", ENVS)
def test_contract_expert_solves_every_task_and_its_text_is_the_rollout(name):
  env = agent_env.get(name)
  tasks = env.generate_tasks("train", 30, 0) + env.generate_tasks("test", 30, 0)
  episodes = agent_env.rollout(agent_env.ExpertPolicy(env, tasks), tasks, env=env)
  assert all(e.success for e in episodes)
  assert all(e.valid_actions == e.turns <= env.MAX_TURNS for e in episodes)
  assert [e.text for e in episodes] == [env.expert_trajectory(t) for t in tasks]
  for t in tasks:
    assert all(turn.endswith(base.IM_END) for turn in env.expert_turns(t))


@pytest.mark.parametrize("name", ENVS)
def test_contract_trajectories_segment_into_agent_spans(name):
  env = agent_env.get(name)
  task = env.generate_tasks("test", 1, 7)[0]
  seg = tj.segment(env.expert_trajectory(task), format="chatml")
  turns = len(env.expert_turns(task))
  assert len(seg.texts(SpanType.REASONING)) == turns
  assert len(seg.texts(SpanType.ACTION)) == turns
  assert len(seg.texts(SpanType.OBSERVATION)) == turns - 1


@pytest.mark.parametrize("name", ENVS)
def test_contract_episode_ends_on_a_turn_without_action_and_refuses_more(name):
  env = agent_env.get(name)
  episode = env.Env(env.generate_tasks("test", 1, 0)[0])
  assert episode.reset().endswith(f"{base.IM_START}assistant\n")
  r = episode.step("<think>nothing to do</think>")
  assert r.done and not r.success and not r.valid_action and episode.done
  with pytest.raises(RuntimeError, match="finished episode"):
    episode.step("<think>again</think>")


@pytest.mark.parametrize("content,expected", [
    ("<think>x</think>The answer is 3.", None),
    ('<tool_call>{"name": "t", "arguments": {"q": "a b"}}</tool_call>', "a b"),
])
def test_parse_tool_call(content, expected):
  assert base.parse_tool_call(content, "t", "q") == expected


@pytest.mark.parametrize("content,message", [
    ("<tool_call>{}</tool_call><tool_call>{}</tool_call>", "one tool call per turn"),
    ("<tool_call>{nope</tool_call>", "not valid JSON"),
    ('<tool_call>{"name": "u", "arguments": {"q": "a"}}</tool_call>',
     r'expected \{"name": "t", "arguments": \{"q": ...\}\}'),
    ('<tool_call>{"name": "t", "arguments": {"q": 3}}</tool_call>', "expected"),
])
def test_parse_tool_call_errors(content, message):
  with pytest.raises(base.ToolCallError, match=message):
    base.parse_tool_call(content, "t", "q")


def test_tool_env_turn_limit():
  class Echo(base.ToolEnv):
    def prompt(self):
      return base.prompt_text("sys", "q")

    def act(self, content):
      return (content, True, False) if content else (None, False, False)

  e = Echo("task", max_turns=2)
  e.reset()
  assert e.step("a").observation == base.observation_text("a")
  r = e.step("b")
  assert r.done and not r.success and e.turns == 2 and e.valid_actions == 2
  assert e.text == base.prompt_text("sys", "q") + "a<|im_end|>" + base.observation_text("a") \
      + "b<|im_end|>"
  with pytest.raises(ValueError, match="max_turns must be >= 1, got 0"):
    Echo("task", max_turns=0)
