"""fused_distill_loss vs the naive full-logits path: values, gradients, masking.

Cases are evaluated in one jitted function per test, compiled without LLVM
optimization (``_jit``): half the compile time, same HLO.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax.objective import _config as config_lib
from sad_jax.losses import _divergences as D
from sad_jax.objective import _sad as objective
from sad_jax.objective import _state as state_lib
from sad_jax.backends import _fused as fused
from sad_jax.backends._fused import fused_distill_loss

N, DS, DT, V = 29, 8, 12, 40
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _inputs(seed=0, dtype=jnp.float32):
  k = jax.random.split(jax.random.key(seed), 5)
  return (jax.random.normal(k[0], (N, DS), dtype), jax.random.normal(k[1], (DS, V), dtype),
          jax.random.normal(k[2], (N, DT), dtype), jax.random.normal(k[3], (DT, V), dtype),
          jax.random.uniform(k[4], (N,)))


WHERE = np.arange(N) % 4 != 1


def _naive(hs, ws, ht, wt, weights, name, **kw):
  d = D.get_divergence(name)(hs @ ws, ht @ wt, where=WHERE, **kw)
  return jnp.sum(weights * d) / WHERE.sum()


CASES = [("forward_kl", {}), ("reverse_kl", {}), ("generalized_jsd", {"beta": 0.3}),
         ("total_variation", {}), ("symmetric_kl", {})]


def test_matches_naive():
  hs, ws, ht, wt, w = _inputs()

  @_jit
  def run(hs, ws):
    out = {}
    for name, kw in CASES:
      fused = lambda hs, ws: fused_distill_loss(  # noqa: E731
          hs, ws, ht, wt, divergence=name, temperature=1.5, where=WHERE, weights=w,
          chunk_size=8, **kw)
      naive = lambda hs, ws: _naive(hs, ws, ht, wt, w, name, temperature=1.5, **kw)  # noqa: E731
      out[name] = [jax.value_and_grad(f, argnums=(0, 1))(hs, ws) for f in (fused, naive)]
    return out

  for name, ((value, grads), (ref, ref_grads)) in run(hs, ws).items():
    np.testing.assert_allclose(value, ref, rtol=1e-5, err_msg=name)
    for got, want in zip(grads, ref_grads):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_head_gradient_in_vocab_blocks(monkeypatch):
  """Several head-gradient column blocks, the last one shifted to fit in V."""
  monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 7 * DS)  # blocks of 7 columns: 6 of V=40
  hs, ws, ht, wt, w = _inputs(5)
  loss = lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, weights=w, chunk_size=8)  # noqa: E731
  naive = lambda hs, ws: jnp.mean(w * D.forward_kl(hs @ ws, ht @ wt))  # noqa: E731
  got, want = (_jit(jax.grad(f, argnums=(0, 1)))(hs, ws) for f in (loss, naive))
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_sum_reduction_teacher_gets_no_gradient_and_cotangent_scales():
  hs, ws, ht, wt, w = _inputs(1)
  loss = lambda hs, ws, ht, wt: 3.0 * fused_distill_loss(hs, ws, ht, wt, weights=w,
                                                        reduction="sum", chunk_size=7)
  grads = _jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(hs, ws, ht, wt)
  ref = _jit(jax.grad(lambda hs: 3.0 * jnp.sum(w * D.forward_kl(hs @ ws, ht @ wt))))(hs)
  np.testing.assert_allclose(grads[0], ref, rtol=1e-4, atol=1e-6)
  assert not np.any(grads[2]) and not np.any(grads[3])


def test_nan_in_untrained_rows_and_all_masked():
  hs, ws, ht, wt, w = _inputs(2)
  hs = hs.at[1].set(jnp.nan)  # row 1 is outside WHERE

  @_jit
  def run(hs, ws):
    return [jax.value_and_grad(loss, argnums=(0, 1))(hs, ws) for loss in (
        lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, where=WHERE, chunk_size=8),
        lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, weights=jnp.zeros(N)))]

  (value, (gh, gw)), (zero, (zh, zw)) = run(hs, ws)
  assert np.isfinite(value) and np.all(np.isfinite(gh)) and np.all(np.isfinite(gw))
  assert not np.any(gh[1])
  assert zero == 0 and not np.any(zh) and not np.any(zw)


def test_bf16_inputs_give_bf16_gradients():
  hs, ws, ht, wt, _ = _inputs(3, jnp.bfloat16)
  value, (gh, gw) = _jit(jax.value_and_grad(
      lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, chunk_size=16), argnums=(0, 1)))(hs, ws)
  assert value.dtype == jnp.float32 and gh.dtype == gw.dtype == jnp.bfloat16
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
  ref = _jit(lambda *x: D.forward_kl(f32(x[0]) @ f32(x[1]), f32(x[2]) @ f32(x[3])).mean())(
      hs, ws, ht, wt)
  np.testing.assert_allclose(value, ref, rtol=2e-2)


def test_never_builds_n_by_v():
  hs, ws, ht, wt, w = _inputs(4)
  fn = jax.value_and_grad(lambda hs, ws: fused_distill_loss(hs, ws, ht, wt, chunk_size=8),
                          argnums=(0, 1))
  text = str(jax.make_jaxpr(fn)(hs, ws))
  assert f"[{N},{V}]" not in text and f"[1,{N + 3},{V}]" not in text
  assert f"f32[1,8,{V}]" in text


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


SPAN_IDS = np.array([[1, 2, 2, 3, 4, 3, 2, 0], [2, 3, 3, 4, 2, 2, 0, 0]], np.int32)


@pytest.mark.parametrize("overrides", [
    dict(normalization="tokens"),
    dict(normalization="span_mean", weighting="reasoning_heavy", divergence="generalized_jsd",
         divergence_kwargs=dict(beta=0.3)),
    dict(normalization="sequence", scale_by_t2=False, divergence="reverse_kl"),
    dict(hard_label_weight=0.5, label_smoothing=0.1, weighting="confidence_based",
         regularizers=dict(entropy=0.1, confidence_penalty=0.2, confidence_threshold=1.0)),
], ids=["tokens", "span_mean_jsd", "sequence_rkl", "labels_regularizers_confidence"])
def test_fused_sad_loss_equals_sad_loss(overrides):
  """fused_sad_loss == sad_loss on the materialized logits: value, gradients, metrics, state."""
  cfg = config_lib.resolve(overrides)
  st = state_lib.init_state(cfg).replace(temperature=jnp.float32(1.7))
  b, t = SPAN_IDS.shape
  hs, ws, ht, wt, _ = _inputs(6)
  hs, ht = hs[:b * t].reshape(b, t, DS), ht[:b * t].reshape(b, t, DT)
  labels = jnp.arange(b * t, dtype=jnp.int32).reshape(b, t) % V
  normalizer = objective.loss_normalizer(SPAN_IDS, cfg)

  def dense(hs, ws):
    return objective.sad_loss(hs @ ws, ht @ wt, SPAN_IDS, st, cfg, labels=labels,
                              normalizer=normalizer)

  def chunked(hs, ws):
    return fused.fused_sad_loss(hs, ws, ht, wt, SPAN_IDS, st, cfg, labels=labels,
                                normalizer=normalizer, chunk_size=5)

  (value, aux, grads), (ref, ref_aux, ref_grads) = _jit(lambda hs, ws: [
      (lambda out: (out[0][0], out[0][1], out[1]))(
          jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(hs, ws))
      for f in (chunked, dense)])(hs, ws)
  assert ref > 0
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  for got, want in zip(grads, ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), aux, ref_aux)


def test_fused_sad_loss_refuses_span_consistency_naming_it():
  hs, ws, ht, wt, _ = _inputs()
  hs, ht = hs[:16].reshape(2, 8, DS), ht[:16].reshape(2, 8, DT)
  cfg = config_lib.resolve(dict(regularizers=dict(span_consistency=0.1)))
  with pytest.raises(ValueError, match="regularizers.span_consistency on the fused backend: "
                                       "needs each row's mean distribution"):
    fused.fused_sad_loss(hs, ws, ht, wt, SPAN_IDS, state_lib.init_state(cfg), cfg)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_data_parallel_fused_keeps_hidden_states_on_their_devices(axis_type):
  """dp=8: no all-gather in the compiled loss+grad, per-device temporaries within 1.5x of
  one shard's, the same loss as on one device."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  b, t = 16, 32
  k = jax.random.split(jax.random.key(9), 3)
  hs = jax.random.normal(k[0], (b, t, DS))
  ht = jax.random.normal(k[1], (b, t, DT))
  ids = jax.random.randint(k[2], (b, t), 0, 6)
  _, ws, _, wt, _ = _inputs()
  cfg = config_lib.resolve({"normalization": "tokens"})
  st = state_lib.init_state(cfg)

  def compiled(hs, ht, ids, chunk_size):
    f = lambda hs, ws, ht, ids: fused.fused_sad_loss(  # noqa: E731
        hs, ws, ht, wt, ids, st, cfg, chunk_size=chunk_size)[0]
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(hs, ws, ht, ids).compile()

  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))  # noqa: E731
  sharded = compiled(put(hs), put(ht), put(ids), 64)
  text = sharded.as_text()
  assert "all-gather" not in text and "all-to-all" not in text
  one_shard = compiled(hs[:2], ht[:2], ids[:2], 8)  # the same [2, 4, V] chunks per device
  assert (sharded.memory_analysis().temp_size_in_bytes
          <= 1.5 * one_shard.memory_analysis().temp_size_in_bytes)
  (value, _), (ref, _) = sharded(put(hs), ws, put(ht), put(ids)), compiled(hs, ht, ids, 64)(
      hs, ws, ht, ids)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
