r"""Offline teacher cache: top-k teacher outputs written once, read per batch on any host.

A cache is a directory of `ArrayRecord <https://github.com/google/array_record>`_
shards, one record per sequence, keyed by the sequence's id in the dataset, read
through `Grain <https://google-grain.readthedocs.io>`_ (random access, per-host
sharding, shuffling, checkpointable iterators). The format (version 3) is described
in :mod:`sad_jax.data._cache_format` and ``docs/teacher_cache.md``; format-1/2
(``.npz``) caches are still read.

* :class:`TeacherCacheWriter` / :func:`write_teacher_cache` -- one writer per host
  or process into one directory; resumable; each record carries a crc32.
* :class:`TeacherCache` -- ``record(key)``, ``cache[i]`` (a Grain data source),
  :meth:`~TeacherCache.to_dataset` (shuffled, sharded ``grain.MapDataset``) and
  :meth:`~TeacherCache.for_batch` (the ``[B, T, k]`` teacher of a ``batch`` / ``pack``
  batch, checked position by position).

Values are stored in the dtype asked for (float32 by default); bytes per token are
``4 + k (s + b / 8)`` plus framing, with ``s`` the value size and ``b`` =
:func:`index_bits` of the vocabulary (18 at V = 151936).
"""
from __future__ import annotations

import hashlib
from typing import Any

from sad_jax.data._cache_format import (FORMAT_VERSION, VALUE_DTYPES, TeacherCacheError,
                                        TeacherRecord, index_bits, pack_indices,
                                        record_bytes, unpack_indices)
from sad_jax.data._cache_read import LEGACY_FORMATS, TeacherCache
from sad_jax.data._cache_write import TeacherCacheWriter, write_teacher_cache


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


__all__ = ["TeacherCache", "TeacherCacheWriter", "TeacherCacheError", "TeacherRecord",
           "write_teacher_cache", "tokenizer_fingerprint", "VALUE_DTYPES", "FORMAT_VERSION",
           "LEGACY_FORMATS", "index_bits", "pack_indices", "unpack_indices", "record_bytes"]
