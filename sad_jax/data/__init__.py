"""Host-side data (numpy, no accelerator): trajectories -> span-labelled batches, and the
offline teacher cache.

* :mod:`sad_jax.data.trajectories` -- formats, segmentation, tokenizer alignment,
  batching and packing, JSONL reading.
* :mod:`sad_jax.data.teacher_cache` -- top-k teacher log-probs written once, read per batch.
* :mod:`sad_jax.data.episodes` -- on-policy rollouts (sampled and inserted ids) -> span ids.
"""
from sad_jax.data import episodes, teacher_cache, trajectories

__all__ = ["episodes", "teacher_cache", "trajectories"]
