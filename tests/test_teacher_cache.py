"""Offline teacher cache: round trip, resume, corruption and alignment errors."""
from __future__ import annotations

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from sad_jax.losses import _divergences as D
from sad_jax.data import teacher_cache as tc

V, K = 50, 4
FP = tc.tokenizer_fingerprint('{"model": "toy"}')


def _sequences(n=7, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, V, size=rng.integers(3, 9)) for _ in range(n)]


def _teacher(tokens):
  rng = np.random.default_rng(int(tokens.sum()))
  return (rng.normal(size=(tokens.shape[0], V)) * 3).astype(np.float32)


def test_round_trip_and_bytes_per_token(tmp_path):
  seqs = _sequences()
  n = tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                             tokenizer_fingerprint=FP, shard_tokens=10)
  assert n == len(seqs)
  cache = tc.TeacherCache(tmp_path, tokenizer_fingerprint=FP)
  assert len(cache) == len(seqs) and len(cache.manifest["shards"]) > 1
  for i, tokens in enumerate(seqs):
    idx, lp = cache.sequence(i, tokens=tokens)
    log_p = np.asarray(D.jax.nn.log_softmax(_teacher(tokens)))
    want = np.argsort(-log_p, -1)[:, :K]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(lp, np.take_along_axis(log_p, want, -1), rtol=1e-2, atol=1e-2)
  rows = np.stack([np.pad(seqs[i], (0, 10 - len(seqs[i]))) for i in (0, 2)])
  teacher = cache.batch([0, 2], length=6, tokens=rows)
  assert teacher.indices.shape == (2, 6, K) and teacher.vocab_size == V
  # 6-bit ids (V = 50) + 16-bit log-probs; tiny shards pay ~100 B/token of npz headers.
  assert K * (6 / 8 + 2) < cache.bytes_per_token() < K * (6 / 8 + 2) + 200
  with np.load(tmp_path / cache.manifest["shards"][0]["file"]) as shard:
    tokens = cache.manifest["shards"][0]["tokens"]
    assert shard["indices"].dtype == np.uint8
    assert shard["indices"].size == -(-tokens * K * tc.index_bits(V) // 8)


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


def test_bytes_per_token_at_qwen_vocab(tmp_path):
  v, k, n = 151936, 128, 1024
  rng = np.random.default_rng(0)
  indices = rng.integers(0, v, size=(n, k))
  indices[0] = np.arange(v - k, v)  # the top of the range survives the packing
  logprobs = -rng.exponential(3.0, size=(n, k)).astype(np.float32)
  with tc.TeacherCacheWriter(tmp_path, k=k, vocab_size=v, tokenizer_fingerprint=FP) as w:
    w.append(np.arange(n) % v, indices, logprobs)
  cache = tc.TeacherCache(tmp_path)
  idx, lp = cache.sequence(0, tokens=np.arange(n) % v)
  np.testing.assert_array_equal(idx, indices)
  np.testing.assert_allclose(lp, logprobs, rtol=1e-2)
  # 18-bit ids + bf16 log-probs: 544 B/token (int32 ids took 768), plus npz headers.
  assert 544 <= cache.bytes_per_token() < 546


def test_format_1_int32_caches_are_still_read(tmp_path):
  seqs = _sequences(3, 4)
  tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                         tokenizer_fingerprint=FP)
  new = [tc.TeacherCache(tmp_path).sequence(i) for i in range(len(seqs))]
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  for info in manifest["shards"]:  # rewrite each shard as format 1 wrote it
    path = tmp_path / info["file"]
    with np.load(path) as shard:
      arrays = dict(shard)
    arrays["indices"] = tc.unpack_indices(arrays["indices"], tc.index_bits(V), 0,
                                          info["tokens"] * K).reshape(-1, K)
    with open(path, "wb") as f:
      np.savez(f, **arrays)
    info["sha256"] = tc._sha256(path)  # pylint: disable=protected-access
  manifest["format_version"] = 1
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  old = tc.TeacherCache(tmp_path)
  for i, (idx, lp) in enumerate(new):
    np.testing.assert_array_equal(old.sequence(i)[0], idx)
    np.testing.assert_array_equal(old.sequence(i)[1], lp)
  with pytest.raises(tc.TeacherCacheError, match="cannot resume.*format_version=1"):
    tc.TeacherCacheWriter(tmp_path, k=K, vocab_size=V, tokenizer_fingerprint=FP)


def test_resume_after_interruption(tmp_path):
  seqs = _sequences(9, 1)
  calls = []

  def flaky(tokens):
    calls.append(1)
    if len(calls) == 6:
      raise KeyboardInterrupt
    return _teacher(tokens)

  with pytest.raises(KeyboardInterrupt):
    tc.write_teacher_cache(tmp_path, seqs, flaky, k=K, vocab_size=V,
                           tokenizer_fingerprint=FP, shard_tokens=8)
  (tmp_path / "shard-00099.npz.tmp").write_bytes(b"partial")  # a torn write
  committed = tc.TeacherCache(tmp_path).manifest
  done = sum(s["sequences"] for s in committed["shards"])
  assert 0 < done < 6
  n = tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                             tokenizer_fingerprint=FP, shard_tokens=8)
  assert n == len(seqs) - done
  assert not list(tmp_path.glob("*.tmp"))
  fresh = tmp_path / "fresh"
  tc.write_teacher_cache(fresh, seqs, _teacher, k=K, vocab_size=V, tokenizer_fingerprint=FP,
                         shard_tokens=8)
  a, b = tc.TeacherCache(tmp_path), tc.TeacherCache(fresh)
  for i in range(len(seqs)):
    for x, y in zip(a.sequence(i), b.sequence(i)):
      np.testing.assert_array_equal(x, y)


def test_corruption_and_mismatch_errors(tmp_path):
  seqs = _sequences(4, 2)
  tc.write_teacher_cache(tmp_path, seqs, _teacher, k=K, vocab_size=V,
                         tokenizer_fingerprint=FP, shard_tokens=10)
  with pytest.raises(tc.TeacherCacheError, match="tokenizer mismatch.*sha256:"):
    tc.TeacherCache(tmp_path, tokenizer_fingerprint=tc.tokenizer_fingerprint("other"))
  with pytest.raises(tc.TeacherCacheError, match="cannot resume.*k=4"):
    tc.TeacherCacheWriter(tmp_path, k=8, vocab_size=V, tokenizer_fingerprint=FP)
  cache = tc.TeacherCache(tmp_path)
  with pytest.raises(tc.TeacherCacheError, match="misaligned"):
    cache.sequence(0, tokens=seqs[1])
  shard = tmp_path / cache.manifest["shards"][0]["file"]
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(tc.TeacherCacheError, match="corrupt shard .*shard-00000"):
    tc.TeacherCache(tmp_path)
  lazy = tc.TeacherCache(tmp_path, verify=False)
  with pytest.raises(tc.TeacherCacheError, match="corrupt shard"):
    lazy.sequence(0)
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(tc.TeacherCacheError, match="corrupt manifest"):
    tc.TeacherCache(tmp_path)


def test_float16_and_fingerprints(tmp_path):
  tc.write_teacher_cache(tmp_path, _sequences(2), _teacher, k=K, vocab_size=V,
                         tokenizer_fingerprint=FP, logprob_dtype="float16")
  assert json.loads((tmp_path / "manifest.json").read_text())["logprob_dtype"] == "float16"
  assert tc.tokenizer_fingerprint("a") != tc.tokenizer_fingerprint("b")
  with pytest.raises(TypeError, match="cannot fingerprint"):
    tc.tokenizer_fingerprint(3)
  with pytest.raises(ValueError, match="logprob_dtype"):
    tc.TeacherCacheWriter(tmp_path / "x", k=K, vocab_size=V, tokenizer_fingerprint=FP,
                          logprob_dtype="int8")
