"""Offline teacher cache: round trips, integrity, concurrent writers, resume after a
kill, per-position alignment for batch / pack, Grain sharding, the format-1/2 caches."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import grain
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from array_record.python import array_record_module

from sad_jax.data import teacher_cache as tc
from sad_jax.data.trajectories import batching
from sad_jax.losses import _divergences as D

V, K = 50, 4
FP = tc.tokenizer_fingerprint('{"model": "toy"}')
DATA = pathlib.Path(__file__).resolve().parent / "data"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sequences(n=7, seed=0, low=3, high=9):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, V, size=rng.integers(low, high)) for _ in range(n)]


def _teacher(tokens):
  rng = np.random.default_rng(int(np.asarray(tokens).sum()))
  return (rng.normal(size=(len(tokens), V)) * 3).astype(np.float32)


def _top(tokens):
  log_p = np.asarray(D.jax.nn.log_softmax(_teacher(tokens)))
  idx = np.argsort(-log_p, -1, kind="stable")[:, :K]
  return idx.astype(np.int32), np.take_along_axis(log_p, idx, -1)


def _write(path, seqs, keys=None, **kwargs):
  kwargs = dict(dict(k=K, vocab_size=V, tokenizer_fingerprint=FP, shard_tokens=10), **kwargs)
  with tc.TeacherCacheWriter(path, **kwargs) as w:
    for key, tokens in zip(range(len(seqs)) if keys is None else keys, seqs):
      w.append(key, tokens, *_top(tokens))
  return w


def _examples(seqs):
  return [(s, np.full(len(s), 2)) for s in seqs]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("bfloat16", 1e-2), ("float16", 1e-3)])
def test_round_trip_in_the_stored_dtype(tmp_path, dtype, tol):
  seqs = _sequences()
  n = tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                             tokenizer_fingerprint=FP, shard_tokens=10, value_dtype=dtype)
  assert n == len(seqs)
  cache = tc.TeacherCache(tmp_path, tokenizer_fingerprint=FP)
  assert len(cache) == len(seqs) and cache.value_dtype == dtype and cache.format_version == 3
  assert len(list((tmp_path / "writers" / "00000-of-00001").glob("*.array_record"))) > 1
  for key, tokens in enumerate(seqs):
    rec = cache.record(key)
    idx, lp = _top(tokens)
    np.testing.assert_array_equal(rec.tokens, tokens)
    np.testing.assert_array_equal(rec.indices, idx)
    assert rec.logprobs.dtype == np.float32
    if tol:
      np.testing.assert_allclose(rec.logprobs, lp, rtol=tol, atol=tol)
    else:
      np.testing.assert_array_equal(rec.logprobs, lp)  # float32 is stored exactly
  header = json.loads((tmp_path / "cache.json").read_text())
  assert header["format_version"] == 3 and header["value_dtype"] == dtype
  assert header["index_bits"] == tc.index_bits(V) == 6
  assert cache.verify() == len(seqs)


def test_bytes_per_token_follow_the_format(tmp_path):
  v, k, t = 151936, 64, 2048
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, v, size=t)
  indices = rng.integers(0, v, size=(t, k))
  indices[0] = np.arange(v - k, v)  # the top of the id range survives the packing
  logprobs = -rng.exponential(3.0, size=(t, k)).astype(np.float32)
  for dtype, size in (("float32", 4), ("bfloat16", 2)):
    path = tmp_path / dtype
    with tc.TeacherCacheWriter(path, k=k, vocab_size=v, tokenizer_fingerprint=FP,
                               value_dtype=dtype) as w:
      for key in range(4):
        w.append(key, tokens, indices, logprobs)
    cache = tc.TeacherCache(path)
    np.testing.assert_array_equal(cache.record(3).indices, indices)
    payload = 4 + k * (size + 18 / 8)  # token id + k (value + 18-bit id)
    assert tc.record_bytes(cache.header, t) == 32 + t * payload
    # On top: ArrayRecord's chunk framing and a per-file footer / padding (< 128 KiB).
    file_bytes = cache.bytes_per_token() * cache.num_tokens
    assert 0 < file_bytes - 4 * tc.record_bytes(cache.header, t) < 128 << 10, dtype


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(bits=st.integers(1, 31), n=st.integers(0, 70), data=st.data())
def test_pack_unpack_indices_round_trip(bits, n, data):
  rng = np.random.default_rng(n * 31 + bits)
  ids = rng.integers(0, 1 << bits, size=n, dtype=np.int64)
  ids[: min(n, 2)] = (1 << bits) - 1  # the largest id, all bits set
  packed = tc.pack_indices(ids, bits)
  assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
  start = data.draw(st.integers(0, n))
  count = data.draw(st.integers(0, n - start))
  np.testing.assert_array_equal(tc.unpack_indices(packed, bits, start, count),
                                ids[start:start + count])


def test_index_bits():
  assert [tc.index_bits(v) for v in (1, 2, 3, 4, 5, 32000, 151936, 1 << 17)] == [
      1, 1, 2, 2, 3, 15, 18, 17]


def test_writer_argument_errors(tmp_path):
  with pytest.raises(ValueError, match="value_dtype must be one of"):
    tc.TeacherCacheWriter(tmp_path, k=K, vocab_size=V, tokenizer_fingerprint=FP,
                          value_dtype="int8")
  with pytest.raises(ValueError, match="writer_id must be"):
    tc.TeacherCacheWriter(tmp_path, k=K, vocab_size=V, tokenizer_fingerprint=FP,
                          writer_id="../x")
  with tc.TeacherCacheWriter(tmp_path, k=K, vocab_size=V, tokenizer_fingerprint=FP) as w:
    with pytest.raises(ValueError, match=r"key 0: expected tokens \[T >= 1\], indices and "
                                         r"logprobs \[T, 4\]"):
      w.append(0, [1, 2], np.zeros((3, K), int), np.zeros((3, K)))
    with pytest.raises(ValueError, match=r"key 1: indices must lie in \[0, 50\)"):
      w.append(1, [1], np.full((1, K), V), np.zeros((1, K)))
    w.append(2, [1], np.zeros((1, K), int), np.zeros((1, K)))
    with pytest.raises(tc.TeacherCacheError, match="key 2 is already in the cache"):
      w.append(2, [1], np.zeros((1, K), int), np.zeros((1, K)))
  with pytest.raises(tc.TeacherCacheError, match="the cache has k=4, the writer was given 8"):
    tc.TeacherCacheWriter(tmp_path, k=8, vocab_size=V, tokenizer_fingerprint=FP)
  with pytest.raises(tc.TeacherCacheError, match="tokenizer mismatch.*sha256:"):
    tc.TeacherCache(tmp_path, tokenizer_fingerprint=tc.tokenizer_fingerprint("other"))
  with pytest.raises(KeyError, match="sequence 5 is not in the cache"):
    tc.TeacherCache(tmp_path).record(5)


# ---------------------------------------------------------------- integrity


def _rewrite_shard(shard: pathlib.Path, damage) -> None:
  """Rewrites an ArrayRecord shard with ``damage(records)`` applied, fixing the manifest."""
  reader = array_record_module.ArrayRecordReader(str(shard))
  records = [bytearray(r) for r in reader.read_all()]
  reader.close()
  damage(records)
  writer = array_record_module.ArrayRecordWriter(str(shard), "group_size:1,uncompressed")
  for r in records:
    writer.write(bytes(r))
  writer.close()
  manifest_path = shard.parent / "manifest.json"
  manifest = json.loads(manifest_path.read_text())
  for info in manifest["shards"]:
    if info["file"] == shard.name:
      info["bytes"] = shard.stat().st_size
  manifest_path.write_text(json.dumps(manifest))


def test_a_flipped_bit_fails_that_record_only_and_opening_hashes_nothing(tmp_path):
  seqs = _sequences(6, 2)
  _write(tmp_path, seqs, shard_tokens=1000)  # one shard
  shard = tmp_path / "writers" / "0" / "00000.array_record"
  # A bit flipped on disk: ArrayRecord's chunk hash catches it when record 3 is read.
  intact = shard.read_bytes()
  raw = bytearray(intact)
  at = bytes(raw).index(tc.TeacherCache(tmp_path).record(3).logprobs.astype("<f4").tobytes())
  raw[at + 5] ^= 0x04
  shard.write_bytes(bytes(raw))
  cache = tc.TeacherCache(tmp_path)  # opening reads no record
  with pytest.raises(tc.TeacherCacheError, match=r"writers/0/00000.array_record record 3: "
                                                 r"unreadable, the file is damaged"):
    cache.record(3)
  for key in (0, 1, 2, 4, 5):
    np.testing.assert_array_equal(cache.record(key).tokens, seqs[key])
  with pytest.raises(tc.TeacherCacheError, match="record 3: unreadable"):
    cache.verify()
  # A bit flipped before ArrayRecord framed the record: the record's own crc32 catches it.
  shard.write_bytes(intact)
  _rewrite_shard(shard, lambda records: records[3].__setitem__(
      100, records[3][100] ^ 0x01))
  cache = tc.TeacherCache(tmp_path)
  with pytest.raises(tc.TeacherCacheError, match=r"writers/0/00000.array_record record 3: "
                                                 r"crc32 [0-9a-f]{8} != stored [0-9a-f]{8}; the "
                                                 "record is damaged"):
    cache.record(3)
  np.testing.assert_array_equal(cache.record(4).tokens, seqs[4])
  _rewrite_shard(shard, lambda records: records.__setitem__(2, records[2][:20]))
  with pytest.raises(tc.TeacherCacheError, match="record 2: record of 20 bytes is shorter"):
    tc.TeacherCache(tmp_path).record(2)


def test_truncated_missing_and_damaged_files_are_errors(tmp_path):
  _write(tmp_path, _sequences(6, 3))
  wdir = tmp_path / "writers" / "0"
  shard = wdir / "00001.array_record"
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])
  with pytest.raises(tc.TeacherCacheError, match=rf"shard {shard} has {len(data) // 2} bytes, "
                                                 r".* lists \d+: it was truncated or replaced"):
    tc.TeacherCache(tmp_path)
  shard.unlink()
  with pytest.raises(tc.TeacherCacheError, match=rf"missing shard {shard} listed in"):
    tc.TeacherCache(tmp_path)
  (wdir / "manifest.json").write_text('{"shards": [')
  with pytest.raises(tc.TeacherCacheError, match="corrupt writer manifest"):
    tc.TeacherCache(tmp_path)
  (tmp_path / "cache.json").write_text("{}")
  with pytest.raises(tc.TeacherCacheError, match="format None version None, this reader "
                                                 "supports 'sad_jax.teacher_cache' version 3"):
    tc.TeacherCache(tmp_path)
  with pytest.raises(tc.TeacherCacheError, match="is not a teacher cache: no cache.json"):
    tc.TeacherCache(tmp_path / "nothing")


# ---------------------------------------------------------------- legacy formats


@pytest.mark.parametrize("version", [1, 2])
def test_format_1_and_2_caches_are_still_read(tmp_path, version):
  expected = np.load(DATA / "teacher_cache_legacy_expected.npz")
  offsets = np.concatenate([[0], np.cumsum(expected["lengths"])])
  cache = tc.TeacherCache(DATA / f"teacher_cache_format{version}", tokenizer_fingerprint=FP)
  assert cache.format_version == version and len(cache) == 5 and cache.k == K
  seqs = [expected["tokens"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]
  for key, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
    rec = cache.record(key)
    assert rec.tokens is None  # formats 1/2 keep only a checksum of the ids
    np.testing.assert_array_equal(rec.indices, expected["indices"][a:b])
    np.testing.assert_allclose(rec.logprobs, expected["logprobs"][a:b], rtol=1e-2, atol=1e-2)
  whole = batching.batch(_examples(seqs), 8)
  teacher = cache.for_batch(whole, list(range(5)))
  np.testing.assert_array_equal(teacher.indices[2, :len(seqs[2])], cache.record(2).indices)
  cut = batching.batch(_examples(seqs), 4)
  with pytest.raises(tc.TeacherCacheError, match="row 0, segment 1 .* truncated rows cannot be "
                                                 "served; rewrite the cache in format 3"):
    cache.for_batch(cut, list(range(5)))
  swapped = batching.batch(_examples([seqs[1], seqs[0]]), 8)
  with pytest.raises(tc.TeacherCacheError, match=r"row 0, segment 1 \(sequence 0\): the row's"):
    cache.for_batch(swapped, [0, 1])
  copy = tmp_path / "old"
  copy.mkdir()
  for p in (DATA / f"teacher_cache_format{version}").iterdir():
    (copy / p.name).write_bytes(p.read_bytes())
  with pytest.raises(tc.TeacherCacheError, match="format-1/2 .* new sequences go into a new"):
    tc.TeacherCacheWriter(copy, k=K, vocab_size=V, tokenizer_fingerprint=FP)
  shard = copy / "shard-00000.npz"
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(tc.TeacherCacheError, match="corrupt shard .*shard-00000.npz: sha256"):
    tc.TeacherCache(copy).record(0)


# ---------------------------------------------------------------- writers


_WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sad_jax.data import teacher_cache as tc
    path, writer_id, first, count, pause = sys.argv[1:6]
    first, count, pause = int(first), int(count), int(pause)
    rng = np.random.default_rng(0)
    with tc.TeacherCacheWriter(path, k=4, vocab_size=50, tokenizer_fingerprint="sha256:toy",
                               writer_id=writer_id, shard_tokens=20) as w:
      for key in range(first, first + count):
        if key in w.done_keys:
          continue
        t = 3 + key % 5
        r = np.random.default_rng(key)
        w.append(key, r.integers(0, 50, t), r.integers(0, 50, (t, 4)),
                 -r.random((t, 4)).astype(np.float32))
        if key - first + 1 == pause:
          print("mid-shard", flush=True)
          time.sleep(600)
    print("done", flush=True)
""")


def _spawn(*args) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-c", _WORKER, *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expected_record(key):
  t = 3 + key % 5
  r = np.random.default_rng(key)
  return r.integers(0, 50, t), r.integers(0, 50, (t, 4)), -r.random((t, 4)).astype(np.float32)


def _check_all(path, keys):
  cache = tc.TeacherCache(path)
  np.testing.assert_array_equal(cache.keys, sorted(keys))
  for key in keys:
    rec, (tokens, idx, lp) = cache.record(key), _expected_record(key)
    np.testing.assert_array_equal(rec.tokens, tokens)
    np.testing.assert_array_equal(rec.indices, idx)
    np.testing.assert_array_equal(rec.logprobs, lp)


def test_concurrent_writers_kill_mid_shard_resume_and_merge(tmp_path):
  """Two writer processes at once; one is killed mid-shard and resumed; the other is
  mid-shard all the while: its files are never touched, its commits are merged."""
  other = _spawn(tmp_path, "other", 100, 6, 6)  # commits keys 100..104, then pauses
  victim = _spawn(tmp_path, "w", 0, 30, 17)
  for proc in (other, victim):
    assert proc.stdout.readline().strip() == "mid-shard", proc.stderr.read()[-2000:]
  victim.send_signal(signal.SIGKILL)
  victim.communicate(timeout=60)
  wdir = tmp_path / "writers" / "w"
  manifest = json.loads((wdir / "manifest.json").read_text())
  committed = [k for s in manifest["shards"] for k in s["keys"]]
  assert 0 < len(committed) < 17 and list(wdir.glob("*.tmp"))  # the torn shard
  other_files = sorted(p.name for p in (tmp_path / "writers" / "other").iterdir())
  assert any(name.endswith(".tmp") for name in other_files)  # other's open shard
  with pytest.raises(tc.TeacherCacheError, match="writer id 'other' .* is held by another "
                                                 "open writer"):
    tc.TeacherCacheWriter(tmp_path, k=4, vocab_size=50, tokenizer_fingerprint="sha256:toy",
                          writer_id="other")
  # Readers see the committed shards only.
  assert tc.TeacherCache(tmp_path).keys.tolist() == committed + list(range(100, 105))
  resumed = _spawn(tmp_path, "w", 0, 30, 0)
  out, err = resumed.communicate(timeout=120)
  assert resumed.returncode == 0 and out.strip() == "done", err[-2000:]
  assert not list(wdir.glob("*.tmp"))
  assert sorted(p.name for p in (tmp_path / "writers" / "other").iterdir()) == other_files
  other.send_signal(signal.SIGKILL)
  other.communicate(timeout=60)
  _check_all(tmp_path, list(range(30)) + list(range(100, 105)))
  # The same bytes as an uninterrupted write of the same records.
  fresh = tmp_path / "fresh"
  with tc.TeacherCacheWriter(fresh, k=4, vocab_size=50, tokenizer_fingerprint="sha256:toy",
                             writer_id="w", shard_tokens=20) as w:
    for key in range(30):
      w.append(key, *_expected_record(key))
  resumed_shards = sorted(wdir.glob("*.array_record"))
  fresh_shards = sorted((fresh / "writers" / "w").glob("*.array_record"))
  resumed_raw = [r for p in resumed_shards
                 for r in array_record_module.ArrayRecordReader(str(p)).read_all()]
  fresh_raw = [r for p in fresh_shards
               for r in array_record_module.ArrayRecordReader(str(p)).read_all()]
  assert resumed_raw == fresh_raw


def test_same_key_from_two_writers_is_an_error_naming_both_files(tmp_path):
  seqs = _sequences(3, 5)
  args = dict(k=K, vocab_size=V, tokenizer_fingerprint=FP)
  a = tc.TeacherCacheWriter(tmp_path, writer_id="a", **args)
  b = tc.TeacherCacheWriter(tmp_path, writer_id="b", **args)  # open at the same time
  for key in range(3):
    a.append(key, seqs[key], *_top(seqs[key]))
  a.close()
  b.append(1, seqs[1], *_top(seqs[1]))  # b could not know: a had not committed yet
  b.close()
  with pytest.raises(tc.TeacherCacheError, match=r"key 1 is cached twice: in .*writers/a/"
                                                 r"00000.array_record and .*writers/b/"):
    tc.TeacherCache(tmp_path)
  assert tc.TeacherCacheWriter(tmp_path, writer_id="c", **args).done_keys == {0, 1, 2}


def test_distributed_pass_with_shard_index_merges_and_resumes(tmp_path):
  seqs = _sequences(9, 6)
  counts = [tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                                   tokenizer_fingerprint=FP, shard_index=i, shard_count=3)
            for i in (0, 2)]  # process 1 of 3 never ran
  assert counts == [3, 3]
  assert tc.TeacherCache(tmp_path).keys.tolist() == [0, 2, 3, 5, 6, 8]
  # Resumed with another process count, only the missing keys are computed.
  assert tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                                tokenizer_fingerprint=FP, shard_index=0, shard_count=1) == 3
  cache = tc.TeacherCache(tmp_path)
  for key, tokens in enumerate(seqs):
    np.testing.assert_array_equal(cache.record(key).indices, _top(tokens)[0])


# ---------------------------------------------------------------- alignment


@pytest.fixture(name="aligned")
def _aligned(tmp_path):
  seqs = _sequences(8, 7, low=3, high=10)
  _write(tmp_path, seqs)
  return tc.TeacherCache(tmp_path), seqs


def _assert_served(teacher, cache, row, cols, key, offset=0):
  rec = cache.record(key)
  n = len(cols)
  np.testing.assert_array_equal(teacher.indices[row, cols], rec.indices[offset:offset + n])
  np.testing.assert_array_equal(teacher.logprobs[row, cols], rec.logprobs[offset:offset + n])


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_batch_rows_are_served_per_position_for_either_truncation(aligned, truncate):
  cache, seqs = aligned
  seq_len = 6
  b = batching.batch(_examples(seqs), seq_len, truncate=truncate)
  teacher = cache.for_batch(b, list(range(len(seqs))), truncate=truncate)
  assert teacher.indices.shape == (len(seqs), seq_len, K) and teacher.vocab_size == V
  for row, tokens in enumerate(seqs):
    n = min(len(tokens), seq_len)
    offset = len(tokens) - n if truncate == "left" else 0
    _assert_served(teacher, cache, row, np.arange(n), row, offset)
    assert np.all(np.isfinite(teacher.logprobs[row, n:]))  # padding: -log k
  other = "left" if truncate == "right" else "right"
  row = next(r for r, s in enumerate(seqs) if len(s) > seq_len)
  with pytest.raises(tc.TeacherCacheError, match=rf"row {row}, segment 1 \(sequence {row}\): "
                                                 r"column \d+ \(position \d+ of the sequence\) "
                                                 r"holds token .* cut on the other side: "
                                                 rf"pass truncate='{truncate}'"):
    cache.for_batch(b, list(range(len(seqs))), truncate=other)


def test_a_row_longer_than_its_cached_sequence_is_an_error(aligned, tmp_path):
  cache, seqs = aligned
  longer = [np.concatenate([seqs[0], [1, 2]])] + list(seqs[1:3])
  b = batching.batch(_examples(longer), 12)
  with pytest.raises(tc.TeacherCacheError, match=rf"row 0, segment 1 \(sequence 0\): the row "
                                                 rf"holds {len(seqs[0]) + 2} tokens of it, the "
                                                 rf"cache has {len(seqs[0])}"):
    cache.for_batch(b, [0, 1, 2])


def test_a_truncated_row_with_other_tokens_names_the_first_differing_position(aligned):
  cache, seqs = aligned
  row = next(r for r, s in enumerate(seqs) if len(s) > 5)
  changed = [s.copy() for s in seqs]
  changed[row][3] = (changed[row][3] + 1) % V
  b = batching.batch(_examples(changed), 5)  # every long row is cut on the right
  with pytest.raises(tc.TeacherCacheError, match=rf"row {row}, segment 1 \(sequence {row}\): "
                                                 r"column 3 \(position 3 of the sequence\) "
                                                 rf"holds token {changed[row][3]}, the cache has "
                                                 rf"{seqs[row][3]}"):
    cache.for_batch(b, list(range(len(seqs))))


def test_a_shorter_row_the_batch_did_not_cut_is_an_error(aligned):
  cache, seqs = aligned
  prefix = [seqs[0][:2]]
  b = batching.batch(_examples(prefix), 8)
  with pytest.raises(tc.TeacherCacheError, match=rf"row 0 \(sequences \[0\]\): the cached "
                                                 rf"sequences are {len(seqs[0]) - 2} tokens "
                                                 r"longer than the row holds, but the batch "
                                                 "says 0 were cut"):
    cache.for_batch(b, [0])


def test_pack_rows_are_served_per_segment(aligned):
  cache, seqs = aligned
  keys = list(range(len(seqs)))
  seq_len = 12
  b = batching.pack(_examples(seqs), seq_len, num_rows=len(seqs))
  layout = batching.pack_layout([len(s) for s in seqs], seq_len)
  assert max(len(row) for row in layout) > 1  # some row holds several sequences
  ids = [[keys[i] for i in row] for row in layout] + [[]] * (len(seqs) - len(layout))
  teacher = cache.for_batch(b, ids)
  for r, row in enumerate(layout):
    for s, i in enumerate(row, start=1):
      _assert_served(teacher, cache, r, np.flatnonzero(b.segment_ids[r] == s), keys[i])
  assert np.all(np.isfinite(teacher.logprobs))
  r = next(r for r, row in enumerate(layout) if len(row) > 1)
  wrong = list(ids)
  wrong[r] = wrong[r][::-1]
  with pytest.raises(tc.TeacherCacheError, match=rf"row {r}, segment 1 \(sequence "
                                                 rf"{wrong[r][0]}\)"):
    cache.for_batch(b, wrong)
  missing = list(ids)
  missing[r] = missing[r][:1]
  with pytest.raises(tc.TeacherCacheError, match=rf"row {r} has segments \[1, 2.*but 1 "
                                                 "sequence ids"):
    cache.for_batch(b, missing)
  moved = b._replace(positions=b.positions.copy())
  moved.positions[r, 0] = 1
  with pytest.raises(tc.TeacherCacheError, match=rf"row {r}, segment 1 .*: column 0 has "
                                                 "position 1, expected 0"):
    cache.for_batch(moved, ids)
  with pytest.raises(ValueError, match="truncate must be one of"):
    cache.for_batch(b, ids, truncate="middle")


# ---------------------------------------------------------------- Grain


def test_grain_shuffled_two_host_epochs_cover_every_record_once_and_checkpoint(aligned):
  cache, _ = aligned
  n = len(cache)
  per_host = []
  for host in range(2):
    ds = cache.to_dataset(seed=3, shard_options=grain.sharding.ShardOptions(host, 2))
    per_host.append([rec.key for rec in ds.repeat(2)])
  for epoch in range(2):
    seen = []
    for host, keys in enumerate(per_host):
      size = len(keys) // 2
      seen += keys[epoch * size:(epoch + 1) * size]
    assert sorted(seen) == list(range(n)), (epoch, per_host)
  assert per_host[0][:n // 2] != per_host[0][n // 2:]  # each epoch reshuffled
  assert sorted(per_host[0][:n // 2]) != list(range(n // 2))  # shuffled, not contiguous
  it = iter(cache.to_dataset(seed=3).repeat(2).to_iter_dataset())
  for _ in range(5):
    next(it)
  state = it.get_state()
  json.dumps(state)  # a checkpoint's data_state
  rest = [rec.key for rec in it]
  again = iter(cache.to_dataset(seed=3).repeat(2).to_iter_dataset())
  again.set_state(state)
  assert [rec.key for rec in again] == rest
