"""The SAD objective: span types, weighting strategies, ``SADState``, the config schema
and the one composition :func:`sad_loss`.

``sad_loss(student_logits [B,T,V], teacher, span_ids [B,T], state, config)`` returns
``(loss, (metrics, new_state))``; everything that changes in training lives in
:class:`SADState`, threaded through the train step.
"""
from sad_jax.objective._config import default_config, load_config, validate
from sad_jax.objective._sad import (finalize_metrics, hard_label_ce, merge_metrics,
                                    reduce_tokens, sad_loss)
from sad_jax.objective._spans import (NUM_SPAN_TYPES, SPAN_NAMES, SpanType, span_counts,
                                      span_mask, span_masks, span_sums)
from sad_jax.objective._state import SADState, init_state, update_state
from sad_jax.objective._weighting import STRATEGIES, token_weights

__all__ = [
    "NUM_SPAN_TYPES", "SADState", "SPAN_NAMES", "STRATEGIES", "SpanType", "default_config",
    "finalize_metrics", "hard_label_ce", "init_state", "load_config", "merge_metrics",
    "reduce_tokens", "sad_loss", "span_counts", "span_mask", "span_masks", "span_sums",
    "token_weights", "update_state", "validate",
]
