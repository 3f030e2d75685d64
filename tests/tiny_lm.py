"""A tiny language model and batches for the train / sharding / checkpoint tests.

``apply(params, batch) -> logits [B, T, V]``: embedding -> tanh dense -> lm head.
Sizes are chosen so that no two of ``B, T, D, V`` coincide, which lets the HLO
test recognise a ``[tokens, V]`` array by its dimensions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

VOCAB, DIM, BATCH, SEQ = 64, 16, 8, 6

# Partition rules (big_vision style) for the three parallelism layouts under test.
DP_RULES = ((".*", ()),)
FSDP_RULES = (("embed", ("fsdp", None)), ("kernel", ("fsdp", None)), (".*", ()))
VOCAB_RULES = (("lm_head/kernel", (None, "model")), ("embed", ("model", None)), (".*", ()))
ALL_RULES = (("lm_head/kernel", ("fsdp", "model")), ("embed", ("model", "fsdp")),
             ("kernel", ("fsdp", None)), (".*", ()))


def init(key: jax.Array) -> dict:
  k = jax.random.split(key, 3)
  return {"embed": jax.random.normal(k[0], (VOCAB, DIM)) * 0.5,
          "dense": {"kernel": jax.random.normal(k[1], (DIM, DIM)) * 0.3},
          "lm_head": {"kernel": jax.random.normal(k[2], (DIM, VOCAB)) * 0.3}}


def apply(params: dict, batch) -> jax.Array:
  h = params["embed"][batch["tokens"]]
  h = jnp.tanh(h @ params["dense"]["kernel"])
  return h @ params["lm_head"]["kernel"]


def make_batch(key: jax.Array, *, batch: int = BATCH, teacher_scale: float = 2.0) -> dict:
  """Tokens, span ids (every span type, some PAD), labels and offline teacher logits."""
  k = jax.random.split(key, 4)
  return {"tokens": jax.random.randint(k[0], (batch, SEQ), 0, VOCAB),
          "span_ids": jax.random.randint(k[1], (batch, SEQ), 0, 6),
          "labels": jax.random.randint(k[2], (batch, SEQ), 0, VOCAB),
          "teacher": jax.random.normal(k[3], (batch, SEQ, VOCAB)) * teacher_scale}
