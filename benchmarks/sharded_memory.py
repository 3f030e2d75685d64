r"""Per-device memory and collectives of the fused divergences under data parallelism.

Compiles ``jit(value_and_grad)`` of the masked per-token divergence (summed) with
the batch axis of ``[B, T, V]`` logits sharded over ``--devices`` host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``, set here before jax is
imported) and prints, per divergence and gradient set, from the compiled program:

* ``temp MiB``: per-device temporaries (``memory_analysis().temp_size_in_bytes``);
* ``shard MiB``: one device's share of one logits array, for scale;
* ``gathers``: the number of all-gather / all-to-all / collective-permute ops;
* the same compiled without blocking (``BLOCK_ELEMENTS = 2**30``) and the ratio.

Nothing is executed, so the sizes can be large. ``--block-elements k`` sets the
blocked run's ``BLOCK_ELEMENTS`` to ``2**k`` (default: the library's).

Usage::

  python benchmarks/sharded_memory.py                         # [32, 512, 32000] on 8 devices
  python benchmarks/sharded_memory.py --shape 32x512x256 --block-elements 12
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="32x512x32000", help="BxTxV logits shape")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--divergences",
                      default="forward_kl,reverse_kl,generalized_jsd,total_variation")
  parser.add_argument("--block-elements", type=int, default=None)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(ROOT))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from sad_jax.losses import _divergences as D  # pylint: disable=g-import-not-at-top
  from sad_jax.parallel import _sharding as sharding  # pylint: disable=g-import-not-at-top

  shape = tuple(int(x) for x in args.shape.split("x"))
  mesh = sharding.make_mesh({"data": args.devices})
  logits = NamedSharding(mesh, P(sharding.BATCH_AXES))
  specs = (jax.ShapeDtypeStruct(shape, jnp.float32, sharding=logits),) * 2 + (
      jax.ShapeDtypeStruct(shape[:-1], bool, sharding=logits),)
  blocked = D.BLOCK_ELEMENTS if args.block_elements is None else 1 << args.block_elements

  def compile_(name, argnums, block_elements):
    fn = D.get_divergence(name)
    default, D.BLOCK_ELEMENTS = D.BLOCK_ELEMENTS, block_elements
    try:
      step = jax.jit(jax.value_and_grad(lambda s, t, w: jnp.sum(fn(s, t, where=w)),
                                        argnums=argnums))
      compiled = step.lower(*specs).compile()
    finally:
      D.BLOCK_ELEMENTS = default
    hlo = compiled.as_text()
    gathers = sum(hlo.count(f"{op}(") + hlo.count(f"{op}-start(")
                  for op in ("all-gather", "all-to-all", "collective-permute"))
    return compiled.memory_analysis().temp_size_in_bytes / 2**20, gathers, " while(" in hlo

  shard = shape[0] // args.devices * shape[1] * shape[2] * 4 / 2**20
  print(f"# {args.devices} host devices, logits {list(shape)} float32 sharded over the "
        f"batch, masked; blocked: BLOCK_ELEMENTS = 2**{blocked.bit_length() - 1}; "
        f"shard of one logits array: {shard:.1f} MiB")
  print(f"{'divergence':<16} {'gradients':<16} {'temp MiB':>9} {'gathers':>8} {'loop':>5} "
        f"{'unblocked MiB':>14} {'gathers':>8} {'ratio':>6}")
  for name in args.divergences.split(","):
    for label, argnums in (("student", (0,)), ("student+teacher", (0, 1))):
      temp, gathers, loop = compile_(name, argnums, blocked)
      ref, ref_gathers, _ = compile_(name, argnums, 1 << 30)
      print(f"{name:<16} {label:<16} {temp:>9.2f} {gathers:>8} {'yes' if loop else 'no':>5} "
            f"{ref:>14.2f} {ref_gathers:>8} {temp / ref:>5.2f}x", flush=True)


if __name__ == "__main__":
  main()
