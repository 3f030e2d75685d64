"""Token-level span ids from character spans, and tokenization with offsets."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from sad_jax.objective._spans import SpanType
from sad_jax.data.trajectories.segmented import Segmented

# Every code point for which str.isspace() is true lies below U+3001.
_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], np.uint32)


class Tokenized(NamedTuple):
  """One tokenized trajectory.

  Attributes:
    ids: ``[T]`` int32 token ids.
    span_ids: ``[T]`` int32 :class:`~sad_jax.objective._spans.SpanType` of each token.
    offsets: ``[T, 2]`` int32 character ``(start, end)`` of each token in the text.
  """
  ids: np.ndarray
  span_ids: np.ndarray
  offsets: np.ndarray


def _as_offsets(offsets, text_len: int) -> np.ndarray:
  arr = np.asarray(offsets, dtype=np.int64)
  if arr.size == 0:
    return np.zeros((0, 2), np.int64)
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(f"offsets must be a sequence of (start, end) pairs, got shape {arr.shape}")
  bad = np.flatnonzero((arr[:, 0] < 0) | (arr[:, 0] > arr[:, 1]) | (arr[:, 1] > text_len))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
        f"offsets[{i}] = {tuple(arr[i].tolist())} must satisfy 0 <= start <= end <= "
        f"len(text) = {text_len}")
  return arr


def token_span_ids(segmented: Segmented, offsets: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
  """Span type of each token, from its character offsets.

  A token takes the type of its first non-whitespace character; a
  whitespace-only token takes the type of its first character; an empty token
  (e.g. a special token a tokenizer inserted, offsets ``(0, 0)``) is ``OTHER``.
  Characters outside every span are ``OTHER``. Linear in ``len(text) + T``
  (offsets may overlap, as byte-level tokens splitting one character do).

  Args:
    segmented: the :class:`Segmented` text the offsets index into.
    offsets: ``[T, 2]`` character ``(start, end)`` per token, ``end`` exclusive.

  Returns:
    ``[T]`` int32 span ids.
  """
  text = segmented.text
  offs = _as_offsets(offsets, len(text))
  n = len(text)
  char_types = np.append(segmented.char_types(), np.int8(SpanType.OTHER))
  codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
  # next_solid[i]: index of the first non-whitespace character at or after i (n if none).
  idx = np.where(np.isin(codes, _WHITESPACE), n, np.arange(n))
  next_solid = np.append(np.minimum.accumulate(idx[::-1])[::-1], n)
  starts, ends = offs[:, 0], offs[:, 1]
  first = next_solid[starts]
  pick = np.where(first < ends, first, np.where(starts < ends, starts, n))
  return char_types[pick].astype(np.int32)


def tiktoken_offsets(text: str, ids: Sequence[int], encoding: Any) -> np.ndarray:
  """Character ``(start, end)`` of each token of a ``tiktoken.Encoding``, from its bytes.

  A token that starts or ends inside a multi-byte character covers the whole
  character (so neighbouring byte-level tokens may overlap by one character,
  as Hugging Face byte-level offsets do).

  Raises:
    ValueError: the tokens' bytes do not spell ``text`` in UTF-8.
  """
  lengths = np.array([len(encoding.decode_single_token_bytes(int(i))) for i in ids], np.int64)
  codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  nbytes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
  char_of_byte = np.repeat(np.arange(len(text)), nbytes)
  if int(lengths.sum()) != char_of_byte.size:
    raise ValueError(f"tiktoken tokens decode to {int(lengths.sum())} bytes but the text has "
                     f"{char_of_byte.size} UTF-8 bytes (was the text normalized?)")
  ends = np.cumsum(lengths)
  starts = ends - lengths
  char_of_byte = np.append(char_of_byte, len(text))
  c0 = char_of_byte[starts]
  c1 = np.where(lengths > 0, char_of_byte[np.maximum(ends - 1, 0)] + 1, c0)
  return np.stack([c0, c1], axis=1) if len(ids) else np.zeros((0, 2), np.int64)


def _encode(text: str, tokenizer: Any, add_special_tokens: bool):
  if hasattr(tokenizer, "backend_tokenizer"):  # transformers' fast tokenizers
    tokenizer = tokenizer.backend_tokenizer
  if hasattr(tokenizer, "decode_single_token_bytes") and hasattr(tokenizer, "encode_ordinary"):
    ids = tokenizer.encode(text, allowed_special="all")  # a tiktoken.Encoding
    return ids, tiktoken_offsets(text, ids, tokenizer)
  if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):
    enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return enc.ids, enc.offsets
  if callable(tokenizer):
    out = tokenizer(text)
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(
          f"tokenizer callable must return (ids, offsets), got {type(out).__name__}")
    return out
  raise TypeError(
      "tokenizer must be a tokenizers.Tokenizer, a tiktoken.Encoding or a callable "
      "text -> (ids, offsets), "
      f"got {type(tokenizer).__name__}")


def tokenize(segmented: Segmented,
             tokenizer: Any | Callable[[str], tuple[Sequence[int], Sequence[tuple[int, int]]]],
             *, add_special_tokens: bool = False) -> Tokenized:
  """Tokenizes the text of ``segmented`` and gives every token its span id.

  Args:
    segmented: output of :func:`~sad_jax.data.trajectories.segment`.
    tokenizer: a Hugging Face ``tokenizers.Tokenizer`` (or a ``transformers``
      fast tokenizer: its ``backend_tokenizer`` is used; character offsets come
      from the encoding); a ``tiktoken.Encoding`` (special tokens written in the
      text, such as ``<|im_start|>``, are encoded as special tokens; offsets come
      from each token's bytes, :func:`tiktoken_offsets`); or any callable
      ``text -> (ids [T], offsets [T, 2])``.
    add_special_tokens: passed to ``Tokenizer.encode`` (BOS/EOS from the
      post-processor; they get span id ``OTHER``); tiktoken adds none.

  Returns:
    :class:`Tokenized` with ``ids [T]``, ``span_ids [T]``, ``offsets [T, 2]``.
  """
  if not isinstance(segmented, Segmented):
    raise TypeError(f"segmented must be a Segmented (from segment()), got {type(segmented).__name__}")
  ids, offsets = _encode(segmented.text, tokenizer, add_special_tokens)
  ids = np.asarray(ids, np.int64).reshape(-1)
  offs = _as_offsets(offsets, len(segmented.text))
  if len(offs) != len(ids):
    raise ValueError(f"tokenizer returned {len(ids)} ids but {len(offs)} offsets")
  return Tokenized(ids.astype(np.int32), token_span_ids(segmented, offs), offs.astype(np.int32))
