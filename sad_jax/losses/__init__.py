"""Losses: per-token divergences over the vocabulary axis, sparse (top-k) teachers,
cross-entropy, regularizers, and the registry of what each backend supports.

Every divergence maps ``student_logits [..., V]`` and a teacher (dense logits
``[..., V]`` or a :class:`SparseTeacher`) to ``[...]``: reduced over the vocabulary
only, computed in float32. Reducing over tokens and spans is the objective's job.
"""
from sad_jax.losses._divergences import (DIVERGENCES, SPARSE_DIVERGENCES, adaptive_kl,
                                         alpha_beta_divergence, alpha_divergence, focal_kl,
                                         forward_kl, generalized_jsd, get_divergence,
                                         pad_vocab, reverse_kl, skew_kl, skew_reverse_kl,
                                         symmetric_kl, total_variation, wasserstein)
from sad_jax.losses._cross_entropy import hard_label_ce
from sad_jax.losses._registry import (BACKENDS, TEACHER_KINDS, VOCAB_TERMS, capability_table,
                                      divergence_reason)
from sad_jax.losses._regularizers import (confidence_penalty, entropy, entropy_regularizer,
                                          moe_load_balance, span_consistency)
from sad_jax.losses._sparse import (SparseTeacher, renormalize_both, renormalize_teacher,
                                    tail_bucket, top_k_teacher)

__all__ = [
    "BACKENDS", "DIVERGENCES", "SPARSE_DIVERGENCES", "SparseTeacher", "TEACHER_KINDS",
    "VOCAB_TERMS", "adaptive_kl", "capability_table", "divergence_reason", "hard_label_ce",
    "alpha_beta_divergence", "alpha_divergence", "confidence_penalty", "entropy",
    "entropy_regularizer", "focal_kl", "forward_kl", "generalized_jsd", "get_divergence",
    "moe_load_balance", "pad_vocab", "renormalize_both", "renormalize_teacher",
    "reverse_kl", "skew_kl", "skew_reverse_kl", "span_consistency", "symmetric_kl",
    "tail_bucket", "top_k_teacher", "total_variation", "wasserstein",
]
