"""sad_jax: Structured Agent Distillation in JAX.

Families (each a subpackage with a curated public surface):

* :mod:`sad_jax.losses` -- per-token divergences, sparse teachers, regularizers;
* :mod:`sad_jax.objective` -- span types, weighting, ``SADState``, config, ``sad_loss``;
* :mod:`sad_jax.backends` -- the fused lm-head path;
* :mod:`sad_jax.training` -- the train step, optimizers; ``training.checkpoint`` (orbax);
* :mod:`sad_jax.parallel` -- meshes, partition rules, shardings;
* :mod:`sad_jax.data` -- trajectories and the teacher cache (host side).
"""
from sad_jax import backends, data, losses, objective, parallel, training
from sad_jax.backends import fused_distill_loss, fused_sad_loss
from sad_jax.losses import SparseTeacher, get_divergence, pad_vocab, top_k_teacher
from sad_jax.objective import SADState, SpanType, init_state, sad_loss
from sad_jax.training import TrainState, make_train_step

__version__ = "0.1.0"

__all__ = [
    "SADState", "SparseTeacher", "SpanType", "TrainState", "backends", "data",
    "fused_distill_loss", "fused_sad_loss", "get_divergence", "init_state", "losses",
    "make_train_step", "objective", "pad_vocab", "parallel", "sad_loss", "top_k_teacher",
    "training",
]
