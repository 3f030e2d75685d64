"""Batching, packing and the next-token shift; JSONL reading; statistics."""
from __future__ import annotations

import gzip
import json

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from sad_jax.objective._spans import SpanType
from sad_jax.data import trajectories as tj

PAD, R, A, O = SpanType.PAD, SpanType.REASONING, SpanType.ACTION, SpanType.OBSERVATION


def test_shift_matches_the_documented_example():
  b = tj.batch([([10, 11, 12, 13], [R, R, A, A])], seq_len=6, pad_id=-1)
  assert b.tokens.tolist() == [[10, 11, 12, 13, -1, -1]]
  assert b.input_span_ids.tolist() == [[R, R, A, A, PAD, PAD]]
  assert b.labels.tolist() == [[11, 12, 13, -1, -1, -1]]
  assert b.span_ids.tolist() == [[R, A, A, PAD, PAD, PAD]]
  assert b.segment_ids.tolist() == [[1, 1, 1, 1, 0, 0]]
  assert b.positions.tolist() == [[0, 1, 2, 3, 0, 0]]
  assert b.truncated.tolist() == [0]
  assert all(x.dtype == np.int32 for x in b)


def test_truncation_is_reported_and_keeps_the_true_next_label():
  ex = (np.arange(10), np.full(10, A))
  right = tj.batch([ex, (np.arange(3), np.full(3, R))], seq_len=4)
  assert right.tokens[0].tolist() == [0, 1, 2, 3] and right.labels[0].tolist() == [1, 2, 3, 4]
  assert right.span_ids[0].tolist() == [A, A, A, A]
  assert right.truncated.tolist() == [6, 0]
  left = tj.batch([ex], seq_len=4, truncate="left")
  assert left.tokens[0].tolist() == [6, 7, 8, 9] and left.labels[0].tolist() == [7, 8, 9, 0]
  assert left.span_ids[0].tolist() == [A, A, A, PAD] and left.truncated.tolist() == [6]


def test_pack_segments_do_not_leak_labels():
  exs = [([1, 2, 3], [R, A, A]), ([4, 5], [O, R]), ([6, 7, 8, 9], [R, R, R, A]), ([10], [A])]
  b = tj.pack(exs, seq_len=6, num_rows=3)
  assert b.tokens.tolist() == [[1, 2, 3, 4, 5, 10], [6, 7, 8, 9, 0, 0], [0] * 6]
  assert b.segment_ids.tolist() == [[1, 1, 1, 2, 2, 3], [1, 1, 1, 1, 0, 0], [0] * 6]
  assert b.positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0], [0] * 6]
  assert b.labels.tolist() == [[2, 3, 0, 5, 0, 0], [7, 8, 9, 0, 0, 0], [0] * 6]
  assert b.span_ids.tolist() == [[A, A, PAD, R, PAD, PAD], [R, R, A, PAD, PAD, PAD], [PAD] * 6]
  with pytest.raises(ValueError, match="pack needs 2 rows of seq_len=6 .* but num_rows=1"):
    tj.pack(exs, seq_len=6, num_rows=1)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
                  seq_len=st.integers(1, 16))
def test_pack_agrees_with_next_token_targets(lengths, seq_len):
  rng = np.random.default_rng(sum(lengths) + seq_len)
  exs = [(rng.integers(1, 100, n), rng.integers(1, 6, n)) for n in lengths]
  b = tj.pack(exs, seq_len)
  labels, label_spans = tj.next_token_targets(b.tokens, b.input_span_ids, b.segment_ids)
  # Equal except at the last kept position of a right-truncated trajectory, which
  # keeps its true next token.
  cut = (labels != b.labels) | (label_spans != b.span_ids)
  assert cut.sum() <= (np.array(lengths) > seq_len).sum()
  assert b.truncated.sum() == sum(max(0, n - seq_len) for n in lengths)
  kept = b.segment_ids > 0
  assert kept.sum() == sum(min(n, seq_len) for n in lengths)
  assert ((b.span_ids == PAD) | kept).all()


def test_batch_errors_name_the_argument():
  with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
    tj.batch([([1], [1])], 0)
  with pytest.raises(ValueError, match="truncate must be one of"):
    tj.batch([([1], [1])], 4, truncate="middle")
  with pytest.raises(ValueError, match="examples is empty"):
    tj.pack([], 4)
  with pytest.raises(ValueError, match=r"examples\[1\] has 2 ids but 1 span ids"):
    tj.batch([([1], [1]), ([1, 2], [1])], 4)
  with pytest.raises(TypeError, match=r"examples\[0\] must be a Tokenized"):
    tj.batch([np.arange(3)], 4)


def test_end_to_end_jsonl_to_batch(conventions_path):
  def chars(text):  # one token per character
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]

  records = list(tj.read_jsonl(conventions_path))
  examples = [tj.tokenize(r.segmented, chars) for r in records]
  b = tj.pack(examples, seq_len=2048)
  assert b.tokens.shape[1] == 2048 and b.truncated.sum() == 0
  first = records[0].segmented
  types = first.char_types()
  n = len(first.text)
  assert b.span_ids[0, :n - 1].tolist() == types[1:].tolist()  # the shift, on real data


def test_read_jsonl_counts_malformed_lines(tmp_path, conventions_path):
  good = conventions_path.read_text(encoding="utf-8").splitlines()[:5]
  lines = good[:2] + [
      "{not json", "", "[1, 2]", '{"format": "react"}', '{"trajectory": "x", "format": "yaml"}',
      '{"trajectory": "Thought: a\\nAction 1:\\n", "format": "react", "id": "empty-action"}',
      "[" * 100_000,
  ] + good[2:]
  path = tmp_path / "data.jsonl.gz"
  with gzip.open(path, "wb") as f:
    f.write(("\n".join(lines) + "\n").encode() + b"\xff\xfe broken utf8\n")
  report = tj.ReadReport()
  records = list(tj.read_jsonl(path, report=report))
  assert [r.id for r in records] == [json.loads(g)["name"] for g in good]
  assert (report.lines, report.ok, report.malformed) == (12, 5, 7)
  assert [n for n, _ in report.errors] == [3, 5, 6, 7, 8, 9, 13]
  assert "invalid JSON" in report.errors[0][1] and "empty action" in report.errors[4][1]
  assert "invalid UTF-8" in report.errors[-1][1]
  assert "12 lines: 5 ok, 0 recovered, 0 flagged, 7 malformed" in str(report)
  # Lenient: the empty action is recovered (yielded, counted apart from ok).
  report = tj.ReadReport()
  recovered = list(tj.read_jsonl(lines, strict=False, format=None, report=report))
  assert len(recovered) == 6 and recovered[2].segmented.warnings
  assert (report.ok, report.recovered, report.flagged) == (5, 1, 0)
  with pytest.raises(ValueError, match="format must be None, a format spec or one of"):
    next(tj.read_jsonl(lines, format="yaml"))


def test_stats_and_complexity():
  span_ids = np.array([[1, 2, 2, 3, 4, 0], [2, 3, 3, 3, 0, 0]])
  counts = tj.span_token_counts(span_ids)
  assert counts.tolist() == [[1, 1, 2, 1, 1, 0], [2, 0, 1, 3, 0, 0]]
  c = tj.complexity(span_ids, alpha=1.0, beta=2.0)
  assert c.tolist() == [2 + 2 * 1, 1 + 2 * 3]
  entropy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0], [1.0, 1.0, 1.0, 1.0, 100.0, 100.0]])
  c = tj.complexity(span_ids, alpha=1.0, beta=2.0, gamma=0.5, teacher_entropy=entropy)
  np.testing.assert_allclose(c, [4 + 0.5 * 3.0, 7 + 0.5 * 1.0])
  assert tj.complexity(span_ids[0]).shape == ()
  with pytest.raises(ValueError, match="teacher_entropy shape"):
    tj.complexity(span_ids, teacher_entropy=entropy[0])
  seg = tj.segment("Thought: ab\nAction: c[]\n")
  assert tj.span_char_counts(seg).tolist() == [0, 0, 12, 12, 0, 0]
