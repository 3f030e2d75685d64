"""A checkpointed, sharded SAD training run, for the kill-and-resume test.

Usage::

  python tests/resume_worker.py --dir CKPT --steps N [--out FINAL.npz] [--pause-after K]
                                [--reference-out REF.npz]

Resumes from the latest checkpoint in ``CKPT`` if there is one, trains to step
``N`` on a (data=2, fsdp=2, model=2) mesh with the vocab-parallel loss, saving
every 3 steps (asynchronously, with the run config), and writes every leaf of the final train state to
``FINAL.npz``. With ``--pause-after K`` it prints ``paused`` after step ``K`` (its
save just started) and sleeps until killed. With ``--reference-out`` it then also
trains from scratch to step ``N`` without checkpoints or interruption (same
compiled step) and writes that state to ``REF.npz``. Batches are a pure function
of the data position, which the checkpoint carries.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import tiny_lm  # noqa: E402
from sad_jax.training import checkpoint
from sad_jax.parallel import _sharding as sharding
from sad_jax.training import _step as train


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--dir", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--out")
  parser.add_argument("--pause-after", type=int)
  parser.add_argument("--reference-out")
  args = parser.parse_args()

  cfg = train.resolve_config({
      "objective": {"divergence": "generalized_jsd", "divergence_kwargs": {"beta": 0.5},
                    "normalization": "tokens", "weighting": "adaptive",
                    "adaptive_temperature": {"enabled": True}},
      "optimizer": {"name": "adamw", "learning_rate": 3e-2, "weight_decay": 0.01,
                    "grad_clip_norm": 1.0, "warmup_steps": 2, "decay_steps": 20},
      "accumulation_steps": 2, "vocab_parallel": True,
      "mesh": {"data": 2, "fsdp": 2, "model": 2}, "partition_rules": tiny_lm.ALL_RULES,
      "checkpoint": {"directory": args.dir, "every_steps": 3, "keep": 2, "async_save": True}})
  mesh = sharding.make_mesh(cfg.mesh)
  tx = train.make_optimizer(cfg.optimizer)
  initial = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
  state_sh = sharding.tree_shardings(initial, mesh, cfg.partition_rules)
  state = jax.device_put(initial, state_sh)

  def next_batch(position: int):
    return tiny_lm.make_batch(jax.random.fold_in(jax.random.key(123), position))

  batch_sh = sharding.batch_shardings(next_batch(0), mesh, vocab_parallel=True)
  step = sharding.jit_train_step(train.make_train_step(tiny_lm.apply, tx, cfg, mesh=mesh),
                                 state_sharding=state_sh, batch_sharding=batch_sh)

  ckpt = checkpoint.Checkpointer.from_config(cfg.checkpoint, config=cfg)
  state, data_state = ckpt.restore_or(state, {"position": 0})
  print(f"resumed {int(state.step)} position {data_state['position']}", flush=True)
  while int(state.step) < args.steps:
    batch = jax.device_put(next_batch(data_state["position"]), batch_sh)
    state, _ = step(state, batch)
    data_state = {"position": data_state["position"] + 1}
    ckpt.save(state, data_state)
    print(f"step {int(state.step)}", flush=True)
    if int(state.step) == args.pause_after:
      print("paused", flush=True)
      while True:
        time.sleep(1)
  ckpt.close()
  if args.out:
    _dump(args.out, state)
  if args.reference_out:
    state = jax.device_put(initial, state_sh)
    for position in range(args.steps):
      state, _ = step(state, jax.device_put(next_batch(position), batch_sh))
    _dump(args.reference_out, state)


def _dump(path: str, state) -> None:
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})


if __name__ == "__main__":
  main()
