"""Teacher-cache reader: random access by key, Grain data source, per-row alignment."""
from __future__ import annotations

import hashlib
import os
import pathlib
import zlib
from typing import Any, Sequence

import numpy as np

from sad_jax.data import _cache_format as fmt
from sad_jax.losses import _sparse as sparse_lib

TeacherCacheError = fmt.TeacherCacheError
LEGACY_FORMATS = (1, 2)  # .npz shards: 1 int32 ids, 2 bit-packed ids; 16-bit values
_LEGACY_DTYPES = {"bfloat16": fmt.VALUE_DTYPES["bfloat16"],
                  "float16": fmt.VALUE_DTYPES["float16"]}
_TRUNCATE = ("right", "left")


def _token_crc(tokens) -> int:
  return zlib.crc32(np.ascontiguousarray(tokens, np.int32).tobytes())


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class _Shards:
  """Format 3: every writer's committed ArrayRecord shards, indexed by key."""

  def __init__(self, directory: pathlib.Path):
    self.header = fmt.read_header(directory)
    paths, keys, lengths, records, tokens, size = [], [], [], [], 0, 0
    for manifest_path in sorted((directory / fmt.WRITERS).glob(f"*/{fmt.MANIFEST}")):
      manifest = fmt.read_json(manifest_path, "writer manifest")
      for shard in manifest["shards"]:
        path = manifest_path.parent / shard["file"]
        try:
          actual = path.stat().st_size
        except FileNotFoundError:
          raise TeacherCacheError(f"missing shard {path} listed in {manifest_path}") from None
        if actual != shard["bytes"]:
          raise TeacherCacheError(f"shard {path} has {actual} bytes, {manifest_path} lists "
                                  f"{shard['bytes']}: it was truncated or replaced")
        if not len(shard["keys"]) == len(shard["lengths"]) == shard["records"]:
          raise TeacherCacheError(f"{manifest_path}: shard {shard['file']} lists "
                                  f"{shard['records']} records but {len(shard['keys'])} keys")
        paths.append(path)
        keys.append(np.asarray(shard["keys"], np.int64))
        lengths.append(np.asarray(shard["lengths"], np.int64))
        records.append(shard["records"])
        tokens += shard["tokens"]
        size += actual
    self.paths = paths
    self.tokens, self.bytes = tokens, size
    starts = np.cumsum([0] + records)
    file_of = np.repeat(np.arange(len(paths)), records)
    keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    self.keys = keys[order]
    self.lengths = (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))[order]
    self.global_ids = order  # the record's number across all shards, as Grain counts
    self.file_of, self.starts = file_of[order], starts
    same = np.flatnonzero(self.keys[1:] == self.keys[:-1])
    if same.size:
      a, b = self.file_of[same[0]], self.file_of[same[0] + 1]
      raise TeacherCacheError(f"key {self.keys[same[0]]} is cached twice: in {paths[a]} and "
                              f"{paths[b]} (two writers were given the same sequence)")
    # Grain's ArrayRecord source; ``path[0:n]`` spares it opening every file here.
    import grain  # pylint: disable=import-outside-toplevel  # grain loads orbax: not at import
    self.source = (grain.sources.ArrayRecordDataSource(
        [f"{p}[0:{n}]" for p, n in zip(paths, records)], reader_options=fmt.READER_OPTIONS)
        if paths else None)

  def read(self, rows: Sequence[int]) -> list[tuple[fmt.TeacherRecord, None]]:
    rows = [int(r) for r in rows]
    where = [f"{self.paths[self.file_of[r]]} record "
             f"{self.global_ids[r] - self.starts[self.file_of[r]]}" for r in rows]
    ids = [int(self.global_ids[r]) for r in rows]
    try:
      raws = self.source.__getitems__(ids)
    except Exception:  # riegeli / ArrayRecord errors of a damaged file: find the record
      for i, w in zip(ids, where):
        try:
          self.source[i]
        except Exception as e:  # pylint: disable=broad-except
          raise TeacherCacheError(f"{w}: unreadable, the file is damaged "
                                  f"({type(e).__name__}: {e})") from None
      raise
    return [(fmt.decode_record(self.header, raw, key=int(self.keys[r]),
                               length=int(self.lengths[r]), where=w), None)
            for r, raw, w in zip(rows, raws, where)]


class _LegacyShards:
  """Formats 1 and 2 (``manifest.json`` + ``.npz`` shards): one shard in memory.

  Keys are positions in the write order. Each shard's sha256 is checked once, when
  it is first loaded; shuffled access reloads whole shards, which format 3 avoids.
  """

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.manifest = fmt.read_json(directory / "manifest.json", "manifest")
    version = self.manifest.get("format_version")
    if version not in LEGACY_FORMATS:
      raise TeacherCacheError(f"{directory / 'manifest.json'}: format_version {version!r}, "
                              f"this reader supports {LEGACY_FORMATS} and {fmt.FORMAT_VERSION}")
    m = self.manifest
    self.header = dict(format="sad_jax.teacher_cache", format_version=version, k=m["k"],
                       vocab_size=m["vocab_size"], index_bits=fmt.index_bits(m["vocab_size"]),
                       value_dtype=m["logprob_dtype"], temperature=m["temperature"],
                       tokenizer_fingerprint=m["tokenizer_fingerprint"])
    counts = [s["sequences"] for s in m["shards"]]
    self.starts = np.cumsum([0] + counts)
    self.keys = np.arange(self.starts[-1], dtype=np.int64)
    self.tokens = sum(s["tokens"] for s in m["shards"])
    self.bytes = sum((directory / s["file"]).stat().st_size for s in m["shards"]
                     if (directory / s["file"]).exists())
    self.verified: set[int] = set()
    self.loaded: tuple[int, dict] | None = None
    self.loads = 0  # whole-shard loads so far

  def _shard(self, i: int) -> dict:
    if self.loaded is None or self.loaded[0] != i:
      info = self.manifest["shards"][i]
      path = self.directory / info["file"]
      if not path.exists():
        raise TeacherCacheError(f"missing shard {path} listed in the manifest")
      if i not in self.verified:
        digest = _sha256(path)
        if digest != info["sha256"]:
          raise TeacherCacheError(f"corrupt shard {path}: sha256 {digest} != manifest "
                                  f"{info['sha256']}")
        self.verified.add(i)
      try:
        with np.load(path) as data:
          arrays = {name: data[name] for name in data.files}
      except Exception as e:  # zip/npy parse errors of a damaged file
        raise TeacherCacheError(f"corrupt shard {path}: {e}") from None
      arrays["offsets"] = np.concatenate([[0], np.cumsum(arrays["lengths"])])
      self.loaded = (i, arrays)
      self.loads += 1
    return self.loaded[1]

  def read(self, rows: Sequence[int]) -> list[tuple[fmt.TeacherRecord, int]]:
    out = []
    k, bits = self.header["k"], self.header["index_bits"]
    dtype = _LEGACY_DTYPES[self.header["value_dtype"]]
    for row in rows:
      shard = int(np.searchsorted(self.starts, row, side="right") - 1)
      data = self._shard(shard)
      j = int(row) - int(self.starts[shard])
      lo, hi = int(data["offsets"][j]), int(data["offsets"][j + 1])
      logprobs = data["logprobs"][lo:hi].view(dtype).astype(np.float32)
      if self.header["format_version"] == 1:
        ids = data["indices"][lo:hi].astype(np.int32)
      else:
        ids = fmt.unpack_indices(data["indices"], bits, lo * k, (hi - lo) * k).reshape(hi - lo, k)
      out.append((fmt.TeacherRecord(int(row), None, ids, logprobs), int(data["token_crc"][j])))
    return out


class TeacherCache:
  """Reads a teacher cache: random access by key, a Grain data source, alignment checks.

  Opening reads the JSON header and manifests only (no file is hashed); each record's
  crc32 is checked when it is read. Format-1/2 (``.npz``) caches are read too.
  ``TeacherCache`` is a Grain random-access data source: ``cache[i]`` is the ``i``-th
  record in key order and ``len(cache)`` the number of records, so
  ``grain.MapDataset.source(cache)`` (or :meth:`to_dataset`) shuffles, shards and
  checkpoints over it.

  Args:
    directory: the cache directory.
    tokenizer_fingerprint: if given, must equal the cache's (else
      :class:`TeacherCacheError`): cached ids are meaningless under another tokenizer.
    tail: tail policy recorded in the returned :class:`~sad_jax.losses.SparseTeacher`.

  Raises:
    TeacherCacheError: no cache, a damaged header or manifest, a shard whose size is
      not the one committed, or one key cached twice.
  """

  def __init__(self, directory, *, tokenizer_fingerprint: str | None = None,
               tail: str = "tail_bucket"):
    self.directory = pathlib.Path(directory)
    if (self.directory / "manifest.json").exists():
      self._shards: _Shards | _LegacyShards = _LegacyShards(self.directory)
    elif (self.directory / fmt.HEADER).exists():
      self._shards = _Shards(self.directory)
    else:
      raise TeacherCacheError(f"{self.directory} is not a teacher cache: no {fmt.HEADER}")
    self.header = self._shards.header
    if (tokenizer_fingerprint is not None
        and tokenizer_fingerprint != self.header["tokenizer_fingerprint"]):
      raise TeacherCacheError(
          f"tokenizer mismatch: the cache in {self.directory} was written with "
          f"{self.header['tokenizer_fingerprint']}, the data uses {tokenizer_fingerprint}")
    if tail not in sparse_lib.TAIL_POLICIES:
      raise ValueError(f"tail must be one of {sorted(sparse_lib.TAIL_POLICIES)}, got {tail!r}")
    self.tail = tail

  @property
  def k(self) -> int:
    return self.header["k"]

  @property
  def vocab_size(self) -> int:
    return self.header["vocab_size"]

  @property
  def temperature(self) -> float:
    return self.header["temperature"]

  @property
  def value_dtype(self) -> str:
    return self.header["value_dtype"]

  @property
  def format_version(self) -> int:
    return self.header["format_version"]

  @property
  def keys(self) -> np.ndarray:
    """``int64 [N]``: the cached keys, ascending (``cache[i]`` holds ``keys[i]``)."""
    return self._shards.keys

  def __len__(self) -> int:
    return int(self._shards.keys.size)

  @property
  def num_tokens(self) -> int:
    return int(self._shards.tokens)

  def bytes_per_token(self) -> float:
    """Shard bytes on disk divided by the number of cached tokens."""
    return self._shards.bytes / max(1, self._shards.tokens)

  def _row(self, key) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
      raise TypeError(f"a sequence key must be an int, got {type(key).__name__}")
    row = int(np.searchsorted(self._shards.keys, key))
    if row == len(self) or self._shards.keys[row] != key:
      raise KeyError(f"sequence {key} is not in the cache {self.directory} ({len(self)} "
                     "sequences)")
    return row

  def _read(self, rows: Sequence[int]) -> list[tuple[fmt.TeacherRecord, int | None]]:
    return self._shards.read(rows) if len(rows) else []

  def __getitem__(self, index) -> fmt.TeacherRecord:
    """The ``index``-th record in key order (Grain's ``RandomAccessDataSource``)."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} not in the cache (it holds {len(self)})")
    return self._read([index])[0][0]

  def __getitems__(self, indices: Sequence[int]) -> list[fmt.TeacherRecord]:
    """Records at ``indices`` (read together: one ArrayRecord call per shard file)."""
    for i in indices:
      if not 0 <= int(i) < len(self):
        raise IndexError(f"record {i} not in the cache (it holds {len(self)})")
    return [rec for rec, _ in self._read(indices)]

  def record(self, key: int) -> fmt.TeacherRecord:
    """The record cached under ``key`` (``KeyError`` if there is none)."""
    return self._read([self._row(key)])[0][0]

  def to_dataset(self, *, seed: int | None = None,
                 shard_options: "grain.sharding.ShardOptions | None" = None
                 ) -> "grain.MapDataset":
    """This cache as a ``grain.MapDataset`` of :class:`TeacherRecord`, in key order.

    Args:
      seed: shuffle globally with this seed (the same on every host) before sharding.
      shard_options: keep this host's records: every ``shard_count``-th record from
        ``shard_index`` (e.g. ``grain.sharding.ShardByJaxProcess()``); with
        ``drop_remainder`` every host gets the same number. Within an epoch the
        hosts' records are disjoint and cover the cache; ``.repeat()`` reshuffles
        each epoch, identically on every host.

    Returns:
      The dataset (chain ``.repeat()``, ``.batch()``, ``.to_iter_dataset()``;
      its iterators' ``get_state()`` is JSON, for a checkpoint's ``data_state``).
    """
    import grain  # pylint: disable=import-outside-toplevel
    ds = grain.MapDataset.source(self)
    if seed is not None:
      ds = ds.shuffle(seed=seed)
    if shard_options is not None:
      count = shard_options.shard_count
      if shard_options.drop_remainder:
        ds = ds[:len(ds) - len(ds) % count]
      ds = ds[shard_options.shard_index::count]
    return ds

  def verify(self) -> int:
    """Reads and checks every record (an explicit full scan); returns the count."""
    for lo in range(0, len(self), 256):
      self._read(range(lo, min(len(self), lo + 256)))
    return len(self)

  def for_batch(self, batch, sequence_ids: Sequence[Any], *, truncate: str = "right"
                ) -> sparse_lib.SparseTeacher:
    """The teacher of a :func:`~sad_jax.data.trajectories.batch` or ``pack`` batch.

    Every position of every row is checked against the cache: the row's token id must
    be the cached sequence's at that position, the batch's ``positions`` must count
    0, 1, ... within each segment, no row may hold more tokens of a sequence than
    cached, and the tokens a row lacks must be the ones ``Batch.truncated`` says were
    cut. A mismatch raises :class:`TeacherCacheError` naming the row, the segment,
    the sequence key and the first differing column.

    Args:
      batch: a :class:`~sad_jax.data.trajectories.Batch` (``tokens``,
        ``segment_ids``, ``positions``, ``truncated``; ``[B, T]``).
      sequence_ids: ``B`` entries, one per row: the key of the row's sequence (rows
        of ``batch()``), or a sequence of keys, one per segment ``1, 2, ...`` in
        order (rows of ``pack()``); ``None`` or ``[]`` for an all-padding row.
      truncate: the side the batch cut long sequences on, as given to ``batch`` /
        ``pack``: ``"right"`` (a row holds positions ``0 .. n-1`` of its sequence)
        or ``"left"`` (the last ``n``).

    Returns:
      A ``[B, T, k]`` :class:`~sad_jax.losses.SparseTeacher`. Padding positions
      (``segment_ids == 0``) get ids ``0 .. k-1`` at log-probability ``-log k``:
      finite under every tail policy; mask them with the batch's span ids.
    """
    if truncate not in _TRUNCATE:
      raise ValueError(f"truncate must be one of {_TRUNCATE}, got {truncate!r}")
    tokens, segments, positions, truncated = (np.asarray(getattr(batch, name)) for name in (
        "tokens", "segment_ids", "positions", "truncated"))
    if tokens.ndim != 2 or segments.shape != tokens.shape or positions.shape != tokens.shape:
      raise ValueError(f"batch tokens, segment_ids and positions must all be [B, T], got "
                       f"{tokens.shape}, {segments.shape}, {positions.shape}")
    b, t = tokens.shape
    if len(sequence_ids) != b:
      raise ValueError(f"sequence_ids has {len(sequence_ids)} entries for a batch of {b} rows")
    plan = []
    for r, ids in enumerate(sequence_ids):
      if ids is None:
        ids = []
      elif isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = [int(ids)]
      else:
        ids = [int(i) for i in ids]
      present = np.unique(segments[r][segments[r] > 0]).tolist()
      if present != list(range(1, len(ids) + 1)):
        raise TeacherCacheError(f"row {r} has segments {present} but {len(ids)} sequence "
                                f"ids {ids}")
      plan += [(r, s, key, np.flatnonzero(segments[r] == s)) for s, key in enumerate(ids, 1)]
    found = self._read([self._row(key) for _, _, key, _ in plan])
    k = self.k
    indices = np.broadcast_to(np.arange(k, dtype=np.int32), (b, t, k)).copy()
    logprobs = np.full((b, t, k), -np.log(k), np.float32)
    longer = np.zeros(b, np.int64)
    for (r, s, key, cols), (rec, crc) in zip(plan, found):
      where = f"row {r}, segment {s} (sequence {key})"
      n, length = cols.size, rec.indices.shape[0]
      wrong = np.flatnonzero(positions[r, cols] != np.arange(n))
      if wrong.size:
        j = wrong[0]
        raise TeacherCacheError(f"{where}: column {cols[j]} has position "
                                f"{positions[r, cols[j]]}, expected {j} (positions count "
                                "from 0 in each segment)")
      if n > length:
        raise TeacherCacheError(f"{where}: the row holds {n} tokens of it, the cache has "
                                f"{length}; batches and cache are misaligned")
      offset = length - n if truncate == "left" else 0
      got = tokens[r, cols]
      if rec.tokens is None:  # formats 1/2 keep only a checksum of the whole sequence
        if n != length or _token_crc(got) != crc:
          raise TeacherCacheError(
              f"{where}: the row's {n} token ids are not the cached sequence's ({length} "
              "ids, checked by checksum: format-1/2 caches store no ids, so truncated "
              "rows cannot be served; rewrite the cache in format 3)")
      else:
        want = rec.tokens[offset:offset + n]
        bad = np.flatnonzero(got != want)
        if bad.size:
          j = bad[0]
          other = 0 if truncate == "left" else length - n
          hint = (f" (the row matches the sequence cut on the other side: pass "
                  f"truncate={_TRUNCATE[truncate == 'right']!r})"
                  if length > n and np.array_equal(got, rec.tokens[other:other + n]) else "")
          raise TeacherCacheError(
              f"{where}: column {cols[j]} (position {offset + j} of the sequence) holds "
              f"token {got[j]}, the cache has {want[j]}{hint}")
      longer[r] += length - n
      indices[r, cols] = rec.indices[offset:offset + n]
      logprobs[r, cols] = rec.logprobs[offset:offset + n]
    short = np.flatnonzero(longer != truncated)
    if short.size:
      r = short[0]
      keys = [key for row, _, key, _ in plan if row == r]
      raise TeacherCacheError(
          f"row {r} (sequences {keys}): the cached sequences are {longer[r]} tokens longer "
          f"than the row holds, but the batch says {truncated[r]} were cut; batches and "
          "cache are misaligned")
    return sparse_lib.SparseTeacher(indices=indices, logprobs=logprobs,
                                    temperature=self.temperature, tail=self.tail,
                                    vocab_size=self.vocab_size)

  @property
  def whole_shard_loads(self) -> int:
    """Whole shards loaded so far (format 1/2 only; format 3 reads single records)."""
    return getattr(self._shards, "loads", 0)

  def __repr__(self) -> str:
    return (f"TeacherCache({os.fspath(self.directory)!r}, format {self.format_version}, "
            f"{len(self)} sequences, {self.num_tokens} tokens, k={self.k})")
