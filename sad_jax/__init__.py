"""sad_jax: Structured Agent Distillation in JAX."""
from sad_jax import divergences
from sad_jax import spans
from sad_jax.divergences import get_divergence, pad_vocab
from sad_jax.spans import SpanType
from sad_jax.objective import sad_loss
from sad_jax.state import SADState, init_state
from sad_jax.sparse import SparseTeacher, top_k_teacher
from sad_jax.fused import fused_distill_loss
from sad_jax import checkpoint, sharding, train
from sad_jax.checkpoint import Checkpointer, CheckpointError
from sad_jax.train import TrainState, make_train_step

__version__ = "0.1.0"

__all__ = ["divergences", "spans", "get_divergence", "pad_vocab", "SpanType"]
__all__ += ["sad_loss", "init_state", "SADState"]
__all__ += ["train", "sharding", "checkpoint", "TrainState", "make_train_step",
            "Checkpointer", "CheckpointError"]
__all__ += ["SparseTeacher", "top_k_teacher", "fused_distill_loss"]
