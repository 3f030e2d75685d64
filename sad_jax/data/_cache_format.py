r"""The teacher cache's on-disk format (version 3): header, manifests, records.

Layout of a cache directory (every name below is fixed by the format)::

  cache.json                      the header: format name and version, k, vocab size,
                                  index bits, value dtype, temperature, tokenizer
                                  fingerprint (written once, by the first writer)
  writers/<writer_id>/manifest.json   that writer's committed shards: file, records,
                                      tokens, bytes, and per record its key and length
  writers/<writer_id>/lock            held (``flock``) while the writer is open
  writers/<writer_id>/00000.array_record, 00001.array_record, ...   its shards

A shard is an `ArrayRecord <https://github.com/google/array_record>`_ file written
with ``group_size:1`` (each record its own chunk: reading one record reads only its
bytes), one record per cached sequence. A record is little-endian::

  offset  bytes              field
  0       4                  magic b"SADT"
  4       2                  record version (3)
  6       2                  value dtype code (0 float32, 1 bfloat16, 2 float16)
  8       8                  key (int64: the sequence's id in the dataset)
  16      4                  T, the sequence length
  20      2                  k
  22      1                  b, bits per stored token id
  23      5                  zero
  28      4                  crc32 of bytes [0, 28) and [32, end)
  32      4 T                token ids, int32 [T]
  ..      s T k              log-probabilities [T, k] in the value dtype (s = 4 or 2)
  ..      ceil(T k b / 8)    top-k token ids [T, k], b bits each (:func:`pack_indices`)

Each record is checked when it is read (magic, version, key, shape, crc32); opening a
cache reads only the small JSON files (no file is hashed). Bytes per token:
``4 + k (s + b / 8)`` plus 32 / T of header and ArrayRecord's per-chunk framing.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import struct
import zlib
from typing import Any, Callable, NamedTuple

import ml_dtypes
import numpy as np

FORMAT_NAME = "sad_jax.teacher_cache"
FORMAT_VERSION = 3
HEADER = "cache.json"
WRITERS = "writers"
MANIFEST = "manifest.json"
LOCK = "lock"
SHARD_SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = {"max_parallelism": "0"}  # Grain adds readahead_buffer_size:0

VALUE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                "float16": np.dtype(np.float16)}
_DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}
_MAGIC = b"SADT"
_RECORD_HEAD = struct.Struct("<4sHHqIHB5xI")  # 32 bytes, crc last
_CRC_AT = 28
_WRITER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class TeacherCacheError(ValueError):
  """A cache that is damaged, or does not match its header, tokenizer or the batches."""


class TeacherRecord(NamedTuple):
  """One cached sequence.

  Attributes:
    key: the sequence's id in the dataset (the key it was written under).
    tokens: ``int32 [T]`` token ids the teacher saw (``None`` in format-1/2 caches,
      which keep only a checksum of them). Arrays of a format-3 record may be
      read-only views of its bytes.
    indices: ``int32 [T, k]`` top-k token ids, most likely first.
    logprobs: ``float32 [T, k]`` their log-probabilities (the stored dtype, widened).
  """
  key: int
  tokens: np.ndarray | None
  indices: np.ndarray
  logprobs: np.ndarray


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
      word = (groups[:, j] << np.uint64(shift)).astype("<u8", copy=False)
      # shift + bits <= 38: the id's five low bytes, little-endian, ORed in at once
      out[:, first:first + 5] |= word.view(np.uint8).reshape(-1, 8)[:, :5]
    chunks.append(out[:, :bits].reshape(-1)[:-(-chunk.size * bits // 8)])
  return np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)


def _unpack_groups(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
  """The first ``count`` ids of a stream that starts at a group of eight, ``int32``.

  Id ``j`` of every group of eight starts at the same bit of its ``bits``-byte group,
  so each of the eight is one strided (unaligned) uint64 view, a shift and a mask.
  """
  groups = -(-count // 8)
  if not groups:
    return np.zeros(0, np.int32)
  buf = np.zeros(groups * bits + 8, np.uint8)  # 8 spare: the last group's 64-bit reads
  n = min(packed.size, groups * bits)
  buf[:n] = packed[:n]
  out = np.empty((groups, 8), np.int32)
  mask = np.uint64((1 << bits) - 1)
  for j in range(8):
    first, shift = divmod(j * bits, 8)
    words = np.ndarray((groups,), dtype="<u8", buffer=buf, offset=first, strides=(bits,))
    out[:, j] = (words >> np.uint64(shift)) & mask
  return out.reshape(-1)[:count]


def unpack_indices(packed: np.ndarray, bits: int, start: int, count: int) -> np.ndarray:
  """Ids ``start .. start + count - 1`` of a :func:`pack_indices` stream, ``int32 [count]``."""
  if not 1 <= bits <= 31:
    raise ValueError(f"bits must be in [1, 31], got {bits}")
  if start % 8 == 0:  # byte-aligned: whole groups of eight ids
    return _unpack_groups(packed[start // 8 * bits:], bits, count)
  first = start * bits >> 3  # only the bytes of the requested ids are copied
  window = packed[first:(((start + count) * bits + 7) >> 3)]
  offset = (start + np.arange(count, dtype=np.int64)) * bits - 8 * first
  byte, shift = offset >> 3, (offset & 7).astype(np.uint64)
  padded = np.concatenate([window, np.zeros(5, np.uint8)])
  word = np.zeros(count, np.uint64)
  for j in range(5):  # shift + bits <= 7 + 31 < 40: five bytes hold every id
    word |= padded[byte + j].astype(np.uint64) << np.uint64(8 * j)
  return ((word >> shift) & np.uint64((1 << bits) - 1)).astype(np.int32)


def make_header(*, k: int, vocab_size: int, tokenizer_fingerprint: str, value_dtype: str,
                temperature: float) -> dict[str, Any]:
  """The ``cache.json`` contents for these parameters (validated)."""
  if value_dtype not in VALUE_DTYPES:
    raise ValueError(f"value_dtype must be one of {sorted(VALUE_DTYPES)}, got {value_dtype!r}")
  for name, value in (("k", k), ("vocab_size", vocab_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  if k > vocab_size or k >= 1 << 16:
    raise ValueError(f"k={k} must be at most vocab_size={vocab_size} and below 65536")
  if not isinstance(tokenizer_fingerprint, str) or not tokenizer_fingerprint:
    raise ValueError(f"tokenizer_fingerprint must be a non-empty str, got "
                     f"{tokenizer_fingerprint!r}")
  if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
          and temperature > 0 and np.isfinite(temperature)):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
  return dict(format=FORMAT_NAME, format_version=FORMAT_VERSION, k=k, vocab_size=vocab_size,
              index_bits=index_bits(vocab_size), value_dtype=value_dtype,
              temperature=float(temperature), tokenizer_fingerprint=tokenizer_fingerprint)


def check_writer_id(writer_id: str) -> str:
  if not isinstance(writer_id, str) or not _WRITER_ID.fullmatch(writer_id):
    raise ValueError(f"writer_id must be 1-64 characters from [A-Za-z0-9_.-], got {writer_id!r}")
  return writer_id


def encode_record(header: dict, key: int, tokens: np.ndarray, indices: np.ndarray,
                  logprobs: np.ndarray) -> bytes:
  """One record's bytes (layout in the module docstring); inputs already validated."""
  t, k = indices.shape
  values = np.ascontiguousarray(logprobs, np.float32).astype(VALUE_DTYPES[header["value_dtype"]])
  body = b"".join((np.ascontiguousarray(tokens, "<i4").tobytes(), values.tobytes(),
                   pack_indices(indices, header["index_bits"]).tobytes()))
  head = _RECORD_HEAD.pack(_MAGIC, FORMAT_VERSION, _DTYPE_CODES[header["value_dtype"]], key, t,
                           k, header["index_bits"], 0)
  crc = zlib.crc32(body, zlib.crc32(head[:_CRC_AT]))
  return head[:_CRC_AT] + struct.pack("<I", crc) + body


def decode_record(header: dict, raw: bytes, *, key: int, length: int, where: str
                  ) -> TeacherRecord:
  """Parses and verifies one record (its crc32, and that it is ``key`` of ``length``).

  Raises:
    TeacherCacheError: naming ``where`` (shard file and record position) and what is
      wrong.
  """
  if len(raw) < _RECORD_HEAD.size:
    raise TeacherCacheError(f"{where}: record of {len(raw)} bytes is shorter than its header")
  magic, version, code, got_key, t, k, bits, crc = _RECORD_HEAD.unpack_from(raw)
  if magic != _MAGIC or version != FORMAT_VERSION:
    raise TeacherCacheError(f"{where}: not a teacher-cache record (magic {magic!r}, "
                            f"version {version})")
  actual = zlib.crc32(memoryview(raw)[_RECORD_HEAD.size:],
                      zlib.crc32(memoryview(raw)[:_CRC_AT]))
  if actual != crc:
    raise TeacherCacheError(f"{where}: crc32 {actual:08x} != stored {crc:08x}; the record "
                            "is damaged")
  dtype_name = header["value_dtype"]
  if (got_key, t, k, bits, code) != (key, length, header["k"], header["index_bits"],
                                     _DTYPE_CODES[dtype_name]):
    raise TeacherCacheError(
        f"{where}: record holds key {got_key}, T={t}, k={k}, {bits}-bit ids, dtype code "
        f"{code}; the manifest and header expect key {key}, T={length}, k={header['k']}, "
        f"{header['index_bits']}-bit ids, {dtype_name}")
  dtype = VALUE_DTYPES[dtype_name]
  at = _RECORD_HEAD.size
  tokens = np.frombuffer(raw, "<i4", t, at)  # read-only views of the record's bytes
  at += 4 * t
  logprobs = np.frombuffer(raw, dtype, t * k, at).reshape(t, k)
  if logprobs.dtype != np.float32:
    logprobs = logprobs.astype(np.float32)
  at += dtype.itemsize * t * k
  packed = np.frombuffer(raw, np.uint8, -(-t * k * bits // 8), at)
  if at + packed.size != len(raw):
    raise TeacherCacheError(f"{where}: record has {len(raw)} bytes, its header implies "
                            f"{at + packed.size}")
  indices = unpack_indices(packed, bits, 0, t * k).reshape(t, k)
  return TeacherRecord(key, tokens, indices, logprobs)


def record_bytes(header: dict, length: int) -> int:
  """Bytes of one record of ``length`` tokens (before ArrayRecord's framing)."""
  k = header["k"]
  return (_RECORD_HEAD.size + 4 * length
          + VALUE_DTYPES[header["value_dtype"]].itemsize * length * k
          + -(-length * k * header["index_bits"] // 8))


def write_atomic(path: pathlib.Path, write: Callable[[Any], None]) -> None:
  """Writes ``path`` through a process-unique temporary file and ``os.replace``."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
  text = json.dumps(value, indent=1).encode()
  write_atomic(path, lambda f: f.write(text))


def read_json(path: pathlib.Path, what: str) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise TeacherCacheError(f"{path}: no {what}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TeacherCacheError(f"corrupt {what} {path}: {e}") from None


def create_or_check_header(directory: pathlib.Path, header: dict) -> dict:
  """Writes ``cache.json`` unless it exists (atomically, first writer wins); then
  checks that the one on disk equals ``header``."""
  path = directory / HEADER
  if not path.exists():
    tmp = directory / f".{HEADER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(header, indent=1))
    try:
      os.link(tmp, path)  # fails if another writer created it first
    except FileExistsError:
      pass
    finally:
      tmp.unlink()
  on_disk = read_header(directory)
  for key, value in header.items():
    if on_disk.get(key) != value:
      raise TeacherCacheError(f"{directory}: the cache has {key}={on_disk.get(key)!r}, the "
                              f"writer was given {value!r}")
  return on_disk


def read_header(directory: pathlib.Path) -> dict:
  header = read_json(directory / HEADER, "cache header")
  if header.get("format") != FORMAT_NAME or header.get("format_version") != FORMAT_VERSION:
    raise TeacherCacheError(f"{directory / HEADER}: format {header.get('format')!r} version "
                            f"{header.get('format_version')!r}, this reader supports "
                            f"{FORMAT_NAME!r} version {FORMAT_VERSION}")
  return header
