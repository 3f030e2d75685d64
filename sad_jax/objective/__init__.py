"""The SAD objective: span types, weighting strategies, ``SADState``, the config schema,
the one composition :func:`sad_loss` and the loss objects a train step optimizes.

``sad_loss(student_logits [B,T,V], teacher, span_ids [B,T], state, config)`` returns
``(loss, (metrics, new_state))``; everything that changes in training lives in
:class:`SADState`, threaded through the train step. :class:`SADLoss`,
:func:`token_kd_loss` and :func:`cross_entropy_loss` are that composition as loss
objects (:class:`Loss`), validated once when built, on any backend.
"""
from sad_jax.losses._cross_entropy import hard_label_ce
from sad_jax.objective._config import default_config, load_config, merge, resolve, validate
from sad_jax.objective._loss import (Loss, ModelOutput, SADLoss, as_model_output,
                                     cross_entropy_loss, token_kd_loss)
from sad_jax.objective._sad import (finalize_metrics, loss_normalizer, merge_metrics,
                                    reduce_tokens, sad_loss, token_coefficients)
from sad_jax.objective._spans import (NUM_SPAN_TYPES, SPAN_NAMES, SpanType, span_counts,
                                      span_mask, span_masks, span_sums)
from sad_jax.objective._state import SADState, init_state, update_state
from sad_jax.objective._weighting import STRATEGIES, token_weights

__all__ = [
    "Loss", "ModelOutput", "NUM_SPAN_TYPES", "SADLoss", "SADState", "SPAN_NAMES",
    "STRATEGIES", "SpanType", "as_model_output", "cross_entropy_loss", "default_config",
    "finalize_metrics", "hard_label_ce", "init_state", "load_config", "loss_normalizer",
    "merge", "merge_metrics", "reduce_tokens", "resolve", "sad_loss", "span_counts",
    "span_mask", "span_masks", "span_sums", "token_coefficients", "token_kd_loss",
    "token_weights", "update_state", "validate",
]
