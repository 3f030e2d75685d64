"""float64 numpy references shared by the tests, written from the formulas."""
from __future__ import annotations

import numpy as np


def np_softmax(z, temperature=1.0):
  """softmax(z / T) over the last axis, in float64."""
  z = np.asarray(z, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_kl(a, b):
  """KL(a || b) over the last axis, with 0 log 0 = 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0).sum(-1)
