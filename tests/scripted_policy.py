"""A scripted agent policy for the example's rollout-loop tests (``examples.agent_env.loop``)."""
from __future__ import annotations


class ScriptedPolicy:
  """Writes episode ``i``'s next turn with ``write(i, feeds_so_far)``; records the feeds."""

  def __init__(self, write):
    self.write = write
    self.fed: dict[int, list[str]] = {}

  def begin(self, n):
    self.fed = {i: [] for i in range(n)}

  def act(self, feeds):
    out = {}
    for i, text in feeds.items():
      self.fed[i].append(text)
      out[i] = self.write(i, self.fed[i])
    return out
