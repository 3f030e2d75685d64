r"""N-scaling of loss + gradient: sad_jax forward_kl and the fused lm-head loss.

Times (median of ``--repeats``) ``value_and_grad`` for N = 1k ... 16k tokens at a
fixed vocabulary, and prints ms per 1k tokens, which stays flat when the cost is
linear in N.

Usage::

  python benchmarks/n_scaling.py                      # V=8192, d=256
  python benchmarks/n_scaling.py --vocab 32000 --max-n 8192
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from sad_jax.losses import _divergences as divergences
from sad_jax.backends import _fused as fused


def _median_time(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--d", type=int, default=256)
  parser.add_argument("--max-n", type=int, default=16384)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"# {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
        f"V={args.vocab} d={args.d}; median of {args.repeats}")
  print(f"{'N':>6} {'kl ms':>8} {'kl ms/1k tok':>12} {'fused ms':>9} {'fused ms/1k tok':>15}")
  kl = jax.jit(jax.value_and_grad(lambda s, t: divergences.forward_kl(s, t).sum()))
  fl = jax.jit(jax.value_and_grad(
      lambda hs, ws, ht, wt: fused.fused_distill_loss(hs, ws, ht, wt), argnums=(0, 1)))
  keys = jax.random.split(jax.random.key(0), 4)
  ws = jax.random.normal(keys[1], (args.d, args.vocab)) / args.d ** 0.5
  wt = jax.random.normal(keys[3], (args.d, args.vocab)) / args.d ** 0.5
  n = 1024
  while n <= args.max_n:
    s = jax.random.normal(keys[0], (n, args.vocab)) * 3
    t = jax.random.normal(keys[2], (n, args.vocab)) * 3
    t_kl = _median_time(kl, (s, t), args.repeats)
    del s, t
    hs = jax.random.normal(keys[0], (n, args.d))
    ht = jax.random.normal(keys[2], (n, args.d))
    t_fused = _median_time(fl, (hs, ws, ht, wt), args.repeats)
    print(f"{n:>6} {t_kl * 1e3:>8.1f} {t_kl * 1e6 / n:>12.2f} {t_fused * 1e3:>9.1f} "
          f"{t_fused * 1e6 / n:>15.2f}", flush=True)
    n *= 2


if __name__ == "__main__":
  main()
