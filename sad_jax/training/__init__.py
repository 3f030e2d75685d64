"""Training: the generic train step over any loss object (accumulation, mixed precision,
non-finite guard, NNX models), optimizers.

Checkpoints (orbax) live in :mod:`sad_jax.training.checkpoint`, imported on first use so
that ``import sad_jax`` stays light. The ready losses (SAD, token-level KD, SFT) are
re-exported from :mod:`sad_jax.objective`.
"""
from sad_jax.objective._loss import (Loss, ModelOutput, SADLoss, cross_entropy_loss,
                                     token_kd_loss)
from sad_jax.training._step import (COMPUTE_DTYPES, OPTIMIZERS, LossScale, TrainState,
                                    default_config, init_train_state, make_optimizer,
                                    make_train_step, resolve_config, summarize)

__all__ = [
    "COMPUTE_DTYPES", "Loss", "LossScale", "ModelOutput", "OPTIMIZERS", "SADLoss",
    "TrainState", "cross_entropy_loss", "default_config", "init_train_state",
    "make_optimizer", "make_train_step", "resolve_config", "summarize", "token_kd_loss",
]
