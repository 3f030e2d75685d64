"""fused_distill_loss vs the naive full-logits path: values, gradients, masking."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax import divergences as D
from sad_jax.fused import fused_distill_loss

N, DS, DT, V = 29, 8, 12, 40


def _inputs(seed=0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 5)
  return (jax.random.normal(k[0], (N, DS), dtype), jax.random.normal(k[1], (DS, V), dtype),
          jax.random.normal(k[2], (N, DT), dtype), jax.random.normal(k[3], (DT, V), dtype),
          jax.random.uniform(k[4], (N,)))


WHERE = np.arange(N) % 4 != 1


def _naive(hs, ws, ht, wt, weights, name, **kw):
  d = D.get_divergence(name)(hs @ ws, ht @ wt, where=WHERE, **kw)
  return jnp.sum(weights * d) / WHERE.sum()


@pytest.mark.parametrize("name,kw", [("forward_kl", {}), ("reverse_kl", {}),
                                     ("generalized_jsd", {"beta": 0.3}),
                                     ("total_variation", {}), ("symmetric_kl", {})])
def test_matches_naive(name, kw):
  hs, ws, ht, wt, w = _inputs()
  fused = lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, divergence=name, temperature=1.5,
                                            where=WHERE, weights=w, chunk_size=8, **kw)
  naive = lambda hs, ws: _naive(hs, ws, ht, wt, w, name, temperature=1.5, **kw)
  value, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(hs, ws)
  ref, ref_grads = jax.value_and_grad(naive, argnums=(0, 1))(hs, ws)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_sum_reduction_teacher_gets_no_gradient_and_cotangent_scales():
  hs, ws, ht, wt, w = _inputs(1)
  loss = lambda hs, ws, ht, wt: 3.0 * fused_distill_loss(hs, ws, ht, wt, weights=w,
                                                        reduction="sum", chunk_size=7)
  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(hs, ws, ht, wt)
  ref = jax.grad(lambda hs: 3.0 * jnp.sum(w * D.forward_kl(hs @ ws, ht @ wt)))(hs)
  np.testing.assert_allclose(grads[0], ref, rtol=1e-4, atol=1e-6)
  assert not np.any(grads[2]) and not np.any(grads[3])


def test_nan_in_untrained_rows_and_all_masked():
  hs, ws, ht, wt, w = _inputs(2)
  hs = hs.at[1].set(jnp.nan)  # row 1 is outside WHERE
  value, (gh, gw) = jax.value_and_grad(
      lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, where=WHERE, chunk_size=8),
      argnums=(0, 1))(hs, ws)
  assert np.isfinite(value) and np.all(np.isfinite(gh)) and np.all(np.isfinite(gw))
  assert not np.any(gh[1])
  value, (gh, gw) = jax.value_and_grad(
      lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, weights=jnp.zeros(N)),
      argnums=(0, 1))(hs, ws)
  assert value == 0 and not np.any(gh) and not np.any(gw)


def test_bf16_inputs_give_bf16_gradients():
  hs, ws, ht, wt, _ = _inputs(3, jnp.bfloat16)
  value, (gh, gw) = jax.value_and_grad(
      lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, chunk_size=16), argnums=(0, 1))(hs, ws)
  assert value.dtype == jnp.float32 and gh.dtype == gw.dtype == jnp.bfloat16
  f32 = lambda x: x.astype(jnp.float32)
  ref = D.forward_kl(f32(hs) @ f32(ws), f32(ht) @ f32(wt)).mean()
  np.testing.assert_allclose(value, ref, rtol=2e-2)


def test_never_builds_n_by_v():
  hs, ws, ht, wt, w = _inputs(4)
  fn = jax.value_and_grad(lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, chunk_size=8),
                          argnums=(0, 1))
  text = str(jax.make_jaxpr(fn)(hs, ws))
  assert f"[{N},{V}]" not in text and f"f32[{N + 3},{V}]" not in text
  assert f"f32[8,{V}]" in text


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(teacher_head=np.zeros((DT, V + 1), np.float32)), ValueError,
     f"student vocab size {V} != teacher vocab size {V + 1}"),
    (dict(student_head=np.zeros((DS + 1, V), np.float32)), ValueError, "student_head must be"),
    (dict(weights=np.ones(N + 1)), ValueError, "weights must have shape"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(reduction="max"), ValueError, "reduction"),
    (dict(divergence="kl"), ValueError, "unknown divergence"),
])
def test_errors(kwargs, err, match):
  hs, ws, ht, wt, _ = _inputs()
  args = dict(student_hidden=hs, student_head=ws, teacher_hidden=ht, teacher_head=wt)
  args.update({k: v for k, v in kwargs.items() if k in args})
  with pytest.raises(err, match=match):
    fused_distill_loss(*args.values(), **{k: v for k, v in kwargs.items() if k not in args})
