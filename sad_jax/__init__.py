"""sad_jax: Structured Agent Distillation in JAX."""
from sad_jax import checkpoint
from sad_jax import divergences
from sad_jax import sharding
from sad_jax import spans
from sad_jax import train
from sad_jax import trajectories
from sad_jax.checkpoint import CheckpointError, Checkpointer
from sad_jax.divergences import get_divergence, pad_vocab
from sad_jax.fused import fused_distill_loss, fused_sad_loss
from sad_jax.objective import sad_loss
from sad_jax.sparse import SparseTeacher, top_k_teacher
from sad_jax.spans import SpanType
from sad_jax.state import SADState, init_state
from sad_jax.train import TrainState, make_train_step

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "Checkpointer", "SADState", "SparseTeacher", "SpanType",
    "TrainState", "checkpoint", "divergences", "fused_distill_loss", "fused_sad_loss",
    "get_divergence", "init_state", "make_train_step", "pad_vocab", "sad_loss",
    "sharding", "spans", "top_k_teacher", "train", "trajectories",
]
