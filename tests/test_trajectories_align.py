"""Token alignment: the first-non-whitespace rule, real byte-level BPE, random splits."""
from __future__ import annotations

import re
import time

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from sad_jax.objective._spans import SpanType
from sad_jax.data import trajectories as tj


def reference_span_ids(seg: tj.Segmented, offsets) -> list[int]:
  """The rule, written the slow obvious way."""
  types = seg.char_types()
  out = []
  for start, end in offsets:
    solid = [i for i in range(start, end) if not seg.text[i].isspace()]
    if solid:
      out.append(int(types[solid[0]]))
    elif start < end:
      out.append(int(types[start]))
    else:
      out.append(int(SpanType.OTHER))
  return out




def test_first_non_whitespace_rule():
  seg = tj.Segmented("ab  \n cd  ", ((0, 2, SpanType.REASONING), (5, 8, SpanType.ACTION)))
  # tokens: "ab", "  \n" (whitespace, starts in OTHER), " cd" (first solid 'c' is ACTION),
  # "  " (OTHER gap), an empty special token, "b " (starts in REASONING).
  offsets = [(0, 2), (2, 5), (5, 8), (8, 10), (0, 0), (1, 3)]
  got = tj.token_span_ids(seg, offsets)
  assert got.dtype == np.int32
  assert got.tolist() == [2, 5, 3, 5, 5, 2]
  ws = tj.Segmented(" \n x", ((0, 2, SpanType.OBSERVATION),))
  assert tj.token_span_ids(ws, [(0, 2), (1, 4)]).tolist() == [4, 5]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=st.data())
def test_random_offset_splits_match_reference(trajectory_fixtures, data):
  rec = data.draw(st.sampled_from(trajectory_fixtures))
  seg = tj.segment(rec["trajectory"])
  n = len(seg.text)
  cuts = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=60)) + [0, n]))
  offsets = list(zip(cuts[:-1], cuts[1:]))
  # Overlapping and empty tokens too, as byte-level tokenizers and special tokens produce.
  offsets += data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, 8)).map(
      lambda t: (t[0], min(n, t[0] + t[1]))), max_size=10))
  assert tj.token_span_ids(seg, offsets).tolist() == reference_span_ids(seg, offsets)


@pytest.fixture(scope="module")
def bpe(trajectory_fixtures):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  corpus = [tj.segment(r["trajectory"]).text for r in trajectory_fixtures]
  tok.train_from_iterator(corpus * 3, trainer)
  return tok


def test_byte_level_bpe_alignment(trajectory_fixtures, bpe):
  for rec in trajectory_fixtures + [{"trajectory": "Thought: café ☕ — naïve 数据\nAction: go[é]\n"}]:
    seg = tj.segment(rec["trajectory"])
    out = tj.tokenize(seg, bpe)
    assert out.ids.shape == out.span_ids.shape == (len(out.offsets),) and len(out.ids) > 10
    assert bpe.decode(out.ids.tolist(), skip_special_tokens=False) == seg.text
    assert out.span_ids.tolist() == reference_span_ids(seg, out.offsets.tolist())
    # Every token whose first solid character is in a span of type k gets k.
    for type_name, subs in rec.get("expect", {}).items():
      for sub in subs:
        lo = seg.text.index(sub) if seg.char_types()[seg.text.index(sub)] == SpanType[type_name] else None
        if lo is None:
          continue
        inside = [k for k, (s, e) in enumerate(out.offsets) if lo <= s and e <= lo + len(sub)
                  and seg.text[s:e].strip()]
        assert inside and all(out.span_ids[k] == SpanType[type_name] for k in inside), sub
  chatml = tj.segment(next(r for r in trajectory_fixtures if r["format"] == "chatml")["trajectory"])
  out = tj.tokenize(chatml, bpe)
  special = out.ids == bpe.token_to_id("<|im_start|>")
  assert special.sum() == chatml.text.count("<|im_start|>")
  assert (out.span_ids[special] == SpanType.OTHER).all()


def test_callable_tokenizer_and_backend_attribute():
  seg = tj.segment("Thought: go left\nAction: left[]\n")

  def words(text):
    ms = list(re.finditer(r"\s*\S+", text))
    return [len(m.group()) for m in ms], [(m.start(), m.end()) for m in ms]

  out = tj.tokenize(seg, words)
  assert out.span_ids.tolist() == [2, 2, 2, 3, 3]

  class FakeFast:  # what transformers' fast tokenizers look like from here
    def __init__(self, backend):
      self.backend_tokenizer = backend

  class Backend:
    def get_vocab_size(self):
      return 1

    def encode(self, text, add_special_tokens=False):
      ids, offsets = words(text)
      return type("Enc", (), {"ids": ids, "offsets": offsets})

  assert tj.tokenize(seg, FakeFast(Backend())).span_ids.tolist() == out.span_ids.tolist()


def test_alignment_errors_name_the_argument():
  seg = tj.segment("Thought: a\nAction: b\n")
  with pytest.raises(ValueError, match=r"offsets\[1\] = \(3, 99\)"):
    tj.token_span_ids(seg, [(0, 3), (3, 99)])
  with pytest.raises(ValueError, match="offsets must be a sequence of"):
    tj.token_span_ids(seg, [0, 1, 2])
  with pytest.raises(TypeError, match="tokenizer must be a tokenizers.Tokenizer, a tiktoken.Encoding or a callable"):
    tj.tokenize(seg, 42)
  with pytest.raises(ValueError, match="must return \\(ids, offsets\\)"):
    tj.tokenize(seg, lambda text: [1, 2])
  with pytest.raises(ValueError, match="returned 1 ids but 2 offsets"):
    tj.tokenize(seg, lambda text: ([1], [(0, 1), (1, 2)]))
  with pytest.raises(TypeError, match="segmented must be a Segmented"):
    tj.tokenize("text", lambda text: ([], []))
  assert tj.token_span_ids(seg, []).shape == (0,)


def test_alignment_is_linear():
  text = "Thought: " + "word " * 200_000 + "\nAction: x[]\n"
  seg = tj.segment(text)
  offsets = np.stack([np.arange(0, len(text) - 1), np.arange(1, len(text))], axis=1)
  t0 = time.perf_counter()
  ids = tj.token_span_ids(seg, offsets)
  assert time.perf_counter() - t0 < 1.0
  assert ids[5] == SpanType.REASONING and ids[-3] == SpanType.ACTION
