"""sad_jax: Structured Agent Distillation in JAX."""
from sad_jax import divergences
from sad_jax import spans
from sad_jax.divergences import get_divergence, pad_vocab
from sad_jax.spans import SpanType
from sad_jax.objective import sad_loss
from sad_jax.state import SADState, init_state

__version__ = "0.1.0"

__all__ = ["divergences", "spans", "get_divergence", "pad_vocab", "SpanType"]
__all__ += ["sad_loss", "init_state", "SADState"]
