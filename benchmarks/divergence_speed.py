r"""Loss + gradient time of the fused divergences in real-use shapes, as ratios.

For each divergence and ``[B, T, V]`` shape it times, in one process and
interleaved (every round runs each variant once, so a loaded machine slows every
variant alike), the loss and its gradient with respect to the student logits:

* ``masked``: the sad_jax divergence with the ``where`` mask of the trained tokens
  (REASONING and ACTION spans of synthetic agent span ids: a prompt, then
  reasoning / action / observation segments, then padding), reduced to the masked
  mean over tokens -- what :func:`sad_jax.objective.sad_loss` calls;
* ``unmasked``: the same divergence without ``where`` (plain sum over tokens);
* ``naive``: the optax / ``jax.nn`` composition with the same mask (for
  ``forward_kl``: ``optax.kl_divergence(log_softmax(s/T), softmax(t/T))``);
* ``a+b``: one elementwise pass over the two logits arrays, the memory-bound floor;
* with ``--sad-loss``: the full :func:`sad_jax.objective.sad_loss` of a preset of
  ``configs/sad.py`` (``--preset``, default ``paper``) on the same span ids, its
  metrics and next state returned with the loss (as a train step uses them);
  ``--statistics all`` overrides the preset's ``statistics`` (the teacher statistics
  computed per step).

Printed per row: each variant's median time over ``--repeats`` rounds (each the
mean of ``--inner`` calls) with its spread ``(max - min) / median``, and the
ratios of the targets, each the median over rounds of that round's ratio with
its range in brackets.

``--block-elements 18,20`` adds one ``masked`` variant per row-block size ``2**k``
(:data:`sad_jax.losses._divergences.BLOCK_ELEMENTS`, read when the function is
traced); ``--baseline-rev REV`` adds the divergences module as it was at git
revision ``REV`` (an A/B of a kernel change in one process).

Usage::

  python benchmarks/divergence_speed.py                    # [8,256,32000], [4,256,151936]
  python benchmarks/divergence_speed.py --shapes 2x64x32000 --divergences forward_kl
  python benchmarks/divergence_speed.py --divergences forward_kl --sad-loss --preset paper
  python benchmarks/divergence_speed.py --divergences forward_kl --block-elements 18,20
  python benchmarks/divergence_speed.py --divergences forward_kl --baseline-rev 2268676
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sad_jax.losses import _divergences as D  # noqa: E402
from sad_jax.objective import _config as config_lib  # noqa: E402
from sad_jax.objective import _sad as objective  # noqa: E402
from sad_jax.objective import _spans as spans  # noqa: E402
from sad_jax.objective import _state as state_lib  # noqa: E402

T = 2.0
MODULE_PATH = "sad_jax/losses/_divergences.py"
KWARGS = {"generalized_jsd": {"beta": 0.5}}


def agent_span_ids(batch: int, seq: int, seed: int = 0) -> np.ndarray:
  """``int32 [batch, seq]`` span ids shaped like agent trajectories.

  Each row: a prompt of 10-25% of the row, then segments of 8-64 tokens cycling
  REASONING, ACTION, OBSERVATION, and trailing padding of 0-10%.
  """
  rng = np.random.default_rng(seed)
  ids = np.full((batch, seq), spans.SpanType.PAD, np.int32)
  cycle = (spans.SpanType.REASONING, spans.SpanType.ACTION, spans.SpanType.OBSERVATION)
  for row in range(batch):
    end = seq - int(rng.uniform(0, 0.1) * seq)
    pos = int(rng.uniform(0.1, 0.25) * seq)
    ids[row, :pos] = spans.SpanType.PROMPT
    k = 0
    while pos < end:
      n = int(rng.integers(8, 65))
      ids[row, pos:min(pos + n, end)] = cycle[k % 3]
      pos, k = pos + n, k + 1
  return ids


def _naive(name):
  def per_token(s, t):
    log_q, q = jax.nn.log_softmax(s / T), jax.nn.softmax(s / T)
    log_p, p = jax.nn.log_softmax(t / T), jax.nn.softmax(t / T)
    if name == "forward_kl":
      return optax.kl_divergence(log_q, p)
    if name == "reverse_kl":
      return optax.kl_divergence(log_p, q)
    if name == "generalized_jsd":
      log_m = jnp.log(0.5 * p + 0.5 * q)
      return 0.5 * optax.kl_divergence(log_m, p) + 0.5 * optax.kl_divergence(log_m, q)
    if name == "total_variation":
      return 0.5 * jnp.abs(p - q).sum(-1)
    raise ValueError(f"no naive composition for {name!r}")
  return per_token


def _module_at(rev):
  """The divergences module at git revision ``rev``, imported as a separate module."""
  source = subprocess.run(["git", "show", f"{rev}:{MODULE_PATH}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
  path = pathlib.Path(tempfile.mkdtemp()) / f"divergences_{rev}.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location(f"divergences_{rev}", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _compile(loss, args, block_elements=None, has_aux=False):
  """``jit(value_and_grad(loss))`` compiled for ``args`` (with ``2**block_elements`` blocks)."""
  default = D.BLOCK_ELEMENTS
  D.BLOCK_ELEMENTS = default if block_elements is None else 1 << block_elements
  try:
    return jax.jit(jax.value_and_grad(loss, has_aux=has_aux)).lower(*args).compile()
  finally:
    D.BLOCK_ELEMENTS = default


def _time(fn, args, inner):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(inner):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / inner


def _variants(name, trained, args, module, blocks, sad_config):
  """``{label: compiled fn(s, t)}`` for one divergence."""
  fn = getattr(module, name)
  kw = KWARGS.get(name, {})
  count = jnp.maximum(jnp.sum(trained), 1)

  def masked(m):
    return lambda s, t: jnp.sum(getattr(m, name)(s, t, temperature=T, where=trained,
                                                 **kw)) / count

  fns = {
      "a+b": jax.jit(lambda a, b: a + b).lower(*args).compile(),
      "naive": _compile(lambda s, t: jnp.sum(jnp.where(trained, _naive(name)(s, t), 0.0))
                        / count, args),
      "unmasked": _compile(lambda s, t: jnp.sum(fn(s, t, temperature=T, **kw)), args),
      "masked": _compile(masked(D), args),
  }
  for k in blocks:
    fns[f"masked 2^{k}"] = _compile(masked(D), args, k)
  if module is not D:
    fns["masked@base"] = _compile(masked(module), args)
  if sad_config is not None:
    span_ids = jnp.asarray(agent_span_ids(*args[0].shape[:2]))
    state = state_lib.init_state(sad_config)
    # Metrics and the next state are outputs too, and the state (its temperature) is
    # an argument, as in a train step.
    sad = _compile(lambda s, t, state: objective.sad_loss(s, t, span_ids, state, sad_config),
                   args + (state,), has_aux=True)
    fns["sad_loss"] = lambda s, t: sad(s, t, state)
  return fns


RATIOS = (("masked", "unmasked"), ("masked", "a+b"), ("unmasked", "a+b"),
          ("naive", "masked"), ("sad_loss", "unmasked"), ("sad_loss", "masked"),
          ("masked@base", "masked"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="8x256x32000,4x256x151936",
                      help="comma-separated BxTxV logits shapes")
  parser.add_argument("--divergences", default="forward_kl,generalized_jsd")
  parser.add_argument("--repeats", type=int, default=5, help="rounds (median over them)")
  parser.add_argument("--inner", type=int, default=2, help="calls per round and variant")
  parser.add_argument("--block-elements", default="",
                      help="comma-separated k: also time the masked loss with 2**k blocks")
  parser.add_argument("--baseline-rev", default=None,
                      help=f"git revision: also time {MODULE_PATH} as it was there")
  parser.add_argument("--sad-loss", action="store_true",
                      help="also time sad_jax.objective.sad_loss (student gradient)")
  parser.add_argument("--preset", default="paper", help="configs/sad.py preset for --sad-loss")
  parser.add_argument("--statistics", default=None,
                      help="config.statistics for --sad-loss (default: the preset's)")
  args = parser.parse_args()
  blocks = [int(k) for k in args.block_elements.split(",") if k]
  module = _module_at(args.baseline_rev) if args.baseline_rev else D
  sad_config = None
  if args.sad_loss:
    sad_config = config_lib.load_config(f"{ROOT}/configs/sad.py:{args.preset}")
    if args.statistics is not None:
      sad_config.statistics = args.statistics
    sad_config = config_lib.resolve(sad_config)

  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; T={T}; each time the median "
        f"of {args.repeats} rounds x mean of {args.inner} calls, (spread = (max-min)/median); "
        f"ratios: median over rounds [min-max]" + (
            f"; sad_loss preset {args.preset}, statistics {sad_config.statistics!r}"
            if args.sad_loss else ""))
  for shape in args.shapes.split(","):
    b, t_len, v = (int(x) for x in shape.split("x"))
    ks, kt = jax.random.split(jax.random.key(0))
    s = jax.random.normal(ks, (b, t_len, v), jnp.float32) * 3
    t = jax.random.normal(kt, (b, t_len, v), jnp.float32) * 3
    ids = agent_span_ids(b, t_len)
    trained = jnp.asarray((ids == spans.SpanType.REASONING) | (ids == spans.SpanType.ACTION))
    for name in args.divergences.split(","):
      fns = _variants(name, trained, (s, t), module, blocks, sad_config)
      times = {k: [] for k in fns}
      for _ in range(args.repeats):
        for k, fn in fns.items():
          times[k].append(_time(fn, (s, t), args.inner) * 1e3)
      print(f"\n{name} [{b},{t_len},{v}], {float(trained.mean()):.0%} of tokens trained")
      for k, x in times.items():
        med = statistics.median(x)
        print(f"  {k:<14} {med:9.1f} ms  (spread {(max(x) - min(x)) / med:5.1%})")
      for num, den in RATIOS:
        if num in times and den in times:
          r = [a / c for a, c in zip(times[num], times[den])]
          print(f"  {num + ' / ' + den:<22} {statistics.median(r):5.2f}x "
                f"[{min(r):.2f}-{max(r):.2f}]", flush=True)


if __name__ == "__main__":
  main()
