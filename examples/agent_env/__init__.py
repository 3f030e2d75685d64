"""A deterministic multi-step tool-use environment for the agent distillation example."""
from examples.agent_env.calculator import (CalculatorEnv, StepResult, Task, evaluate_expression,
                                           expert_trajectory, expert_turns, generate_tasks,
                                           is_held_out_number, observation_text, prompt_text)
from examples.agent_env.loop import Episode, ExpertPolicy, Policy, rollout

__all__ = ["CalculatorEnv", "Episode", "ExpertPolicy", "Policy", "StepResult", "Task",
           "evaluate_expression", "expert_trajectory", "expert_turns", "generate_tasks",
           "is_held_out_number", "observation_text", "prompt_text", "rollout"]
