"""Training: the train step (accumulation, mixed precision, non-finite guard), optimizers.

Checkpoints (orbax) live in :mod:`sad_jax.training.checkpoint`, imported on first use so
that ``import sad_jax`` stays light.
"""
from sad_jax.training._step import (COMPUTE_DTYPES, OPTIMIZERS, TrainState, default_config,
                                    init_train_state, make_optimizer, make_train_step,
                                    resolve_config, summarize)

__all__ = [
    "COMPUTE_DTYPES", "OPTIMIZERS", "TrainState", "default_config", "init_train_state",
    "make_optimizer", "make_train_step", "resolve_config", "summarize",
]
