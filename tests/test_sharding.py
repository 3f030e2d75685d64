"""Meshes, partition rules and the vocab-parallel loss, on 8 CPU devices."""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import tiny_lm
from sad_jax.objective import _config as sad_config
from sad_jax.losses import _divergences as divergences
from sad_jax.objective import _sad as objective
from sad_jax.parallel import _sharding as sharding
from sad_jax.objective import _state as state_lib
from sad_jax.training import _step as train

DIVERGENCES = {"forward_kl": {}, "generalized_jsd": {"beta": 0.3}}
LAYOUTS = {
    # data x fsdp x vocab-parallel at once (the default run); each alone is slow-marked.
    "dp_fsdp_vocab": ({"data": 2, "fsdp": 2, "model": 2}, tiny_lm.ALL_RULES, True),
    "dp": ({"data": 8}, tiny_lm.DP_RULES, False),
    "fsdp": ({"data": 2, "fsdp": 4}, tiny_lm.FSDP_RULES, False),
    "vocab": ({"data": 2, "model": 4}, tiny_lm.VOCAB_RULES, True),
}


def record_grads() -> optax.GradientTransformation:
  """An 'optimizer' whose state is the last gradient and whose update is zero."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _config(divergence, vocab_parallel=False):
  return train.resolve_config({
      "objective": {"divergence": divergence, "divergence_kwargs": DIVERGENCES[divergence],
                    "normalization": "tokens"},
      "vocab_parallel": vocab_parallel})


@functools.lru_cache(maxsize=None)
def _run(divergence: str, layout: str | None):
  """(loss, grads, new sad_state, compiled HLO text) of one step on a layout."""
  tx = record_grads()
  batch = tiny_lm.make_batch(jax.random.key(0))
  if layout is None:
    cfg = _config(divergence)
    state = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
    new, metrics = jax.jit(train.make_train_step(tiny_lm.apply, tx, cfg))(state, batch)
    return metrics["loss"], new.opt_state, new.sad_state, None
  mesh_cfg, rules, vocab_parallel = LAYOUTS[layout]
  cfg = _config(divergence, vocab_parallel)
  mesh = sharding.make_mesh(mesh_cfg)
  state = train.init_train_state(tiny_lm.init(jax.random.key(1)), tx, cfg)
  state_sh = sharding.tree_shardings(state, mesh, rules)
  batch_sh = sharding.batch_shardings(batch, mesh, vocab_parallel=vocab_parallel)
  step = sharding.jit_train_step(train.make_train_step(tiny_lm.apply, tx, cfg, mesh=mesh),
                                 state_sharding=state_sh, batch_sharding=batch_sh)
  args = (jax.device_put(state, state_sh), jax.device_put(batch, batch_sh))
  compiled = step.lower(*args).compile()
  new, metrics = compiled(*args)
  return metrics["loss"], new.opt_state, new.sad_state, compiled.as_text()


@pytest.mark.parametrize("layout", [
    "dp_fsdp_vocab", *(pytest.param(k, marks=pytest.mark.slow) for k in ("dp", "fsdp", "vocab"))])
@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_parallel_step_matches_single_device(divergence, layout):
  loss0, grads0, sad0, _ = _run(divergence, None)
  loss1, grads1, sad1, _ = _run(divergence, layout)
  assert float(loss0) > 0
  np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
  for path, g0 in jax.tree_util.tree_leaves_with_path(grads0):
    g1 = functools.reduce(lambda t, k: t[k.key], path, grads1)
    assert np.abs(g0).max() > 0
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6 * np.abs(g0).max(),
                               err_msg=jax.tree_util.keystr(path))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), sad1, sad0)


def _gathers_of_tokens_by_vocab(hlo: str) -> list[str]:
  """All-gathers whose result has the vocab dim and a token dim (T, or B*T)."""
  tokens = {tiny_lm.SEQ, tiny_lm.BATCH * tiny_lm.SEQ}
  bad = []
  for line in hlo.splitlines():
    op = re.search(r"\ball-gather(-start)?\(", line)
    if op is None:
      continue
    lhs = line[:op.start()]  # the result shape(s), before the op name
    for dims in re.findall(r"\[([\d,]+)\]", lhs):
      shape = [int(d) for d in dims.split(",") if d]
      if tiny_lm.VOCAB in shape and tokens & set(shape):
        bad.append(line.strip())
  return bad


@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_vocab_parallel_step_never_gathers_tokens_by_vocab(divergence):
  hlo = _run(divergence, "dp_fsdp_vocab")[3]
  assert "all-reduce" in hlo  # the psums of the per-shard partial sums are there
  assert _gathers_of_tokens_by_vocab(hlo) == []


def test_gather_detector_sees_a_full_logits_gather():
  mesh = sharding.make_mesh({"data": 2, "model": 4})
  logits_sh = jax.sharding.NamedSharding(mesh, P(sharding.BATCH_AXES, None, "model"))
  x = jax.ShapeDtypeStruct((tiny_lm.BATCH, tiny_lm.SEQ, tiny_lm.VOCAB), jnp.float32,
                           sharding=logits_sh)
  gathered = jax.jit(lambda a: 2.0 * a,  # vocab-sharded in, vocab-replicated out
                     out_shardings=jax.sharding.NamedSharding(mesh, P(sharding.BATCH_AXES)))
  assert _gathers_of_tokens_by_vocab(gathered.lower(x).compile().as_text())


def _vocab_slices(x, n):
  """``[..., V]`` -> ``[n, ..., V / n]`` (leading axis for pmap)."""
  return jnp.moveaxis(x.reshape(x.shape[:-1] + (n, x.shape[-1] // n)), -2, 0)


def test_vocab_parallel_divergences_under_pmap():
  n = 8
  ks, kt, km = jax.random.split(jax.random.key(3), 3)
  s = jax.random.normal(ks, (3, 5, 32)) * 3
  t = jax.random.normal(kt, (3, 5, 32)) * 3
  t = t.at[0, 0, :7].set(-jnp.inf)  # impossible teacher tokens, on several shards
  where = jax.random.bernoulli(km, 0.8, (3, 5))
  params = {"generalized_jsd": {"beta": 0.3}, "symmetric_kl": {"ratio": 0.25},
            "skew_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}

  def all_divergences(a, b):
    return {name: sharding.vocab_parallel_divergence(
        name, a, b, vocab_axis="v", temperature=1.7, where=where, **params.get(name, {}))
        for name in sharding.VOCAB_PARALLEL_DIVERGENCES}

  out = jax.pmap(all_divergences, axis_name="v")(_vocab_slices(s, n), _vocab_slices(t, n))
  refs = jax.jit(lambda s, t: {
      name: divergences.get_divergence(name)(s, t, temperature=1.7, where=where,
                                             **params.get(name, {}))
      for name in sharding.VOCAB_PARALLEL_DIVERGENCES})(s, t)
  for name, value in out.items():
    for shard in range(n):  # every shard holds the same, full value
      np.testing.assert_allclose(value[shard], refs[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_vocab_parallel_sad_loss_under_pmap_matches_sad_loss():
  """Loss, metrics, state and student gradient under pmap over the vocabulary."""
  n = 4
  cfg = sad_config.resolve({"divergence": "reverse_kl", "hard_label_weight": 0.5,
                            "label_smoothing": 0.1, "weighting": "confidence_based"})
  batch = tiny_lm.make_batch(jax.random.key(4))
  s = jax.random.normal(jax.random.key(5), batch["teacher"].shape)
  state = state_lib.init_state(cfg)
  args = (batch["teacher"], batch["span_ids"], state, cfg)

  def dense(s):
    return objective.sad_loss(s, *args, labels=batch["labels"])

  def parallel(s_local, t_local):
    loss, aux = sharding.vocab_parallel_sad_loss(
        s_local, t_local, batch["span_ids"], state, cfg, vocab_axis="v", labels=batch["labels"])
    # pmap differentiates the sum of the devices' outputs; each holds the full loss.
    return loss / n, (loss, aux)

  (loss0, (m0, st0)), g0 = jax.jit(jax.value_and_grad(dense, has_aux=True))(s)
  (_, (loss1, (m1, st1))), g1 = jax.pmap(jax.value_and_grad(parallel, has_aux=True),
                                    axis_name="v")(_vocab_slices(s, n),
                                                   _vocab_slices(batch["teacher"], n))
  np.testing.assert_allclose(loss1, jnp.full((n,), loss0), rtol=1e-5)
  np.testing.assert_allclose(jnp.moveaxis(g1, 0, -2).reshape(s.shape), g0, rtol=1e-5,
                             atol=1e-8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6), m1, m0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5), st1, st0)


def test_vocab_parallel_rejects_what_it_cannot_compute():
  mesh = sharding.make_mesh({"data": 2, "model": 4})
  with pytest.raises(ValueError, match="divergence = 'wasserstein' on the vocab_parallel "
                                       "backend: with a dense teacher, sorts"):
    sharding.make_vocab_parallel_loss(mesh, {"divergence": "wasserstein"})
  with pytest.raises(ValueError, match="vocab_parallel = True needs the device mesh"):
    train.make_train_step(tiny_lm.apply, record_grads(), {"vocab_parallel": True})


def test_make_mesh_fills_one_axis_and_names_bad_sizes():
  mesh = sharding.make_mesh({"data": -1, "model": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "model": 1}
  with pytest.raises(ValueError, match=r"needs 6 devices, got 8"):
    sharding.make_mesh({"data": 3, "model": 2})
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.make_mesh({"tensor": 2})
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def test_partition_rules_first_match_and_optimizer_state():
  params = tiny_lm.init(jax.random.key(0))
  state = train.init_train_state(params, optax.adam(1e-3), {})
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  specs = sharding.match_partition_rules(tiny_lm.FSDP_RULES, state, mesh=mesh)
  assert specs.params["embed"] == P("fsdp", None)
  assert specs.params["lm_head"]["kernel"] == P("fsdp", None)
  assert specs.opt_state[0].mu["dense"]["kernel"] == P("fsdp", None)  # mirrors the params
  assert specs.step == P() and specs.sad_state.temperature == P()
  paths = sharding.tree_paths(state)
  assert paths.opt_state[0].nu["lm_head"]["kernel"] == "opt_state/0/nu/lm_head/kernel"
  with pytest.raises(ValueError, match=r"no partition rule matches 'dense/kernel'"):
    sharding.match_partition_rules((("embed", ()),), params)
  with pytest.raises(ValueError, match=r"'w': dimension 6 of shape \(6, 4\) is not "
                                       r"divisible by mesh axes fsdp of size 4"):
    sharding.match_partition_rules(((".*", ("fsdp",)),), {"w": jnp.zeros((6, 4))}, mesh=mesh)
