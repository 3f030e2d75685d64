r"""Loss + gradient time of the per-token divergences: naive optax vs sad_jax.

For each divergence and size it times, in one process and interleaved so that a
loaded machine slows every variant alike:

* ``naive``: the optax / ``jax.nn`` composition under ``jax.value_and_grad``
  (for ``forward_kl``: ``optax.kl_divergence(log_softmax(s/T), softmax(t/T))``);
* ``sad_jax``: the public :mod:`sad_jax.losses._divergences` function (fused custom VJP);
* ``a + b``: one elementwise pass over the same two arrays, the memory-bound floor.

Each entry is the median over ``--repeats`` rounds of the mean of ``--inner`` calls.
``--block-elements 18,20,22`` adds one ``sad_jax`` variant per row-block size
``2**k`` (:data:`sad_jax.losses._divergences.BLOCK_ELEMENTS`, read when the function is
traced), printed as extra rows; ``--baseline-rev REV`` adds the divergences module
as it was at git revision ``REV`` (an A/B of a kernel change in one process).

Usage::

  python benchmarks/divergence_speed.py                       # issue sizes
  python benchmarks/divergence_speed.py --sizes 2048x32000 --divergences forward_kl
  python benchmarks/divergence_speed.py --divergences forward_kl --block-elements 18,20,21,22
  python benchmarks/divergence_speed.py --divergences forward_kl --baseline-rev 3e58273
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import tempfile
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from sad_jax.losses import _divergences as D

T = 2.0
_ARGS: list = []  # the current size's (s, t), for ahead-of-time compilation


def _naive(name):
  def loss(s, t):
    log_q, q = jax.nn.log_softmax(s / T), jax.nn.softmax(s / T)
    log_p, p = jax.nn.log_softmax(t / T), jax.nn.softmax(t / T)
    if name == "forward_kl":
      return optax.kl_divergence(log_q, p).sum()
    if name == "reverse_kl":
      return optax.kl_divergence(log_p, q).sum()
    if name == "generalized_jsd":
      log_m = jnp.log(0.5 * p + 0.5 * q)
      return (0.5 * optax.kl_divergence(log_m, p) + 0.5 * optax.kl_divergence(log_m, q)).sum()
    if name == "total_variation":
      return 0.5 * jnp.abs(p - q).sum()
    raise ValueError(name)
  return loss


def _module_at(rev):
  """``sad_jax/divergences.py`` at git revision ``rev``, imported as a separate module."""
  root = pathlib.Path(__file__).resolve().parents[1]
  source = subprocess.run(["git", "show", f"{rev}:sad_jax/divergences.py"], cwd=root,
                          check=True, capture_output=True, text=True).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / f"divergences_{rev}.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location(f"divergences_{rev}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fast(name, block_elements=None, module=D):
  """The sad_jax loss + grad, jitted and traced now (with ``2**block_elements`` blocks)."""
  fn = getattr(module, name)
  default = D.BLOCK_ELEMENTS
  D.BLOCK_ELEMENTS = default if block_elements is None else 1 << block_elements
  try:
    return jax.jit(jax.value_and_grad(lambda s, t: fn(s, t, temperature=T).sum())).lower(
        *_ARGS).compile()
  finally:
    D.BLOCK_ELEMENTS = default


def _time(fn, args, inner):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(inner):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / inner


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="2048x32000,1024x151936",
                      help="comma-separated NxV token-by-vocab sizes")
  parser.add_argument("--divergences",
                      default="forward_kl,reverse_kl,generalized_jsd,total_variation")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--inner", type=int, default=3)
  parser.add_argument("--block-elements", default="",
                      help="comma-separated k: also time sad_jax with 2**k-element row blocks")
  parser.add_argument("--baseline-rev", default=None,
                      help="git revision: also time sad_jax/divergences.py as it was there")
  args = parser.parse_args()
  blocks = [int(k) for k in args.block_elements.split(",") if k]
  baseline = _module_at(args.baseline_rev) if args.baseline_rev else None

  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; T={T}; "
        f"median of {args.repeats} x mean of {args.inner} calls")
  print(f"{'divergence':<16} {'N':>6} {'V':>7} {'naive ms':>9} {'sad ms':>8} "
        f"{'a+b ms':>7} {'speedup':>8} {'sad/(a+b)':>10} {'sad ktok/s':>10}")
  for size in args.sizes.split(","):
    n, v = (int(x) for x in size.split("x"))
    ks, kt = jax.random.split(jax.random.key(0))
    s = jax.random.normal(ks, (n, v), jnp.float32) * 3
    t = jax.random.normal(kt, (n, v), jnp.float32) * 3
    _ARGS[:] = [s, t]
    add = jax.jit(lambda a, b: a + b)
    for name in args.divergences.split(","):
      fns = {"naive": jax.jit(jax.value_and_grad(_naive(name))), "sad": _fast(name),
             "add": add}
      fns.update({f"sad 2^{k}": _fast(name, k) for k in blocks})
      if baseline is not None:
        fns[f"sad@{args.baseline_rev}"] = _fast(name, module=baseline)
      times = {k: [] for k in fns}
      for _ in range(args.repeats):
        for k, fn in fns.items():
          times[k].append(_time(fn, (s, t), args.inner))
      med = {k: statistics.median(x) * 1e3 for k, x in times.items()}
      variants = [k for k in fns if k.startswith("sad")]
      for variant in variants:
        label = name if variant == "sad" else f"  {variant}"
        print(f"{label:<16} {n:>6} {v:>7} {med['naive']:>9.1f} {med[variant]:>8.1f} "
              f"{med['add']:>7.1f} {med['naive'] / med[variant]:>7.2f}x "
              f"{med[variant] / med['add']:>9.2f}x {n / med[variant]:>10.1f}", flush=True)


if __name__ == "__main__":
  main()
