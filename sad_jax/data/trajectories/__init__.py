"""Host-side trajectories: segmentation, token alignment, batching, JSONL IO, stats.

From a JSONL of agent trajectories to exact per-token span ids (formats: see
:mod:`~sad_jax.data.trajectories.formats` for text layouts and
:mod:`~sad_jax.data.trajectories.schemas` for message schemas; user formats:
:mod:`~sad_jax.data.trajectories.spec`)::

  from sad_jax.data import trajectories as tj
  examples = [tj.tokenize(r.segmented, tokenizer) for r in tj.read_jsonl("data.jsonl")]
  batch = tj.pack(examples, seq_len=2048)   # tokens, labels, span_ids [B, T], ...

Everything here is numpy/Python; nothing runs on an accelerator.
"""
from __future__ import annotations

from sad_jax.data.trajectories.align import Tokenized, token_span_ids, tokenize
from sad_jax.data.trajectories.batching import Batch, batch, next_token_targets, pack
from sad_jax.data.trajectories.io import ReadReport, Record, read_jsonl
from sad_jax.data.trajectories.formats import TEXT_FORMATS
from sad_jax.data.trajectories.schemas import SCHEMAS
from sad_jax.data.trajectories.segment import FORMATS, detect_format, segment
from sad_jax.data.trajectories.segmented import Segmented, Span, TrajectoryError
from sad_jax.data.trajectories.spec import FormatSpec, load_spec
from sad_jax.data.trajectories.stats import (complexity, complexity_from_counts, span_char_counts,
                                        span_token_counts)

__all__ = [
    "FORMATS", "SCHEMAS", "TEXT_FORMATS", "Batch", "FormatSpec", "ReadReport", "Record",
    "Segmented", "Span", "Tokenized", "TrajectoryError", "batch", "load_spec", "complexity", "complexity_from_counts", "detect_format", "next_token_targets",
    "pack", "read_jsonl", "segment", "span_char_counts", "span_token_counts",
    "token_span_ids", "tokenize",
]
