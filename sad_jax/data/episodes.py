"""On-policy episodes: what the student sampled and the environment inserted, as span ids.

An on-policy rollout is a task prompt followed by turns; in each turn the student
samples token ids, then the environment inserts token ids (the observation, the
chat template's turn glue, the header of the next turn)::

  prompt ids | sampled_1 | inserted_1 | sampled_2 | inserted_2 | ...

:func:`episode_example` turns it into one example with an exact span id per
**sampled** token id -- never by re-tokenizing the text, since a re-tokenized
sequence can differ from what was sampled (a sampler may emit ``"<th" "ink>"``
where the tokenizer would merge ``"<think>"``, or split a character into byte
tokens):

1. the whole id stream is decoded incrementally (:func:`decode_offsets`), which
   gives the text and each token's character ``(start, end)`` in it;
2. the text is segmented with the public
   :func:`sad_jax.data.trajectories.segment` (any format, ``strict=False``, so
   broken output is labelled and its recovery recorded) or any ``text ->
   Segmented`` callable;
3. each token gets the span type of its characters
   (:func:`sad_jax.data.trajectories.token_span_ids`), then its *provenance*
   decides: prompt ids are ``PROMPT``, inserted ids ``OBSERVATION``, and sampled
   ids ``REASONING`` where the segmentation says reasoning and ``ACTION``
   otherwise (the end-of-turn token and any template glue the student emitted
   included: every sampled token is the agent's). A sampled token whose text the
   segmentation types ``PROMPT`` or ``OBSERVATION`` (say, a hallucinated
   ``Observation:`` line) is ``ACTION`` and the relabelling is recorded.

Recovery is recorded, never silent (:class:`Recovery`): every warning of the
segmentation (an unclosed ``<think>``, tool-call JSON that does not parse, text
outside a turn, ...) with the turn its character position falls in, every turn
the sampler cut at its token limit (``Turn.truncated``), and every relabelling
above.

:func:`batch_episodes` lays examples out one per row, with the next-token
``turn_ids`` the turn-aware weights of :mod:`sad_jax.objective` read.
Everything here is host-side Python/numpy.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from sad_jax.data.trajectories import batching
from sad_jax.data.trajectories.align import token_span_ids
from sad_jax.data.trajectories.segment import segment
from sad_jax.data.trajectories.segmented import Segmented
from sad_jax.objective._spans import SpanType

PROMPT_SOURCE, SAMPLED_SOURCE, INSERTED_SOURCE = 0, 1, 2
_WARNING_POSITION = re.compile(r" \(char (\d+)(?:\)| near )")


class Turn(NamedTuple):
  """One turn of a rollout.

  Attributes:
    sampled: the token ids the student sampled in this turn, in order.
    inserted: the token ids the environment (or the chat template) inserted
      after them: the observation, turn glue, the next turn's header.
    truncated: the sampler stopped this turn at its token limit (the turn is
      still labelled; the cut is recorded as a :class:`Recovery`).
  """
  sampled: Sequence[int]
  inserted: Sequence[int] = ()
  truncated: bool = False


class Recovery(NamedTuple):
  """One thing :func:`episode_example` recovered from.

  Attributes:
    turn: the 1-based turn the position falls in (0: the prompt; the text the
      environment inserted after turn ``k`` belongs to turn ``k``).
    position: character offset in ``Episode.text`` (-1 when the segmentation's
      warning gives none).
    reason: what was wrong and how it was labelled.
  """
  turn: int
  position: int
  reason: str


class Episode(NamedTuple):
  """One rollout as a span-labelled example (``batch``/``pack`` take it like a ``Tokenized``).

  Attributes:
    ids: ``[T]`` int32, the prompt, sampled and inserted ids in rollout order.
    span_ids: ``[T]`` int32 :class:`~sad_jax.objective.SpanType` per id.
    turn_ids: ``[T]`` int32: 0 on the prompt, ``k`` on the ids sampled in turn
      ``k`` and on the ids inserted after them.
    source: ``[T]`` int8: 0 prompt, 1 sampled by the student, 2 inserted.
    offsets: ``[T, 2]`` int32 character ``(start, end)`` of each id in ``text``.
    text: the decoded rollout.
    segmented: the segmentation of ``text``.
    recoveries: what was recovered from (see the module docstring).
  """
  ids: np.ndarray
  span_ids: np.ndarray
  turn_ids: np.ndarray
  source: np.ndarray
  offsets: np.ndarray
  text: str
  segmented: Segmented
  recoveries: tuple[Recovery, ...]


class EpisodeBatch(NamedTuple):
  """Episodes one per row: the fields of :class:`~sad_jax.data.trajectories.Batch`
  plus the turn of every next-token label.

  Attributes:
    tokens, labels, span_ids, input_span_ids, segment_ids, positions, truncated:
      as in :class:`~sad_jax.data.trajectories.Batch` (``span_ids`` are the
      labels' span types).
    turn_ids: ``[B, T]`` int32 turn of each label (the id predicted at ``t``):
      0 on the prompt and where there is no label.
  """
  tokens: np.ndarray
  labels: np.ndarray
  span_ids: np.ndarray
  input_span_ids: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  truncated: np.ndarray
  turn_ids: np.ndarray


def _decode_fn(decoder: Any) -> Callable[[list[int]], str]:
  if hasattr(decoder, "decode") and callable(decoder.decode):
    # tokenizers.Tokenizer and transformers tokenizers: keep special tokens, they were sampled.
    return lambda ids: decoder.decode(ids, skip_special_tokens=False)
  if callable(decoder):
    return decoder
  raise TypeError("decoder must be a tokenizers.Tokenizer, a transformers tokenizer or a "
                  f"callable ids -> str, got {type(decoder).__name__}")


def decode_offsets(ids: Sequence[int], decoder: Any) -> tuple[str, np.ndarray]:
  """Decodes ids incrementally, the way a streaming sampler shows them, with offsets.

  Token ``i`` emits the text that ``decode(ids[p:i + 1])`` adds to
  ``decode(ids[p:r])``, where ``ids[p:r]`` is the last emitted chunk (the
  incremental detokenization of Hugging Face's text-generation-inference and
  vLLM): the previous chunk is context, so decoders that drop the leading space of
  a sequence's first token (SentencePiece's ``▁``) stay exact. A token whose
  bytes do not complete a character yet (the decode ends in ``U+FFFD``) emits
  nothing and shares the offsets of the token that completes it; the text is the
  concatenation of what the tokens emit.

  Args:
    ids: ``[T]`` token ids.
    decoder: a ``tokenizers.Tokenizer`` / ``transformers`` tokenizer (decoded with
      ``skip_special_tokens=False``) or a callable ``ids -> str``.

  Returns:
    ``(text, offsets)``: the text and ``[T, 2]`` int64 ``(start, end)`` per token.

  Raises:
    ValueError: the decoder is not prefix-stable (adding a token rewrote text
      already emitted), naming the token index.
  """
  decode = _decode_fn(decoder)
  ids = [int(i) for i in ids]
  n = len(ids)
  parts: list[str] = []
  length = 0
  emitted = np.full(n, -1, np.int64)   # token -> index of the piece it completed
  bounds: list[tuple[int, int]] = []
  prefix = read = 0
  for i in range(n):
    prefix_text = decode(ids[prefix:read])
    new_text = decode(ids[prefix:i + 1])
    last = i == n - 1
    if len(new_text) > len(prefix_text) and (last or not new_text.endswith("\ufffd")):
      if not new_text.startswith(prefix_text):
        raise ValueError(
            f"decoder is not prefix-stable at token {i} (id {ids[i]}): decoding "
            f"{ids[prefix:i + 1]} gives {new_text!r}, which does not extend {prefix_text!r}")
      piece = new_text[len(prefix_text):]
      emitted[i] = len(bounds)
      bounds.append((length, length + len(piece)))
      parts.append(piece)
      length += len(piece)
      prefix, read = read, i + 1
  offsets = np.zeros((n, 2), np.int64)
  nxt = (length, length)
  for i in range(n - 1, -1, -1):
    if emitted[i] >= 0:
      nxt = bounds[emitted[i]]
    offsets[i] = nxt
  return "".join(parts), offsets


def _as_ids(x, what: str) -> np.ndarray:
  arr = np.asarray(list(x) if not isinstance(x, np.ndarray) else x)
  if arr.size == 0:
    return np.zeros((0,), np.int64)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{what} must be a 1-D sequence of int token ids, got "
                     f"dtype {arr.dtype} and shape {arr.shape}")
  if np.any(arr < 0):
    raise ValueError(f"{what} has a negative token id {int(arr[arr < 0][0])}")
  return arr.astype(np.int64)


def _runs(mask: np.ndarray):
  """``(start, end)`` of the runs of True in a 1-D bool array."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
  return zip(edges[::2], edges[1::2])


def episode_example(prompt_ids: Sequence[int], turns: Sequence[Turn], decoder: Any, *,
                    format: str = "auto",  # pylint: disable=redefined-builtin
                    segmenter: Callable[[str], Segmented] | None = None) -> Episode:
  """A rollout -> one example with exact span ids on the sampled ids.

  Args:
    prompt_ids: the task prompt's ids (system prompt, task, the first turn's
      header: everything before the student's first sampled id).
    turns: :class:`Turn` s (or ``(sampled, inserted[, truncated])`` tuples).
    decoder: see :func:`decode_offsets`.
    format: the trajectory format of the decoded text, passed to
      :func:`sad_jax.data.trajectories.segment` with ``strict=False``
      (``"auto"`` detects it).
    segmenter: instead of ``format``, any callable ``text -> Segmented`` (e.g. a
      ``segment`` call with a chat template of your own).

  Returns:
    :class:`Episode`.

  Raises:
    ValueError: no turns, bad ids, or a ``segmenter`` that does not return a
      ``Segmented`` of the decoded text.
  """
  if segmenter is not None and format != "auto":
    raise ValueError(f"give either format= or segmenter=, got format={format!r} and a segmenter")
  if not turns:
    raise ValueError("turns is empty: an episode needs at least one student turn")
  chunks = [(_as_ids(prompt_ids, "prompt_ids"), PROMPT_SOURCE, 0)]
  truncated = []
  for k, turn in enumerate(turns, start=1):
    turn = Turn(*turn)
    chunks.append((_as_ids(turn.sampled, f"turns[{k - 1}].sampled"), SAMPLED_SOURCE, k))
    chunks.append((_as_ids(turn.inserted, f"turns[{k - 1}].inserted"), INSERTED_SOURCE, k))
    truncated.append(bool(turn.truncated))
  ids = np.concatenate([c[0] for c in chunks])
  if ids.size == 0:
    raise ValueError("the episode has no token ids (empty prompt and turns)")
  source = np.concatenate([np.full(c[0].size, c[1], np.int8) for c in chunks])
  turn_ids = np.concatenate([np.full(c[0].size, c[2], np.int32) for c in chunks])

  text, offsets = decode_offsets(ids, decoder)
  seg = (segmenter or (lambda t: segment(t, format=format, strict=False)))(text)
  if not isinstance(seg, Segmented) or seg.text != text:
    raise ValueError("segmenter must return a Segmented of exactly the decoded text")
  char_types = token_span_ids(seg, offsets)

  span_ids = np.where(source == PROMPT_SOURCE, int(SpanType.PROMPT),
                      int(SpanType.OBSERVATION)).astype(np.int32)
  sampled = source == SAMPLED_SOURCE
  span_ids[sampled] = np.where(char_types[sampled] == int(SpanType.REASONING),
                               int(SpanType.REASONING), int(SpanType.ACTION))

  # Turn of each character, for placing the segmentation's warnings.
  token_at = np.searchsorted(offsets[:, 0], np.arange(len(text) + 1), side="right") - 1
  char_turn = np.where(token_at >= 0, turn_ids[np.maximum(token_at, 0)], 0)
  recoveries = []
  for warning in seg.warnings:
    m = _WARNING_POSITION.search(warning)
    pos = int(m.group(1)) if m else -1
    recoveries.append(Recovery(int(char_turn[pos]) if 0 <= pos <= len(text) else 0, pos,
                               f"segmentation: {warning}"))
  foreign = sampled & np.isin(char_types, [int(SpanType.PROMPT), int(SpanType.OBSERVATION)])
  for start, end in _runs(foreign):
    typ = SpanType(int(char_types[start])).name
    recoveries.append(Recovery(
        int(turn_ids[start]), int(offsets[start, 0]),
        f"sampled tokens {start}..{end - 1} are text the segmentation types {typ}; "
        "labelled ACTION (the student wrote them)"))
  for k, cut in enumerate(truncated, start=1):
    if cut:
      in_turn = np.flatnonzero(sampled & (turn_ids == k))
      pos = int(offsets[in_turn[-1], 1]) if in_turn.size else -1
      recoveries.append(Recovery(k, pos, f"turn {k} cut at the token limit after "
                                          f"{in_turn.size} sampled tokens; labelled as sampled"))
  recoveries.sort(key=lambda r: (r.turn, r.position))
  return Episode(ids.astype(np.int32), span_ids, turn_ids, source, offsets.astype(np.int32),
                 text, seg, tuple(recoveries))


def batch_episodes(episodes: Sequence[Episode], seq_len: int, *, pad_id: int = 0,
                   truncate: str = "right") -> EpisodeBatch:
  """One episode per row, padded or cut to ``seq_len``, with next-token turn ids.

  The rows, the cut and the shift are those of
  :func:`sad_jax.data.trajectories.batch` (which places any per-token array the
  way it places span ids): ``turn_ids[b, t]`` is the turn of ``labels[b, t]``,
  0 where there is no label.

  Args:
    episodes: :class:`Episode` s.
    seq_len: row length ``T``.
    pad_id: padding id and missing-label id.
    truncate: ``"right"`` or ``"left"``, as in ``batch``.

  Returns:
    :class:`EpisodeBatch` ``[B = len(episodes), T = seq_len]``.
  """
  for i, ep in enumerate(episodes):
    if not isinstance(ep, Episode):
      raise TypeError(f"episodes[{i}] must be an Episode (from episode_example), "
                      f"got {type(ep).__name__}")
  base = batching.batch(list(episodes), seq_len, pad_id=pad_id, truncate=truncate)
  turns = batching.batch([(ep.ids, ep.turn_ids) for ep in episodes], seq_len, pad_id=pad_id,
                         truncate=truncate)
  return EpisodeBatch(*base, turn_ids=turns.span_ids)


__all__ = ["Episode", "EpisodeBatch", "Recovery", "Turn", "batch_episodes", "decode_offsets",
           "episode_example"]
