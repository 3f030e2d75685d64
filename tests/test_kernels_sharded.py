"""Blocked fused divergences under batch sharding, on 8 host CPU devices.

With the batch axis sharded ``dp = 8`` and blocking active (several row blocks
per shard), the compiled loss + gradient must run every block locally: no
all-gather (of logits or anything else) in the HLO, and per-device temporaries
(``memory_analysis``) within 1.5x of the same program compiled without blocking.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sad_jax.losses import _divergences as D
from sad_jax.parallel import _sharding as sharding

FAST = {"forward_kl": {}, "reverse_kl": {}, "generalized_jsd": {"beta": 0.3},
        "total_variation": {}}
SHAPE = (32, 64, 256)  # 4 rows of 64 tokens per device; 2**19 logits in all
BLOCK = 1 << 12  # 16 tokens of 256 per block and row group: 16 blocks per shard


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  return sharding.make_mesh({"data": 8}, devices=jax.devices()[:8])


def _inputs():
  rng = np.random.default_rng(0)
  s = (rng.normal(size=SHAPE) * 3).astype(np.float32)
  t = (rng.normal(size=SHAPE) * 3).astype(np.float32)
  where = rng.uniform(size=SHAPE[:-1]) < 0.6
  return s, t, where


def _loss(name):
  fn = functools.partial(D.get_divergence(name), temperature=1.5, **FAST[name])
  return lambda s, t, where: jnp.sum(fn(s, t, where=where))


def _compile(name, mesh, block_elements, monkeypatch, argnums=(0, 1)):
  """The sharded ``jit(value_and_grad)`` compiled with ``BLOCK_ELEMENTS = block_elements``."""
  monkeypatch.setattr(D, "BLOCK_ELEMENTS", block_elements)
  logits = NamedSharding(mesh, P(sharding.BATCH_AXES))
  step = jax.jit(jax.value_and_grad(_loss(name), argnums=argnums),
                 in_shardings=(logits, logits, logits))
  args = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=logits) for x in _inputs()]
  return step.lower(*args).compile()


def _collectives(hlo: str) -> list[str]:
  return [line.strip() for line in hlo.splitlines()
          if any(op in line for op in ("all-gather", "all-to-all", "collective-permute"))]


# The student's gradient alone (the backward is one elementwise pass), or the
# teacher's too (the backward runs in blocks).
@pytest.mark.parametrize("argnums", [(0,), (0, 1)], ids=["student", "student_teacher"])
@pytest.mark.parametrize("name", list(FAST))
def test_blocks_stay_inside_shards(name, argnums, mesh, monkeypatch):
  blocked = _compile(name, mesh, BLOCK, monkeypatch, argnums)
  assert " while(" in blocked.as_text()  # blocking is active
  assert _collectives(blocked.as_text()) == []
  unblocked = _compile(name, mesh, 1 << 30, monkeypatch, argnums)
  assert " while(" not in unblocked.as_text()
  temp = blocked.memory_analysis().temp_size_in_bytes
  ref = unblocked.memory_analysis().temp_size_in_bytes
  assert temp <= 1.5 * ref, (temp, ref)


def test_blocks_across_shards_would_gather(mesh, monkeypatch):
  """The check above can fail: blocks over the flat rows (one group) cross shards."""
  monkeypatch.setattr(D, "_row_groups", lambda shape: 1)
  assert _collectives(_compile("forward_kl", mesh, BLOCK, monkeypatch).as_text())


def test_sharded_blocked_values_and_gradients_match_one_device(mesh, monkeypatch):
  s, t, where = _inputs()
  s[~where] = np.nan  # masked tokens may hold anything
  monkeypatch.setattr(D, "BLOCK_ELEMENTS", BLOCK)
  logits = NamedSharding(mesh, P(sharding.BATCH_AXES))
  for name in ("forward_kl", "generalized_jsd"):
    grad = jax.value_and_grad(_loss(name), argnums=(0, 1))
    got = jax.jit(grad, in_shardings=(logits,) * 3)(s, t, where)
    with jax.default_device(jax.devices()[0]):
      monkeypatch.setattr(D, "BLOCK_ELEMENTS", 1 << 30)
      want = jax.jit(grad)(s, t, where)
      monkeypatch.setattr(D, "BLOCK_ELEMENTS", BLOCK)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, err_msg=name)
    for g, r in zip(got[1], want[1]):
      assert np.all(np.asarray(g)[~where] == 0), name
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7, err_msg=name)
