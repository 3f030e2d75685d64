r"""Teacher cache at scale: 2 concurrent writers, shuffled reads on 2 simulated hosts.

1. **Write.** Two writer processes run at once, each a
   :class:`~sad_jax.data.teacher_cache.TeacherCacheWriter` with its own ``writer_id``,
   writing the sequences whose key is ``key % 2 == writer`` into one cache directory
   (synthetic top-k outputs, a pure function of the key; lengths uniform in
   ``[seq_len / 2, 3 seq_len / 2]``). Reported: wall time, tokens/s, bytes/token.
2. **Read.** Two host processes run at once, each iterating
   ``cache.to_dataset(seed=..., shard_options=ShardOptions(host, 2)).repeat(epochs)``
   (Grain: one global shuffle per epoch, host ``h`` takes every second record). Each
   host reports the keys it saw per epoch, records/s, tokens/s and the bytes it read
   from files (``rchar`` of ``/proc/self/io``: every ``read``/``pread``, page-cache
   hits included) against the size of the records it read: a whole-shard load per
   record would make that ratio about ``shard_tokens / seq_len`` (hundreds). The
   parent checks that in every epoch the two hosts' records are disjoint and together
   are every record exactly once, and checks every ``--check-every``-th record's
   contents against the writer's.
3. **Baseline.** The same sequences written by the reader that format 3 replaces (the
   ``.npz`` format-2 module, loaded from git revision ``--baseline-rev``, with its
   default 1M-token shards and bf16 values), then read in host 0's shuffled order
   for ``--baseline-rows`` rows. Reported: its open time (it hashes every shard), rows/s,
   tokens/s and whole-shard loads, and the throughput ratio of host 0 to it.
4. **Bytes per token** of each value dtype, from a ``--dtype-tokens`` cache each.

Files are read from a warm page cache (the box has room for both caches), so the
figures are the readers' CPU cost, not the disk's.

Usage::

  python benchmarks/teacher_cache_io.py                  # 5M tokens, k=64, V=151936
  python benchmarks/teacher_cache_io.py --tokens 500000 --baseline-rows 8
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _lengths(args) -> np.ndarray:
  rng = np.random.default_rng(args.seed)
  out, total = [], 0
  while total < args.tokens:
    n = int(rng.integers(args.seq_len // 2, 3 * args.seq_len // 2 + 1))
    out.append(n)
    total += n
  return np.asarray(out)


def _record(key: int, length: int, k: int, vocab: int):
  rng = np.random.default_rng(key)
  tokens = rng.integers(0, vocab, length)
  indices = rng.integers(0, vocab, (length, k))
  logprobs = -np.sort(rng.exponential(2.0, (length, k)).astype(np.float32), axis=-1)
  return tokens, indices, logprobs


def _rchar() -> int:
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def _writer(args) -> dict:
  from sad_jax.data import teacher_cache as tc
  lengths = _lengths(args)
  t0 = time.perf_counter()
  tokens, appending = 0, 0.0
  with tc.TeacherCacheWriter(args.dir, k=args.k, vocab_size=args.vocab,
                             tokenizer_fingerprint="sha256:benchmark",
                             value_dtype=args.value_dtype, writer_id=f"writer{args.index}",
                             shard_tokens=args.shard_tokens) as w:
    for key in range(args.index, len(lengths), 2):
      if key not in w.done_keys:
        record = _record(key, int(lengths[key]), args.k, args.vocab)
        t = time.perf_counter()
        w.append(key, *record)
        appending += time.perf_counter() - t
        tokens += int(lengths[key])
    t = time.perf_counter()
  appending += time.perf_counter() - t  # the last commit
  return dict(seconds=time.perf_counter() - t0, append_seconds=appending, tokens=tokens)


def _host(args) -> dict:
  import grain
  from sad_jax.data import teacher_cache as tc
  t_open = time.perf_counter()
  cache = tc.TeacherCache(args.dir)
  opened = time.perf_counter() - t_open
  ds = cache.to_dataset(seed=args.seed, shard_options=grain.sharding.ShardOptions(
      args.index, 2)).repeat(args.epochs)
  per_epoch = len(ds) // args.epochs
  keys, tokens, record_bytes = [], 0, 0
  rchar0, t0 = _rchar(), time.perf_counter()
  for rec in ds:
    keys.append(rec.key)
    tokens += rec.indices.shape[0]
    record_bytes += tc.record_bytes(cache.header, rec.indices.shape[0])
  seconds = time.perf_counter() - t0
  return dict(open_seconds=opened, seconds=seconds, records=len(keys), tokens=tokens,
              keys=keys, per_epoch=per_epoch, read_bytes=_rchar() - rchar0,
              record_bytes=record_bytes)


def _spawn(args, role: str, index: int) -> subprocess.Popen:
  cmd = [sys.executable, __file__, "--role", role, "--index", str(index), "--dir", args.dir,
         "--tokens", str(args.tokens), "--k", str(args.k), "--vocab", str(args.vocab),
         "--seq-len", str(args.seq_len), "--seed", str(args.seed), "--epochs",
         str(args.epochs), "--value-dtype", args.value_dtype, "--shard-tokens",
         str(args.shard_tokens)]
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _run_pair(args, role: str) -> tuple[float, list[dict]]:
  t0 = time.perf_counter()
  procs = [_spawn(args, role, i) for i in range(2)]
  results = []
  for p in procs:
    out, _ = p.communicate()
    if p.returncode:
      raise SystemExit(f"{role} process failed ({p.returncode})")
    results.append(json.loads(out.strip().splitlines()[-1]))
  return time.perf_counter() - t0, results


def _old_module(rev: str) -> types.ModuleType:
  source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:sad_jax/data/teacher_cache.py"],
                          capture_output=True, text=True, check=True).stdout
  module = types.ModuleType("teacher_cache_format2")
  exec(compile(source, f"{rev}:sad_jax/data/teacher_cache.py", "exec"), module.__dict__)
  return module


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tokens", type=int, default=5_000_000)
  p.add_argument("--k", type=int, default=64)
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--seq-len", type=int, default=2048)
  p.add_argument("--value-dtype", default="float32")
  p.add_argument("--shard-tokens", type=int, default=1 << 20)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--check-every", type=int, default=97)
  p.add_argument("--baseline-rev", default="2268676")
  p.add_argument("--baseline-rows", type=int, default=16)
  p.add_argument("--dtype-tokens", type=int, default=1 << 18)
  p.add_argument("--workdir", help="default: a temporary directory, removed at the end")
  p.add_argument("--role", choices=("main", "writer", "host"), default="main")
  p.add_argument("--index", type=int, default=0)
  p.add_argument("--dir")
  args = p.parse_args()
  if args.role == "writer":
    print(json.dumps(_writer(args)))
    return
  if args.role == "host":
    print(json.dumps(_host(args)))
    return

  sys.path.insert(0, str(ROOT))
  from sad_jax.data import teacher_cache as tc

  work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="teacher_cache_io_"))
  work.mkdir(parents=True, exist_ok=True)
  args.dir = str(work / "cache")
  shutil.rmtree(args.dir, ignore_errors=True)
  lengths = _lengths(args)
  total = int(lengths.sum())
  print(f"{len(lengths)} sequences, {total} tokens, k={args.k}, V={args.vocab}, "
        f"{args.value_dtype} values, shards of {args.shard_tokens} tokens")

  wall, writers = _run_pair(args, "writer")
  cache = tc.TeacherCache(args.dir)
  assert cache.num_tokens == total and len(cache) == len(lengths)
  print(f"write: 2 concurrent writers, {wall:.1f} s wall (process start and synthetic "
        f"records included); in append/commit: " + ", ".join(
            f"{w['tokens'] / w['append_seconds'] / 1e6:.2f}" for w in writers)
        + f" M tokens/s per writer; {cache.bytes_per_token():.1f} bytes/token, "
        f"{cache.bytes_per_token() * total / 2**30:.2f} GiB")

  wall, hosts = _run_pair(args, "host")
  n = len(lengths)
  for epoch in range(args.epochs):
    seen = []
    for h in hosts:
      seen += h["keys"][epoch * h["per_epoch"]:(epoch + 1) * h["per_epoch"]]
    assert sorted(seen) == list(range(n)), f"epoch {epoch}: not every record exactly once"
  for key in range(0, n, args.check_every):
    rec, want = cache.record(key), _record(key, int(lengths[key]), args.k, args.vocab)
    np.testing.assert_array_equal(rec.tokens, want[0])
    np.testing.assert_array_equal(rec.indices, want[1])
    np.testing.assert_allclose(rec.logprobs, want[2], rtol=1e-2)
  print(f"read: 2 hosts x {args.epochs} epochs, every record exactly once per epoch "
        f"(checked); contents checked for every {args.check_every}th record")
  for i, h in enumerate(hosts):
    print(f"  host {i}: open {h['open_seconds'] * 1e3:.0f} ms, {h['records']} records in "
          f"{h['seconds']:.1f} s = {h['tokens'] / h['seconds'] / 1e6:.2f} M tokens/s, "
          f"{h['records'] / h['seconds']:.0f} rows/s; read {h['read_bytes'] / 2**30:.2f} GiB "
          f"from files for records of {h['record_bytes'] / 2**30:.2f} GiB "
          f"({h['read_bytes'] / h['record_bytes']:.3f}x: no whole-shard reads)")

  old = _old_module(args.baseline_rev)
  old_dir = work / "format2"
  shutil.rmtree(old_dir, ignore_errors=True)
  t0 = time.perf_counter()
  with old.TeacherCacheWriter(old_dir, k=args.k, vocab_size=args.vocab,
                              tokenizer_fingerprint="sha256:benchmark") as w:
    for key in range(n):
      w.append(*_record(key, int(lengths[key]), args.k, args.vocab))
  old_write = time.perf_counter() - t0
  t0 = time.perf_counter()
  reader = old.TeacherCache(old_dir)
  old_open = time.perf_counter() - t0
  order = hosts[0]["keys"][:args.baseline_rows]
  loads, last, tokens = 0, None, 0
  t0 = time.perf_counter()
  for key in order:
    idx, _ = reader.sequence(key)
    tokens += idx.shape[0]
    loads += reader._loaded[0] != last  # pylint: disable=protected-access
    last = reader._loaded[0]  # pylint: disable=protected-access
  old_seconds = time.perf_counter() - t0
  old_rate = tokens / old_seconds
  new_rate = hosts[0]["tokens"] / hosts[0]["seconds"]
  print(f"baseline (format 2, rev {args.baseline_rev}): write {old_write:.1f} s (one writer), "
        f"{reader.bytes_per_token():.1f} bytes/token; open {old_open:.1f} s (sha256 of every "
        f"shard); {len(order)} rows of host 0's shuffled order in {old_seconds:.1f} s = "
        f"{old_rate / 1e6:.3f} M tokens/s, {len(order) / old_seconds:.2f} rows/s, {loads} "
        f"whole-shard loads for {len(order)} rows")
  print(f"shuffled read throughput, host 0 vs the format-2 reader: {new_rate / old_rate:.0f}x")

  for dtype in ("float32", "bfloat16", "float16"):
    path = work / f"bytes_{dtype}"
    shutil.rmtree(path, ignore_errors=True)
    with tc.TeacherCacheWriter(path, k=args.k, vocab_size=args.vocab, value_dtype=dtype,
                               tokenizer_fingerprint="sha256:benchmark",
                               shard_tokens=args.shard_tokens) as w:
      written, key = 0, 0
      while written < args.dtype_tokens:
        w.append(key, *_record(key, int(lengths[key]), args.k, args.vocab))
        written += int(lengths[key])
        key += 1
    c = tc.TeacherCache(path)
    print(f"bytes/token, {dtype}: {c.bytes_per_token():.1f} ({c.num_tokens} tokens; record "
          f"payload {tc.record_bytes(c.header, args.seq_len) / args.seq_len:.1f} at "
          f"T={args.seq_len})")
  if not args.workdir:
    shutil.rmtree(work)


if __name__ == "__main__":
  main()
