"""Backends of the vocabulary operations: the fused chunked lm-head path.

:func:`fused_sad_loss` takes hidden states ``[N, d]`` and lm-head weights instead of
logits and never materializes ``[N, V]``.
"""
from sad_jax.backends._fused import fused_distill_loss, fused_sad_loss

__all__ = ["fused_distill_loss", "fused_sad_loss"]
