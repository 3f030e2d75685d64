"""Parallelism: device meshes, partition rules, shardings, jit wrappers, vocab-parallel loss."""
from sad_jax.parallel._sharding import (BATCH_AXES, MESH_AXES, REPLICATE_ALL,
                                        VOCAB_AXIS, VOCAB_PARALLEL_DIVERGENCES,
                                        batch_shardings, jit_train_step, make_mesh,
                                        make_vocab_parallel_loss, match_partition_rules,
                                        replicated, tree_paths, tree_shardings,
                                        vocab_parallel_divergence,
                                        vocab_parallel_log_softmax, vocab_parallel_sad_loss,
                                        vocab_parallel_statistics)

__all__ = [
    "BATCH_AXES", "MESH_AXES", "REPLICATE_ALL", "VOCAB_AXIS", "VOCAB_PARALLEL_DIVERGENCES",
    "batch_shardings", "jit_train_step", "make_mesh", "make_vocab_parallel_loss",
    "match_partition_rules", "replicated", "tree_paths", "tree_shardings",
    "vocab_parallel_divergence", "vocab_parallel_log_softmax", "vocab_parallel_sad_loss",
    "vocab_parallel_statistics",
]
