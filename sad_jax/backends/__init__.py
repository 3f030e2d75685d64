"""Backends of the vocabulary operations of the one composition (``sad_loss``).

* :func:`dense` -- logits ``[B, T, V]`` (the default);
* :func:`vocab_parallel` -- logits split over a mesh axis along the vocabulary;
* :func:`fused` -- hidden states and lm-head, logits formed chunk by chunk.

Pass one to :class:`sad_jax.objective.SADLoss` (``backend=``) or
:func:`sad_jax.objective.sad_loss`; what each supports is
:func:`sad_jax.losses.capability_table`. The interface is documented in
:mod:`sad_jax.backends._base`.
"""
from sad_jax.backends._base import STATISTICS, Terms
from sad_jax.backends._dense import DENSE, Dense, dense_statistics, dense_terms
from sad_jax.backends._fused import Fused, fused_distill_loss, fused_sad_loss
from sad_jax.backends._vocab_parallel import (VOCAB_PARALLEL_DIVERGENCES, VocabParallel,
                                              vocab_parallel_divergence,
                                              vocab_parallel_log_softmax,
                                              vocab_parallel_statistics)


def dense() -> Dense:
  """The dense backend (logits ``[B, T, V]`` from ``ModelOutput.logits``)."""
  return DENSE


def vocab_parallel(mesh=None, *, vocab_axis: str = "model",
                   batch_axes=("data", "fsdp")) -> VocabParallel:
  """The vocab-parallel backend: a ``shard_map`` over ``mesh`` (``None``: the caller is
  already inside ``shard_map`` / ``pmap`` with ``vocab_axis`` mapped)."""
  return VocabParallel(mesh, vocab_axis=vocab_axis, batch_axes=batch_axes)


def fused(chunk_size: int | None = None) -> Fused:
  """The fused lm-head backend (``ModelOutput(hidden=[B, T, d], head=[d, V])``)."""
  return Fused(chunk_size)


def get_backend(backend=None):
  """A backend object from ``None`` / ``"dense"`` / ``"fused"`` or a backend object.

  ``"vocab_parallel"`` needs a mesh, so it is built with :func:`vocab_parallel`.
  """
  if backend is None or backend == "dense":
    return DENSE
  if backend == "fused":
    return Fused()
  if isinstance(backend, str):
    raise ValueError(f"backend = {backend!r}: pass 'dense', 'fused' or a backend object "
                     "(sad_jax.backends.vocab_parallel(mesh) for the vocab-parallel one)")
  for attr in ("name", "check", "statistics", "terms", "run", "token_shape", "vocab_size"):
    if not hasattr(backend, attr):
      raise TypeError(f"backend {backend!r} has no {attr!r}; see sad_jax.backends._base for "
                      "the interface")
  return backend


__all__ = [
    "DENSE", "Dense", "Fused", "STATISTICS", "Terms", "VOCAB_PARALLEL_DIVERGENCES",
    "VocabParallel", "dense", "dense_statistics", "dense_terms", "fused",
    "fused_distill_loss", "fused_sad_loss", "get_backend", "vocab_parallel",
    "vocab_parallel_divergence", "vocab_parallel_log_softmax", "vocab_parallel_statistics",
]
