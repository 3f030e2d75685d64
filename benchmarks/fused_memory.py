r"""Peak memory and time of the fused lm-head + loss vs the naive path.

Every variant runs in its own subprocess (peak RSS is a per-process high-water
mark). Inside it: build the inputs (hidden states ``[N, d]`` and heads ``[d, V]``
for student and teacher), compile ``value_and_grad`` w.r.t. the student hidden
states and head ahead of time, read the resident set size (*base*: inputs, runtime
and compiled program in place), then run it while a thread samples the RSS every
2 ms, and time ``--repeats`` more runs. *Working memory* is the sampled peak during
the first run minus the base; ``maxrss`` (``getrusage``, which includes the
compiler's and the random input generation's transient memory, so it is not the
run's) is printed too, as is XLA's
``memory_analysis()`` (temporaries + outputs) of the compiled program.

* ``naive``: ``forward_kl(h_s @ W_s, h_t @ W_t)`` mean under ``jax.value_and_grad``
  (full ``[N, V]`` logits, autodiff, sad_jax's fast divergence);
* ``optax``: the same with the optax composition
  ``optax.kl_divergence(log_softmax(s / T), softmax(t / T))`` (the issue's naive path);
* ``fused``: :func:`sad_jax.backends._fused.fused_distill_loss`.

Usage (the naive variant at the default size needs ~6 GB; run alone)::

  python benchmarks/fused_memory.py                      # N=2048 d=1024 V=151936
  python benchmarks/fused_memory.py --n 512 --d 256 --vocab 32000 --variants fused
  python benchmarks/fused_memory.py --variants fused,naive,optax   # optax needs ~10 GB
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys


def _child(variant, n, d, vocab, repeats, chunk_size):
  import resource
  import threading
  import time

  import jax
  import jax.numpy as jnp
  import optax
  import psutil

  from sad_jax.losses import _divergences as divergences
  from sad_jax.backends import _fused as fused

  keys = jax.random.split(jax.random.key(0), 4)
  hs = jax.random.normal(keys[0], (n, d), jnp.float32)
  ws = jax.random.normal(keys[1], (d, vocab), jnp.float32) / d ** 0.5
  ht = jax.random.normal(keys[2], (n, d), jnp.float32)
  wt = jax.random.normal(keys[3], (d, vocab), jnp.float32) / d ** 0.5
  jax.block_until_ready((hs, ws, ht, wt))
  if variant == "naive":
    loss = lambda hs, ws, ht, wt: divergences.forward_kl(hs @ ws, ht @ wt,
                                                         temperature=2.0).mean()
  elif variant == "optax":
    def loss(hs, ws, ht, wt):
      log_q, p = jax.nn.log_softmax(hs @ ws / 2.0), jax.nn.softmax(ht @ wt / 2.0)
      return optax.kl_divergence(log_q, p).mean()
  else:
    loss = lambda hs, ws, ht, wt: fused.fused_distill_loss(hs, ws, ht, wt, temperature=2.0,
                                                           chunk_size=chunk_size)
  # Every input is an argument: closed-over arrays would become compile-time constants.
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(hs, ws, ht, wt).compile()
  analysis = step.memory_analysis()
  xla_gb = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / 2**30
  process = psutil.Process()
  base = process.memory_info().rss
  peak = [base]
  running = threading.Event()
  running.set()

  def sample():
    while running.is_set():
      peak[0] = max(peak[0], process.memory_info().rss)
      time.sleep(0.002)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  start = time.perf_counter()
  value, grads = jax.block_until_ready(step(hs, ws, ht, wt))
  first = time.perf_counter() - start
  running.clear()
  sampler.join()
  peak = max(peak[0], process.memory_info().rss)
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  del grads
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(hs, ws, ht, wt))
    times.append(time.perf_counter() - start)
  print(json.dumps(dict(variant=variant, loss=float(value), base_gb=base / 2**30,
                        peak_gb=peak / 2**30, work_gb=(peak - base) / 2**30,
                        maxrss_gb=maxrss / 2**30, xla_gb=xla_gb, first_s=first,
                        time_s=statistics.median(times) if times else first,
                        times=times)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=2048)
  parser.add_argument("--d", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=151936)
  parser.add_argument("--variants", default="fused,naive")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--chunk-size", type=int, default=None)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.child, args.n, args.d, args.vocab, args.repeats, args.chunk_size)
    return
  print(f"# {platform.machine()}, {os.cpu_count()} CPUs; N={args.n} d={args.d} "
        f"V={args.vocab} float32; forward_kl T=2; each variant in its own process")
  print(f"{'variant':<8} {'base GB':>8} {'peak GB':>8} {'work GB':>8} {'maxrss GB':>9} "
        f"{'XLA GB':>7} {'time s':>7} {'loss':>10}")
  rows = {}
  for variant in args.variants.split(","):
    cmd = [sys.executable, __file__, "--child", variant, "--n", str(args.n), "--d",
           str(args.d), "--vocab", str(args.vocab), "--repeats", str(args.repeats)]
    if args.chunk_size:
      cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      print(f"{variant:<8} failed: {out.stderr.strip().splitlines()[-1:]}")
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows[variant] = r
    print(f"{variant:<8} {r['base_gb']:>8.2f} {r['peak_gb']:>8.2f} {r['work_gb']:>8.2f} "
          f"{r['maxrss_gb']:>9.2f} {r['xla_gb']:>7.2f} {r['time_s']:>7.2f} {r['loss']:>10.6f}",
          flush=True)
  for baseline in ("naive", "optax"):
    if baseline in rows and "fused" in rows:
      f, nv = rows["fused"], rows[baseline]
      print(f"fused / {baseline}: working memory {f['work_gb'] / nv['work_gb']:.1%}, "
            f"XLA {f['xla_gb'] / nv['xla_gb']:.1%}, time {f['time_s'] / nv['time_s']:.2f}x")


if __name__ == "__main__":
  main()
