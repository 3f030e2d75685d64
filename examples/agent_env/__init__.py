"""Agent environments of the distillation example, selected by name (``config.env``).

An environment is a module ``examples/agent_env/<name>.py``; :func:`get` imports
it by name and checks that it has the interface below. The example reads
nothing else from it, so a new environment is one new module.

**The interface** (module-level names; :mod:`examples.agent_env.calculator` is
the reference implementation):

* ``SPLITS = ("train", "test")`` -- the held-out split: no ``test`` task is a
  ``train`` task, and ``test`` tasks hold what ``train`` never shows (the
  calculator: operands ending in 7).
* ``OPTIONS: dict[str, int | float | str | bool]`` -- the keyword options of
  ``generate_tasks`` and their defaults; the example's ``config.env_options``
  starts from it.
* ``MAX_TURNS: int`` -- the default turn limit of an episode (``config.max_turns``).
* ``POSITIONS: str`` -- the position encoding of the example's models on this
  environment (:data:`examples.agent_lm.POSITIONS`; ``config.teacher.model.positions``
  and ``config.student.model.positions`` start from it).
* ``STUDY_TEACHER_STEPS: int`` -- the teacher's training steps in the ``study``
  preset: a schedule whose teacher reaches the study's 90% held-out success.
* ``Task`` -- a frozen (hashable, comparable) dataclass: one task.
* ``generate_tasks(split, n, seed, **options) -> list[Task]`` -- ``n`` distinct
  tasks of a split, a deterministic function of the arguments (``ValueError``
  naming an unknown split or a bad option).
* ``expert_turns(task) -> list[str]`` -- the expert policy: its assistant turns,
  each ending with ``<|im_end|>``; the expert solves every task.
* ``expert_trajectory(task) -> str`` -- the expert's full trajectory: exactly the
  text of a :func:`rollout` of :class:`ExpertPolicy` on ``task``.
* ``Env(task, max_turns=MAX_TURNS)`` -- one episode (a :class:`base.ToolEnv`
  subclass, or anything with the same members): ``reset() -> str`` (the prompt,
  ending with the assistant header), ``step(turn) -> StepResult`` (runs the
  turn's tool call and answers with the observation, or ends the episode and
  checks the answer itself: success is the environment's verdict), and the
  attributes ``task``, ``text``, ``turns``, ``valid_actions``, ``done``, ``success``.

**Text conventions** (:mod:`examples.agent_env.base`): ChatML; every assistant
turn is ``<think>...</think>`` then one ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` or a final answer; tool results come back as
``<tool_response>...</tool_response>`` user turns (:func:`base.observation_text`).
Only the special tokens of :data:`examples.agent_lm.SPECIAL_TOKENS` appear, so
the example's tokenizer and span ids (:func:`examples.agent_lm.encode_trajectory`)
work unchanged; numbers are tokenized one digit per token.
"""
from __future__ import annotations

import importlib
import pkgutil
import types

from examples.agent_env.base import (IM_END, IM_START, StepResult, ToolCallError, ToolEnv,
                                     observation_text, parse_tool_call, prompt_text,
                                     tool_call_text)
from examples.agent_env.loop import Episode, ExpertPolicy, Policy, rollout

REQUIRED = ("SPLITS", "OPTIONS", "MAX_TURNS", "POSITIONS", "STUDY_TEACHER_STEPS", "Task", "Env",
            "generate_tasks", "expert_turns", "expert_trajectory")
_NOT_ENVIRONMENTS = ("base", "loop")


def names() -> tuple[str, ...]:
  """The environment modules of this package, sorted."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if m.name not in _NOT_ENVIRONMENTS and not m.name.startswith("_")))


def get(name: str) -> types.ModuleType:
  """The environment module ``examples.agent_env.<name>``, checked against the interface.

  Raises:
    ValueError: ``name`` is no environment of this package, or its module lacks
      names of the interface (both listed).
  """
  if name not in names():
    raise ValueError(f"unknown environment {name!r} (config.env); available: "
                     f"{', '.join(names())}")
  module = importlib.import_module(f"{__name__}.{name}")
  missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
  if missing:
    raise ValueError(f"environment {name!r} ({module.__file__}) lacks {', '.join(missing)} "
                     "of the interface in examples/agent_env/__init__.py")
  if tuple(module.SPLITS) != ("train", "test"):
    raise ValueError(f"environment {name!r} has SPLITS={module.SPLITS!r}, expected "
                     "('train', 'test')")
  return module


__all__ = ["Episode", "ExpertPolicy", "IM_END", "IM_START", "Policy", "REQUIRED", "StepResult",
           "ToolCallError", "ToolEnv", "get", "names", "observation_text", "parse_tool_call",
           "prompt_text", "rollout", "tool_call_text"]
