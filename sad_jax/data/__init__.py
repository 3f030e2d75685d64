"""Host-side data (numpy, no accelerator): trajectories -> span-labelled batches, and the
offline teacher cache.

* :mod:`sad_jax.data.trajectories` -- formats, segmentation, tokenizer alignment,
  batching and packing, JSONL reading.
* :mod:`sad_jax.data.teacher_cache` -- top-k teacher log-probs written once, read per batch.
"""
from sad_jax.data import teacher_cache, trajectories

__all__ = ["teacher_cache", "trajectories"]
