"""Teacher-cache writers: one per process, each owning its own directory of shards."""
from __future__ import annotations

import fcntl
import os
import pathlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from array_record.python import array_record_module

from sad_jax.data import _cache_format as fmt
from sad_jax.losses import _sparse as sparse_lib


def committed_keys(directory: pathlib.Path) -> set[int]:
  """Keys committed by every writer of the cache in ``directory``."""
  keys: set[int] = set()
  for manifest in sorted((directory / fmt.WRITERS).glob(f"*/{fmt.MANIFEST}")):
    for shard in fmt.read_json(manifest, "writer manifest")["shards"]:
      keys.update(shard["keys"])
  return keys


class TeacherCacheWriter:
  """Appends per-sequence top-k teacher outputs under one writer id.

  Several writers (one per host or process, each with its own ``writer_id``) may
  write into one cache directory at the same time: each writes only under
  ``writers/<writer_id>/`` and holds that directory's lock (``fcntl.flock``,
  released when the process exits, however it exits), and the reader merges every
  writer's committed shards. A shard is streamed to a temporary file, renamed into
  place when it holds ``shard_tokens`` tokens, and only then listed in the writer's
  manifest (replaced atomically). A writer reopened under the same id after a crash
  deletes its own uncommitted files, never another writer's, and
  :attr:`done_keys` tells the caller what to skip.

  Example::

    with TeacherCacheWriter(path, k=64, vocab_size=V, tokenizer_fingerprint=fp,
                            writer_id=f"{jax.process_index():05d}") as w:
      for key, tokens in my_share_of_the_dataset:
        if key not in w.done_keys:
          top = top_k_teacher(teacher(tokens), 64)
          w.append(key, tokens, top.indices, top.logprobs)

  Args:
    directory: the cache directory (created if missing).
    k: tokens stored per position.
    vocab_size: the teacher's vocabulary size.
    tokenizer_fingerprint: :func:`tokenizer_fingerprint` of the tokenizer that
      produced the token ids.
    value_dtype: dtype the log-probabilities are stored in: ``"float32"`` (the
      default: exactly the values given), ``"bfloat16"`` or ``"float16"``.
    temperature: temperature the log-probabilities were computed at.
    writer_id: this writer's name (``[A-Za-z0-9_.-]``, unique among concurrent writers).
    shard_tokens: a shard is committed once it holds at least this many tokens.

  Raises:
    TeacherCacheError: the cache was written with other parameters, is in an older
      format, or ``writer_id`` is held by another open writer.
  """

  def __init__(self, directory, *, k: int, vocab_size: int, tokenizer_fingerprint: str,
               value_dtype: str = "float32", temperature: float = 1.0,
               writer_id: str = "0", shard_tokens: int = 1 << 20):
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
      raise ValueError(f"shard_tokens must be a positive int, got {shard_tokens!r}")
    header = fmt.make_header(k=k, vocab_size=vocab_size, value_dtype=value_dtype,
                             tokenizer_fingerprint=tokenizer_fingerprint,
                             temperature=temperature)
    self.writer_id = fmt.check_writer_id(writer_id)
    self.directory = pathlib.Path(directory)
    if (self.directory / "manifest.json").exists():
      raise fmt.TeacherCacheError(
          f"{self.directory} holds a format-1/2 (.npz) cache: it stays readable, but new "
          "sequences go into a new directory")
    self.directory.mkdir(parents=True, exist_ok=True)
    self.header = fmt.create_or_check_header(self.directory, header)
    self.shard_tokens = shard_tokens
    self._dir = self.directory / fmt.WRITERS / self.writer_id
    self._dir.mkdir(parents=True, exist_ok=True)
    self._lock = open(self._dir / fmt.LOCK, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._lock.close()
      raise fmt.TeacherCacheError(
          f"writer id {self.writer_id!r} of {self.directory} is held by another open "
          "writer; give each concurrent writer its own writer_id") from None
    manifest_path = self._dir / fmt.MANIFEST
    if manifest_path.exists():
      self.manifest = fmt.read_json(manifest_path, "writer manifest")
    else:
      self.manifest = dict(format_version=fmt.FORMAT_VERSION, writer_id=self.writer_id,
                           shards=[])
      fmt.write_json_atomic(manifest_path, self.manifest)
    committed = {s["file"] for s in self.manifest["shards"]}
    for path in self._dir.iterdir():  # this writer's leftovers of an interrupted run
      if path.name not in committed and path.name not in (fmt.LOCK, fmt.MANIFEST):
        path.unlink()
    self.done_keys: set[int] = committed_keys(self.directory)
    self._pending_keys: list[int] = []
    self._pending_lengths: list[int] = []
    self._file = None
    self._closed = False

  def append(self, key: int, tokens, indices, logprobs) -> None:
    """Writes one sequence's record; commits the shard when ``shard_tokens`` is reached.

    Args:
      key: the sequence's id in the dataset (an int >= 0, unique in the cache): the
        reader looks records up by it.
      tokens: ``[T]`` token ids of the sequence.
      indices: ``[T, k]`` integer top-k token ids.
      logprobs: ``[T, k]`` float log-probabilities.
    """
    if self._closed:
      raise fmt.TeacherCacheError(f"writer {self.writer_id!r} is closed")
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
      raise ValueError(f"key must be an int >= 0, got {key!r}")
    key = int(key)
    if key in self.done_keys:
      raise fmt.TeacherCacheError(f"key {key} is already in the cache {self.directory}")
    tokens, indices, logprobs = (np.asarray(x) for x in (tokens, indices, logprobs))
    k, vocab = self.header["k"], self.header["vocab_size"]
    if (tokens.ndim != 1 or tokens.shape[0] < 1 or indices.shape != (tokens.shape[0], k)
        or logprobs.shape != indices.shape):
      raise ValueError(f"key {key}: expected tokens [T >= 1], indices and logprobs [T, {k}], "
                       f"got {tokens.shape}, {indices.shape}, {logprobs.shape}")
    for name, x in (("tokens", tokens), ("indices", indices)):
      if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"key {key}: {name} must be integers, got {x.dtype}")
    if indices.min() < 0 or indices.max() >= vocab:
      raise ValueError(f"key {key}: indices must lie in [0, {vocab})")
    if tokens.min() < 0 or tokens.max() >= 1 << 31:
      raise ValueError(f"key {key}: token ids must lie in [0, 2**31)")
    if self._file is None:
      self._file = array_record_module.ArrayRecordWriter(
          os.fspath(self._tmp_path()), fmt.WRITER_OPTIONS)
    self._file.write(fmt.encode_record(self.header, key, tokens, indices, logprobs))
    self.done_keys.add(key)
    self._pending_keys.append(key)
    self._pending_lengths.append(int(tokens.shape[0]))
    if sum(self._pending_lengths) >= self.shard_tokens:
      self.flush()

  def _shard_name(self) -> str:
    return f"{len(self.manifest['shards']):05d}{fmt.SHARD_SUFFIX}"

  def _tmp_path(self) -> pathlib.Path:
    return self._dir / (self._shard_name() + ".tmp")

  def flush(self) -> None:
    """Commits the records written since the last commit as one shard (no-op if none)."""
    if self._file is None:
      return
    if not self._file.ok():
      raise fmt.TeacherCacheError(f"ArrayRecord writer of {self._tmp_path()} failed")
    self._file.close()
    self._file = None
    tmp, name = self._tmp_path(), self._shard_name()
    fd = os.open(tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, self._dir / name)
    self.manifest["shards"].append(dict(
        file=name, records=len(self._pending_keys), tokens=sum(self._pending_lengths),
        bytes=(self._dir / name).stat().st_size, keys=self._pending_keys,
        lengths=self._pending_lengths))
    fmt.write_json_atomic(self._dir / fmt.MANIFEST, self.manifest)
    self._pending_keys, self._pending_lengths = [], []

  def close(self) -> None:
    """Commits what is written and releases the writer id."""
    if self._closed:
      return
    try:
      self.flush()
    finally:
      self._closed = True
      self._lock.close()

  def __enter__(self) -> TeacherCacheWriter:
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:  # an interrupted run: keep only what was committed
      if self._file is not None:
        self._file.close()
        self._file = None
        self._tmp_path().unlink(missing_ok=True)
      self._closed = True
      self._lock.close()


def write_teacher_cache(directory, sequences: Iterable[Sequence[int]],
                        teacher_logits: Callable[[np.ndarray], Any], *, k: int,
                        vocab_size: int, tokenizer_fingerprint: str, shard_index: int = 0,
                        shard_count: int = 1, writer_id: str | None = None,
                        **kwargs) -> int:
  """Runs the teacher over this process's share of ``sequences`` and caches its top-k.

  The sequence at position ``i`` of ``sequences`` is cached under key ``i`` by the
  process with ``shard_index == i % shard_count``; every process of a distributed
  teacher pass calls this with the same ``sequences`` and its own ``shard_index``
  (e.g. ``jax.process_index()``), and the cache directory holds the merged result.
  Keys already in the cache (from any writer) are skipped, so a killed pass resumes,
  also with another ``shard_count``.

  Args:
    directory: cache directory.
    sequences: token-id sequences, in dataset order.
    teacher_logits: ``tokens [T] -> logits [T, V]`` (e.g. a jitted teacher apply).
    k, vocab_size, tokenizer_fingerprint: as :class:`TeacherCacheWriter`.
    shard_index, shard_count: this process's share of the positions.
    writer_id: default ``f"{shard_index:05d}-of-{shard_count:05d}"``.
    **kwargs: further :class:`TeacherCacheWriter` arguments (``value_dtype``,
      ``temperature``, ``shard_tokens``).

  Returns:
    The number of sequences computed in this call (0 when its share was complete).
  """
  for name, value in (("shard_count", shard_count), ("shard_index", shard_index)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  if not shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be below shard_count={shard_count}")
  if writer_id is None:
    writer_id = f"{shard_index:05d}-of-{shard_count:05d}"
  computed = 0
  with TeacherCacheWriter(directory, k=k, vocab_size=vocab_size, writer_id=writer_id,
                          tokenizer_fingerprint=tokenizer_fingerprint, **kwargs) as writer:
    temperature = writer.header["temperature"]
    for key, tokens in enumerate(sequences):
      if key % shard_count != shard_index or key in writer.done_keys:
        continue
      tokens = np.asarray(tokens)
      top = sparse_lib.top_k_teacher(teacher_logits(tokens), k, temperature=temperature)
      writer.append(key, tokens, np.asarray(top.indices), np.asarray(top.logprobs))
      computed += 1
  return computed
