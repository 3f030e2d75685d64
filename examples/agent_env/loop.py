"""The agent loop: a policy writes assistant turns, the environment answers.

A policy is any object with

* ``begin(n)``: a new batch of ``n`` episodes starts;
* ``act(feeds: dict[int, str]) -> dict[int, str]``: for each still-running
  episode ``i``, ``feeds[i]`` is the text the environment appended since the
  policy's last turn (the prompt on the first call, then an observation ending in
  the next assistant header); the policy returns episode ``i``'s next assistant
  turn (ending with ``<|im_end|>`` or not).

so a batched model policy can keep a KV cache per episode and only process the
new text.
"""
from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from typing import Any, Protocol


class Policy(Protocol):

  def begin(self, n: int) -> None:
    ...

  def act(self, feeds: dict[int, str]) -> dict[int, str]:
    ...


@dataclasses.dataclass(frozen=True)
class Episode:
  """The outcome of one episode.

  Attributes:
    task: the task (the environment's ``Task``).
    text: the full ChatML trajectory (prompt, turns, observations).
    success: the environment's verdict.
    turns: assistant turns taken.
    valid_actions: turns with a valid tool call or a well-formed answer.
  """
  task: Any
  text: str
  success: bool
  turns: int
  valid_actions: int


def rollout(policy: Policy, tasks: Sequence, *, env: types.ModuleType,
            max_turns: int | None = None) -> list[Episode]:
  """Runs one episode per task, all in one batch, until each ends.

  Args:
    policy: see the module docstring.
    tasks: the tasks (episode ``i`` is ``tasks[i]``).
    env: the environment module (:func:`examples.agent_env.get`).
    max_turns: the episode turn limit; default the environment's ``MAX_TURNS``.

  Returns:
    One :class:`Episode` per task, in order.
  """
  limit = env.MAX_TURNS if max_turns is None else max_turns
  envs = [env.Env(t, max_turns=limit) for t in tasks]
  feeds = {i: env.reset() for i, env in enumerate(envs)}
  policy.begin(len(envs))
  while feeds:
    turns = policy.act(feeds)
    if set(turns) != set(feeds):
      raise ValueError(f"policy answered episodes {sorted(turns)}, expected {sorted(feeds)}")
    feeds = {}
    for i, turn in turns.items():
      result = envs[i].step(turn)
      if not result.done:
        feeds[i] = result.observation
  return [Episode(env.task, env.text, env.success, env.turns, env.valid_actions) for env in envs]


class ExpertPolicy:
  """The scripted expert: replays the environment's ``expert_turns`` of each task."""

  def __init__(self, env: types.ModuleType, tasks: Sequence):
    self._turns = [env.expert_turns(t) for t in tasks]
    self._next: list[int] = []

  def begin(self, n: int) -> None:
    if n != len(self._turns):
      raise ValueError(f"ExpertPolicy knows {len(self._turns)} tasks, got {n} episodes")
    self._next = [0] * n

  def act(self, feeds: dict[int, str]) -> dict[int, str]:
    out = {}
    for i in feeds:
      out[i] = self._turns[i][self._next[i]]
      self._next[i] += 1
    return out
