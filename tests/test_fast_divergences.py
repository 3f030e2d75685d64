"""Fused custom-VJP divergences vs float64 autodiff of the plain formulas."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax import divergences as D


def _plain(name, s, t, temperature):
  """The textbook composition, differentiated by JAX (float64 under x64)."""
  log_q = jax.nn.log_softmax(s / temperature)
  log_p = jax.nn.log_softmax(t / temperature)
  q, p = jnp.exp(log_q), jnp.exp(log_p)
  if name == "forward_kl":
    return jnp.sum(p * (log_p - log_q), -1)
  if name == "reverse_kl":
    return jnp.sum(q * (log_q - log_p), -1)
  if name == "generalized_jsd":
    log_m = jnp.log(0.3 * p + 0.7 * q)
    return 0.3 * jnp.sum(p * (log_p - log_m), -1) + 0.7 * jnp.sum(q * (log_q - log_m), -1)
  return 0.5 * jnp.sum(jnp.abs(p - q), -1)


FAST = ["forward_kl", "reverse_kl", "generalized_jsd", "total_variation"]
KWARGS = {"generalized_jsd": {"beta": 0.3}}


def _inputs(shape=(6, 7, 40), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * 2).astype(np.float32), (rng.normal(size=shape) * 2).astype(np.float32)


@pytest.fixture(params=[False, True], ids=["one_block", "row_blocks"])
def blocked(request, monkeypatch):
  if request.param:  # 42 rows of 40: blocks of 3 rows through lax.map.
    monkeypatch.setattr(D, "BLOCK_ELEMENTS", 128)
  return request.param


@pytest.mark.parametrize("name", FAST)
def test_value_and_all_gradients_match_autodiff(name, blocked):
  s, t = _inputs()
  weights = np.random.default_rng(1).uniform(size=s.shape[:-1])
  fn = functools.partial(D.get_divergence(name), **KWARGS.get(name, {}))
  loss = lambda s, t, temp: jnp.sum(weights * fn(s, t, temperature=temp))
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(s, t, jnp.float32(1.7))
  with jax.enable_x64(True):
    ref = lambda s, t, temp: jnp.sum(weights * _plain(name, s, t, temp))
    s64, t64 = jnp.asarray(s, jnp.float64), jnp.asarray(t, jnp.float64)
    ref_value, ref_grads = jax.value_and_grad(ref, argnums=(0, 1, 2))(s64, t64, 1.7)
  np.testing.assert_allclose(value, ref_value, rtol=2e-5)
  for got, want, what in zip(grads, ref_grads, ("student", "teacher", "temperature")):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=what)


@pytest.mark.parametrize("name", FAST)
def test_masked_nan_rows_blocked(name, blocked):
  s, t = _inputs((4, 30, 16), 2)
  where = np.random.default_rng(3).uniform(size=(4, 30)) > 0.4
  s[~where] = np.nan
  t[~where] = -np.inf
  fn = functools.partial(D.get_divergence(name), **KWARGS.get(name, {}))
  value, (gs, gt) = jax.value_and_grad(
      lambda s, t: fn(s, t, where=where).sum(), argnums=(0, 1))(s, t)
  assert np.all(np.asarray(gs)[~where] == 0) and np.all(np.asarray(gt)[~where] == 0)
  assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
  np.testing.assert_allclose(fn(s, t, where=where)[where], fn(s[where], t[where]), rtol=1e-6)


def test_row_block_divides_rows():
  assert D._row_block(42, 40) == 42
  assert D._row_block(2048, 32000) == 8
  assert D._row_block(1024, 151936) == 1
  assert D._row_block(2047, 32000) == 1  # prime: one row per block.


@pytest.mark.parametrize("name", FAST)
def test_vmap_jit_and_bf16(name):
  s, t = _inputs((3, 5, 12), 4)
  fn = functools.partial(D.get_divergence(name), **KWARGS.get(name, {}))
  batched = jax.jit(jax.vmap(lambda s, t: fn(s, t, temperature=2.0)))(s, t)
  np.testing.assert_allclose(batched, fn(s, t, temperature=2.0), rtol=1e-6)
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  gs = jax.grad(lambda s: fn(s, tb).sum())(sb)
  assert gs.dtype == jnp.bfloat16


def test_jitted_gradient_is_q_minus_p():
  s, t = _inputs((2, 9), 5)
  g = jax.jit(jax.grad(lambda s: D.forward_kl(s, t).sum()))(s)
  p, q = jax.nn.softmax(t), jax.nn.softmax(s)
  np.testing.assert_allclose(g, q - p, rtol=1e-5, atol=1e-7)
