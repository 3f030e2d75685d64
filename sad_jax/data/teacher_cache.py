r"""Offline teacher cache: top-k teacher outputs on disk, in shards, with a manifest.

Layout of a cache directory::

  manifest.json         k, vocab size, dtypes, teacher temperature, tokenizer
                        fingerprint, and per committed shard: file, sequences,
                        tokens, sha256
  shard-00000.npz       indices  uint8  [ceil(tokens k b / 8)]: the top-k token ids,
                                 b = index_bits(vocab size) bits each, packed
                        logprobs uint16 [tokens, k]  (bf16 or fp16 bit patterns)
                        lengths  int32  [sequences]
                        token_crc uint32 [sequences]  (crc32 of each sequence's ids)

A shard is written to a temporary file, renamed into place, and only then added to
the manifest (itself replaced atomically), so an interrupted write leaves a valid
cache of the committed shards; :class:`TeacherCacheWriter` reopened on the same
directory resumes after them (``num_sequences`` tells the caller where). Reading
checks the tokenizer fingerprint, each shard's sha256 and the token checksums of
the batches it is aligned with; any mismatch raises :class:`TeacherCacheError`.

Storage is ``k (b / 8 + 2)`` bytes per token: a token id takes the
:math:`b = \lceil \log_2 V \rceil` bits it needs (18 at Qwen's V = 151936, 15 at
V = 32000) instead of an int32's 32, plus a 16-bit log-probability: 544 B per token at
``k = 128``, V = 151936 (an int32 layout, format 1, took 768 B; format-1 caches are
still read).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_dtypes
import numpy as np

from sad_jax.losses import _sparse as sparse_lib

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: int32 indices
MANIFEST = "manifest.json"
LOGPROB_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class TeacherCacheError(ValueError):
  """A cache that does not match its manifest, tokenizer or the requested batches."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
  """A sha256 fingerprint of a tokenizer's full definition.

  Args:
    tokenizer: a ``tokenizers.Tokenizer`` (or anything with ``to_str()``), a
      Hugging Face tokenizer (``backend_tokenizer``), or the serialized definition
      itself as ``str`` / ``bytes`` (e.g. the contents of ``tokenizer.json``).

  Returns:
    ``"sha256:<hex>"``.
  """
  if hasattr(tokenizer, "backend_tokenizer"):
    tokenizer = tokenizer.backend_tokenizer
  if hasattr(tokenizer, "to_str"):
    tokenizer = tokenizer.to_str()
  if isinstance(tokenizer, str):
    tokenizer = tokenizer.encode()
  if not isinstance(tokenizer, bytes):
    raise TypeError(f"cannot fingerprint a {type(tokenizer).__name__}; pass a tokenizers."
                    "Tokenizer or its serialized JSON")
  return "sha256:" + hashlib.sha256(tokenizer).hexdigest()


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _token_crc(tokens) -> int:
  return zlib.crc32(np.ascontiguousarray(tokens, np.int32).tobytes())


def index_bits(vocab_size: int) -> int:
  """Bits per stored token id: the fewest that hold ``vocab_size - 1`` (at least 1)."""
  return max(1, (vocab_size - 1).bit_length())


_PACK_CHUNK = 1 << 20  # ids per packing step (a multiple of 8: chunks stay byte-aligned)


def pack_indices(ids: np.ndarray, bits: int) -> np.ndarray:
  """``ids`` (any shape, values in ``[0, 2**bits)``) -> a little-endian bit stream.

  Returns ``uint8 [ceil(ids.size * bits / 8)]``; id ``i`` (row-major) occupies bits
  ``[i b, (i + 1) b)``. Eight ids fill exactly ``b`` bytes, so each group of eight
  is assembled with shifts and ORs. Inverse: :func:`unpack_indices`.
  """
  if not 1 <= bits <= 31:
    raise ValueError(f"bits must be in [1, 31], got {bits}")
  flat = np.asarray(ids).reshape(-1)
  chunks = []
  for i in range(0, flat.size, _PACK_CHUNK):  # uint64 copies of one chunk at a time
    chunk = flat[i:i + _PACK_CHUNK].astype(np.uint64)
    groups = np.zeros((-(-chunk.size // 8), 8), np.uint64)
    groups.reshape(-1)[:chunk.size] = chunk
    out = np.zeros((groups.shape[0], bits + 5), np.uint8)  # 5 spare: a shifted id's spill
    for j in range(8):
      first, shift = divmod(j * bits, 8)
      word = groups[:, j] << np.uint64(shift)
      for m in range(5):  # shift + bits <= 38: five bytes
        out[:, first + m] |= ((word >> np.uint64(8 * m)) & np.uint64(0xFF)).astype(np.uint8)
    chunks.append(out[:, :bits].reshape(-1)[:-(-chunk.size * bits // 8)])
  return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


def unpack_indices(packed: np.ndarray, bits: int, start: int, count: int) -> np.ndarray:
  """Ids ``start .. start + count - 1`` of a :func:`pack_indices` stream, ``int32 [count]``."""
  if not 1 <= bits <= 31:
    raise ValueError(f"bits must be in [1, 31], got {bits}")
  first = start * bits >> 3  # only the bytes of the requested ids are copied
  window = packed[first:(((start + count) * bits + 7) >> 3)]
  offset = (start + np.arange(count, dtype=np.int64)) * bits - 8 * first
  byte, shift = offset >> 3, (offset & 7).astype(np.uint64)
  padded = np.concatenate([window, np.zeros(5, np.uint8)])
  word = np.zeros(count, np.uint64)
  for j in range(5):  # shift + bits <= 7 + 31 < 40: five bytes hold every id
    word |= padded[byte + j].astype(np.uint64) << np.uint64(8 * j)
  return ((word >> shift) & np.uint64((1 << bits) - 1)).astype(np.int32)


def _write_atomic(path: pathlib.Path, write: Callable[[Any], None]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class TeacherCacheWriter:
  """Appends per-sequence top-k teacher outputs, committing them shard by shard.

  Example::

    with TeacherCacheWriter(path, k=128, vocab_size=V, tokenizer_fingerprint=fp) as w:
      for i, tokens in enumerate(dataset):
        if i < w.num_sequences:  # already cached by an interrupted run
          continue
        w.append(tokens, *top_k(teacher(tokens)))

  Args:
    directory: the cache directory (created if missing).
    k: tokens stored per position.
    vocab_size: the teacher's vocabulary size.
    tokenizer_fingerprint: :func:`tokenizer_fingerprint` of the tokenizer that
      produced the token ids.
    logprob_dtype: ``"bfloat16"`` or ``"float16"``.
    temperature: temperature the log-probabilities were computed at.
    shard_tokens: a shard is committed once it holds at least this many tokens.
  """

  def __init__(self, directory, *, k: int, vocab_size: int, tokenizer_fingerprint: str,
               logprob_dtype: str = "bfloat16", temperature: float = 1.0,
               shard_tokens: int = 1 << 20):
    if logprob_dtype not in LOGPROB_DTYPES:
      raise ValueError(f"logprob_dtype must be one of {sorted(LOGPROB_DTYPES)}, got "
                       f"{logprob_dtype!r}")
    for name, value in (("k", k), ("vocab_size", vocab_size), ("shard_tokens", shard_tokens)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if k > vocab_size:
      raise ValueError(f"k={k} exceeds vocab_size={vocab_size}")
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.shard_tokens = shard_tokens
    header = dict(format_version=FORMAT_VERSION, k=k, vocab_size=vocab_size,
                  tokenizer_fingerprint=tokenizer_fingerprint, logprob_dtype=logprob_dtype,
                  temperature=float(temperature))
    path = self.directory / MANIFEST
    if path.exists():
      manifest = _load_manifest(self.directory)
      for key, value in header.items():
        if manifest[key] != value:
          raise TeacherCacheError(
              f"cannot resume {self.directory}: manifest has {key}={manifest[key]!r}, "
              f"the writer was given {value!r}")
      _verify_shards(self.directory, manifest)
      self.manifest = manifest
    else:
      self.manifest = dict(header, shards=[])
      self._write_manifest()
    committed = {s["file"] for s in self.manifest["shards"]}
    for stale in self.directory.glob("shard-*"):  # leftovers of an interrupted write
      if stale.name not in committed:
        stale.unlink()
    self._pending: list[tuple[np.ndarray, np.ndarray, int, int]] = []
    self._pending_tokens = 0

  @property
  def num_sequences(self) -> int:
    """Sequences committed to disk (an interrupted run resumes after these)."""
    return sum(s["sequences"] for s in self.manifest["shards"])

  def append(self, tokens, indices, logprobs) -> None:
    """Buffers one sequence; commits a shard when ``shard_tokens`` is reached.

    Args:
      tokens: ``[T]`` token ids of the sequence (for alignment checks).
      indices: ``[T, k]`` integer top-k token ids.
      logprobs: ``[T, k]`` float log-probabilities.
    """
    tokens = np.asarray(tokens)
    indices, logprobs = np.asarray(indices), np.asarray(logprobs)
    k = self.manifest["k"]
    if tokens.ndim != 1 or indices.shape != (tokens.shape[0], k) or logprobs.shape != indices.shape:
      raise ValueError(f"expected tokens [T], indices and logprobs [T, {k}], got "
                       f"{tokens.shape}, {indices.shape}, {logprobs.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= self.manifest["vocab_size"]):
      raise ValueError(f"indices must lie in [0, {self.manifest['vocab_size']})")
    dtype = LOGPROB_DTYPES[self.manifest["logprob_dtype"]]
    self._pending.append((indices.astype(np.int32),
                          logprobs.astype(np.float32).astype(dtype).view(np.uint16),
                          tokens.shape[0], _token_crc(tokens)))
    self._pending_tokens += tokens.shape[0]
    if self._pending_tokens >= self.shard_tokens:
      self.flush()

  def flush(self) -> None:
    """Commits the buffered sequences as one shard (no-op when empty)."""
    if not self._pending:
      return
    name = f"shard-{len(self.manifest['shards']):05d}.npz"
    arrays = dict(
        indices=pack_indices(np.concatenate([p[0] for p in self._pending]),
                             index_bits(self.manifest["vocab_size"])),
        logprobs=np.concatenate([p[1] for p in self._pending]),
        lengths=np.array([p[2] for p in self._pending], np.int32),
        token_crc=np.array([p[3] for p in self._pending], np.uint32))
    _write_atomic(self.directory / name, lambda f: np.savez(f, **arrays))
    self.manifest["shards"].append(dict(
        file=name, sequences=len(self._pending), tokens=int(self._pending_tokens),
        sha256=_sha256(self.directory / name)))
    self._write_manifest()
    self._pending, self._pending_tokens = [], 0

  def close(self) -> None:
    """Commits what is buffered."""
    self.flush()

  def __enter__(self) -> TeacherCacheWriter:
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()

  def _write_manifest(self) -> None:
    text = json.dumps(self.manifest, indent=1).encode()
    _write_atomic(self.directory / MANIFEST, lambda f: f.write(text))


def write_teacher_cache(directory, sequences: Iterable[Sequence[int]],
                        teacher_logits: Callable[[np.ndarray], Any], *, k: int,
                        vocab_size: int, tokenizer_fingerprint: str, **kwargs) -> int:
  """Runs the teacher over ``sequences`` and caches its top-k, resuming if possible.

  Args:
    directory: cache directory.
    sequences: token-id sequences, in the order the training batches use them.
    teacher_logits: ``tokens [T] -> logits [T, V]`` (e.g. a jitted teacher apply).
    k, vocab_size, tokenizer_fingerprint, **kwargs: as :class:`TeacherCacheWriter`.

  Returns:
    The number of sequences computed in this call (0 when the cache was complete).
  """
  with TeacherCacheWriter(directory, k=k, vocab_size=vocab_size,
                          tokenizer_fingerprint=tokenizer_fingerprint, **kwargs) as writer:
    done, computed = writer.num_sequences, 0
    temperature = writer.manifest["temperature"]
    for i, tokens in enumerate(sequences):
      if i < done:
        continue
      top = sparse_lib.top_k_teacher(teacher_logits(np.asarray(tokens)), k,
                                     temperature=temperature)
      writer.append(tokens, np.asarray(top.indices), np.asarray(top.logprobs))
      computed += 1
  return computed


def _load_manifest(directory: pathlib.Path) -> dict:
  path = directory / MANIFEST
  try:
    manifest = json.loads(path.read_text())
  except FileNotFoundError:
    raise TeacherCacheError(f"{directory} is not a teacher cache: no {MANIFEST}") from None
  except json.JSONDecodeError as e:
    raise TeacherCacheError(f"corrupt manifest {path}: {e}") from None
  if manifest.get("format_version") not in READABLE_FORMATS:
    raise TeacherCacheError(f"{path}: format_version {manifest.get('format_version')!r}, "
                            f"this reader supports {READABLE_FORMATS}")
  return manifest


def _verify_shards(directory: pathlib.Path, manifest: dict) -> None:
  for shard in manifest["shards"]:
    path = directory / shard["file"]
    if not path.exists():
      raise TeacherCacheError(f"missing shard {path} listed in the manifest")
    digest = _sha256(path)
    if digest != shard["sha256"]:
      raise TeacherCacheError(f"corrupt shard {path}: sha256 {digest} != manifest "
                              f"{shard['sha256']}")


class TeacherCache:
  """Reads a cache written by :class:`TeacherCacheWriter`.

  Args:
    directory: the cache directory.
    tokenizer_fingerprint: if given, must equal the manifest's (else
      :class:`TeacherCacheError`): cached indices are meaningless under another
      tokenizer.
    verify: check every shard's sha256 on open (otherwise on first load).
    tail: tail policy recorded in the returned :class:`~sad_jax.losses._sparse.SparseTeacher`.
  """

  def __init__(self, directory, *, tokenizer_fingerprint: str | None = None,
               verify: bool = True, tail: str = "tail_bucket"):
    self.directory = pathlib.Path(directory)
    self.manifest = _load_manifest(self.directory)
    if (tokenizer_fingerprint is not None
        and tokenizer_fingerprint != self.manifest["tokenizer_fingerprint"]):
      raise TeacherCacheError(
          f"tokenizer mismatch: the cache in {self.directory} was written with "
          f"{self.manifest['tokenizer_fingerprint']}, the data uses {tokenizer_fingerprint}")
    if verify:
      _verify_shards(self.directory, self.manifest)
    self.tail = tail
    self._verified = verify
    self._starts = np.cumsum([0] + [s["sequences"] for s in self.manifest["shards"]])
    self._loaded: tuple[int, dict] | None = None

  @property
  def k(self) -> int:
    return self.manifest["k"]

  @property
  def vocab_size(self) -> int:
    return self.manifest["vocab_size"]

  def __len__(self) -> int:
    return int(self._starts[-1])

  def bytes_per_token(self) -> float:
    """Shard bytes on disk divided by the number of cached tokens."""
    size = sum((self.directory / s["file"]).stat().st_size for s in self.manifest["shards"])
    return size / max(1, sum(s["tokens"] for s in self.manifest["shards"]))

  def _shard(self, i: int) -> dict:
    if self._loaded is None or self._loaded[0] != i:
      info = self.manifest["shards"][i]
      path = self.directory / info["file"]
      if not self._verified and _sha256(path) != info["sha256"]:
        raise TeacherCacheError(f"corrupt shard {path}: sha256 does not match the manifest")
      try:
        with np.load(path) as data:
          arrays = {name: data[name] for name in data.files}
      except Exception as e:  # zip/npy parse errors of a damaged file.
        raise TeacherCacheError(f"corrupt shard {path}: {e}") from None
      arrays["offsets"] = np.concatenate([[0], np.cumsum(arrays["lengths"])])
      self._loaded = (i, arrays)
    return self._loaded[1]

  def sequence(self, index: int, tokens=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one sequence: ``(indices int32 [T, k], logprobs float32 [T, k])``.

    Args:
      index: the sequence's position in the dataset order.
      tokens: optional ``[T]`` ids of the sequence being trained on; checked against
        the cached length and checksum (misaligned batches raise).
    """
    if not 0 <= index < len(self):
      raise IndexError(f"sequence {index} not in the cache (it holds {len(self)})")
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    data = self._shard(shard)
    j = index - int(self._starts[shard])
    lo, hi = data["offsets"][j], data["offsets"][j + 1]
    if tokens is not None:
      tokens = np.asarray(tokens)
      if tokens.shape[0] != hi - lo or _token_crc(tokens) != data["token_crc"][j]:
        raise TeacherCacheError(
            f"sequence {index}: the tokens given ({tokens.shape[0]} ids) are not the ones "
            f"cached ({hi - lo} ids, different checksum); batches and cache are misaligned")
    dtype = LOGPROB_DTYPES[self.manifest["logprob_dtype"]]
    logprobs = data["logprobs"][lo:hi].view(dtype).astype(np.float32)
    if self.manifest["format_version"] == 1:
      return data["indices"][lo:hi], logprobs
    k = self.k
    ids = unpack_indices(data["indices"], index_bits(self.vocab_size), lo * k, (hi - lo) * k)
    return ids.reshape(hi - lo, k), logprobs

  def batch(self, sequence_ids: Sequence[int], length: int,
            tokens: np.ndarray | None = None) -> sparse_lib.SparseTeacher:
    """A padded ``[B, length, k]`` :class:`~sad_jax.losses._sparse.SparseTeacher` for a batch.

    Args:
      sequence_ids: dataset positions of the batch rows.
      length: padded sequence length ``T`` (longer sequences are truncated).
      tokens: optional ``[B, >= T]`` token ids of the batch; rows holding a whole
        cached sequence are checked against its length and checksum.

    Returns:
      Rows padded with index ``0..k-1`` and log-probability ``-inf`` (mask them with
      the batch's loss mask, as for any padding).
    """
    b, k = len(sequence_ids), self.k
    indices = np.broadcast_to(np.arange(k, dtype=np.int32), (b, length, k)).copy()
    logprobs = np.full((b, length, k), -np.inf, np.float32)
    for row, index in enumerate(sequence_ids):
      idx, lp = self.sequence(index)
      n = min(length, idx.shape[0])
      if tokens is not None and n == idx.shape[0]:  # whole sequence in the row
        self.sequence(index, tokens=np.asarray(tokens[row])[:n])
      indices[row, :n], logprobs[row, :n] = idx[:n], lp[:n]
    return sparse_lib.SparseTeacher(indices=indices, logprobs=logprobs,
                                    temperature=self.manifest["temperature"],
                                    tail=self.tail, vocab_size=self.vocab_size)

  def iter_batches(self, batches: Iterable[Sequence[int]], length: int
                   ) -> Iterator[sparse_lib.SparseTeacher]:
    """Streams :meth:`batch` over lists of sequence positions, in order."""
    for ids in batches:
      yield self.batch(ids, length)


__all__ = ["TeacherCache", "TeacherCacheWriter", "TeacherCacheError", "write_teacher_cache",
           "tokenizer_fingerprint", "LOGPROB_DTYPES", "index_bits", "pack_indices",
           "unpack_indices"]
