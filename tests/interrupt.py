"""A train step that raises ``KeyboardInterrupt`` on a given call (resume tests)."""
from __future__ import annotations


def interrupt_at(step, call: int):
  """``step`` wrapped so that its ``call``-th call raises ``KeyboardInterrupt`` (as Ctrl-C)."""
  calls = {"n": 0}

  def interrupting_step(state, batch):
    calls["n"] += 1
    if calls["n"] == call:
      raise KeyboardInterrupt
    return step(state, batch)
  return interrupting_step
