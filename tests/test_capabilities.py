"""The full objective matrix: divergence x teacher kind x backend, on 8 host CPU devices.

Every vocab-parallel and fused cell the registry allows is checked against the dense
backend (the reference, with the same teacher) (loss, student
gradients, (sum, count) metrics, next ``SADState``); every refused cell must raise the
registry's message naming the combination. The vocab-parallel cells run in a
``shard_map`` over a ``data=2 x model=4`` mesh (``tests/conftest.py`` sets up 8 host
devices before jax is imported). One jitted function per (backend, teacher kind) keeps
the compile count at six.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sad_jax import backends, losses, objective
from sad_jax.losses import _registry as registry
from sad_jax.parallel import _sharding as sharding

B, T, D, V, K = 4, 6, 8, 16, 5
SPAN_IDS = np.array([[1, 2, 2, 3, 4, 3], [2, 3, 3, 4, 2, 0], [3, 2, 5, 2, 3, 3],
                     [1, 1, 2, 3, 0, 0]], np.int32)
KWARGS = {"generalized_jsd": {"beta": 0.3}, "symmetric_kl": {"ratio": 0.25},
          "skew_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2},
          "alpha_divergence": {"alpha": 0.7}, "focal_kl": {"gamma": 1.5}}
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _inputs():
  k = jax.random.split(jax.random.key(0), 5)
  hs = jax.random.normal(k[0], (B, T, D))
  ws = jax.random.normal(k[1], (D, V)) * 0.7
  ht = jax.random.normal(k[2], (B, T, D))
  wt = jax.random.normal(k[3], (D, V)) * 0.9
  labels = jax.random.randint(k[4], (B, T), 0, V)
  return hs, ws, ht, wt, labels


def _config(name, **overrides):
  return objective.resolve(dict(dict(divergence=name, divergence_kwargs=KWARGS.get(name, {}),
                                     normalization="tokens"), **overrides))


def _teacher(kind, ht, wt):
  logits = ht @ wt
  return losses.top_k_teacher(logits, K) if kind == "sparse" else logits


def _call(backend_name, cfg, hs, ws, ht, wt, labels, kind, mesh):
  """(loss, (metrics, state)) of ``cfg`` on a backend, differentiable in (hs, ws)."""
  state = objective.init_state(cfg).replace(temperature=jnp.float32(1.5))
  teacher = _teacher(kind, ht, wt)
  batch = {"span_ids": SPAN_IDS, "labels": labels}
  if backend_name == "fused":
    student = objective.ModelOutput(hidden=hs, head=ws)
    if kind == "dense":
      teacher = objective.ModelOutput(hidden=ht, head=wt)
    backend = backends.fused(chunk_size=8)
  else:
    student = objective.ModelOutput(logits=hs @ ws)
    backend = backends.vocab_parallel(mesh) if backend_name == "vocab_parallel" else None
  loss = objective.SADLoss(cfg, backend=backend)
  value, metrics = loss(student, teacher, batch, state,
                        normalizer=loss.normalizer(batch))
  return value, (metrics, loss.update_state(state, metrics))


def _allowed(backend, kind):
  return [n for n in losses.DIVERGENCES if registry.divergence_reason(n, backend, kind) is None]


def _refused(backend, kind):
  return [n for n in losses.DIVERGENCES if registry.divergence_reason(n, backend, kind)]


def _check_close(got, want, what):
  (value, (metrics, state)), grads = got
  (ref, (ref_metrics, ref_state)), ref_grads = want
  assert np.isfinite(ref), what
  np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-6, err_msg=what)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=2e-4, atol=1e-5 * float(np.abs(r).max()),
                               err_msg=what)
  assert set(metrics) == set(ref_metrics), what
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5,
                                                       err_msg=what), metrics, ref_metrics)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6,
                                                       err_msg=what), state, ref_state)


# The default run checks a few divergences per cell kind (each jitted function compiles
# every divergence's forward and backward pass); -m slow runs all of them.
CORE = ("forward_kl", "generalized_jsd", "alpha_divergence")


@pytest.mark.parametrize("subset", ["core", pytest.param("all", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", registry.TEACHER_KINDS)
@pytest.mark.parametrize("backend", ["vocab_parallel", "fused"])
def test_every_allowed_cell_equals_the_dense_reference(backend, kind, subset):
  mesh = sharding.make_mesh({"data": 2, "model": 4})
  hs, ws, ht, wt, labels = _inputs()
  names = [n for n in _allowed(backend, kind) if subset == "all" or n in CORE]
  assert names, (backend, kind)

  def grad_of(backend_name, name):
    return jax.value_and_grad(
        lambda hs, ws: _call(backend_name, _config(name), hs, ws, ht, wt, labels, kind, mesh),
        argnums=(0, 1), has_aux=True)(hs, ws)

  run = _jit(lambda hs, ws: {n: (grad_of(backend, n), grad_of("dense", n)) for n in names})
  for name, (got, want) in run(hs, ws).items():
    _check_close(got, want, f"{name} on {backend} with a {kind} teacher")


@pytest.mark.parametrize("kind", registry.TEACHER_KINDS)
@pytest.mark.parametrize("backend", registry.BACKENDS)
def test_every_refused_cell_names_the_combination(backend, kind):
  mesh = sharding.make_mesh({"data": 2, "model": 4})
  hs, ws, ht, wt, labels = _inputs()
  for name in _refused(backend, kind):
    reason = registry.divergence_reason(name, backend, kind)
    with pytest.raises(ValueError, match=f"divergence = '{name}' on the {backend} backend"):
      jax.eval_shape(lambda: _call(backend, _config(name), hs, ws, ht, wt, labels, kind, mesh))
    assert f". {reason}" in registry.capability_table()


FEATURES = dict(hard_label_weight=0.3, label_smoothing=0.1, weighting="difficulty_aware",
                normalization="span_mean",
                regularizers=dict(entropy=0.05, confidence_penalty=0.1, confidence_threshold=1.0),
                adaptive_temperature=dict(enabled=True, min=1.0, max=4.0, rate=0.2),
                temperature=1.5)


@pytest.mark.slow  # the same features run by default in test_fused.py / test_sharding.py
@pytest.mark.parametrize("backend", ["vocab_parallel", "fused"])
def test_every_feature_equals_the_dense_reference(backend):
  """Hard labels, a teacher-reading strategy, regularizers, span_mean, adaptive temperature
  (and span consistency where allowed) with both teacher kinds."""
  mesh = sharding.make_mesh({"data": 2, "model": 4})
  hs, ws, ht, wt, labels = _inputs()
  extra = {} if backend == "fused" else {"span_consistency": 0.2}
  cfg = _config("generalized_jsd", **dict(FEATURES, regularizers=dict(
      FEATURES["regularizers"], **extra)))

  def grad_of(backend_name, kind):
    return jax.value_and_grad(
        lambda hs, ws: _call(backend_name, cfg, hs, ws, ht, wt, labels, kind, mesh),
        argnums=(0, 1), has_aux=True)(hs, ws)

  run = _jit(lambda hs, ws: {k: (grad_of(backend, k), grad_of("dense", k))
                             for k in registry.TEACHER_KINDS})
  for kind, (got, want) in run(hs, ws).items():
    _check_close(got, want, f"features on {backend} with a {kind} teacher")


def test_refused_features_name_the_setting_and_the_table_is_derived():
  cfg = _config("forward_kl", regularizers=dict(span_consistency=0.1))
  with pytest.raises(ValueError, match="regularizers.span_consistency on the fused backend"):
    objective.SADLoss(cfg, backend="fused")
  table = registry.capability_table()
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + len(losses.DIVERGENCES) + len(registry.FEATURES)
  for name in losses.DIVERGENCES:
    assert f"| `{name}` |" in table


def test_the_docs_print_the_current_capability_table():
  import pathlib
  page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
  assert registry.capability_table() in page.read_text(), (
      "docs/architecture.md is out of date: paste the output of "
      "python -c 'from sad_jax import losses; print(losses.capability_table())'")
