"""Declarative format specs (YAML / dict / ConfigDict), built-ins as specs, and the
never-silently-wrong contract: coverage, flagged records, strict rejections."""
from __future__ import annotations

import json
import time

import hypothesis
from hypothesis import strategies as st
import pytest

from sad_jax.objective._spans import SpanType
from sad_jax.data import trajectories as tj
from sad_jax.data.trajectories import formats

P, R, A, O, X = (SpanType.PROMPT, SpanType.REASONING, SpanType.ACTION,
                 SpanType.OBSERVATION, SpanType.OTHER)

ROBOT_LOG = """\
[2025-03-01 10:00:01] run 42 started
GOAL: stack the red block on the blue block
PLAN> the red block is free, pick it first
CALL> pick(red)
ENV> holding red
CALL> place(red, blue)
ENV> red is on blue
[2025-03-01 10:00:09] success=1
"""

ROBOT_SPEC = """\
name: robot
start: prompt
markers:
  - {match: 'PLAN>', type: reasoning}
  - {match: 'CALL>', type: action}
  - {match: 'ENV>', type: observation}
harness:
  - '\\[[0-9-]+ [0-9:]+\\]'
"""


def labelled(seg):
  return [(t.name, seg.text[s:e]) for s, e, t in seg.pieces()]


def test_user_format_from_yaml_in_ten_lines(tmp_path):
  assert len(ROBOT_SPEC.splitlines()) <= 10
  spec = tj.load_spec(ROBOT_SPEC)
  seg = tj.segment(ROBOT_LOG, format=spec)
  assert seg.format == "robot" and not seg.warnings
  assert labelled(seg) == [
      ("OTHER", "[2025-03-01 10:00:01] run 42 started\n"),
      ("PROMPT", "GOAL: stack the red block on the blue block\n"),
      ("REASONING", "PLAN> the red block is free, pick it first\n"),
      ("ACTION", "CALL> pick(red)\n"), ("OBSERVATION", "ENV> holding red\n"),
      ("ACTION", "CALL> place(red, blue)\n"), ("OBSERVATION", "ENV> red is on blue\n"),
      ("OTHER", "[2025-03-01 10:00:09] success=1\n")]
  path = tmp_path / "robot.yaml"
  path.write_text(ROBOT_SPEC)
  for source in (path, str(path)):
    assert tj.segment(ROBOT_LOG, format=tj.load_spec(source)).spans == seg.spans
  import yaml
  as_dict = yaml.safe_load(ROBOT_SPEC)
  assert tj.segment(ROBOT_LOG, format=as_dict).spans == seg.spans
  ml_collections = pytest.importorskip("ml_collections")
  assert tj.segment(ROBOT_LOG, format=ml_collections.ConfigDict(as_dict)).spans == seg.spans


def test_spec_extends_a_builtin_and_read_jsonl_takes_it():
  text = "Question: q?\nThought: t\nAction: a[]\nObservation: o\n*** judge: PASS ***\n"
  plain = tj.segment(text, format="react")
  assert "*** judge: PASS ***" in plain.texts(O)[0]
  spec = tj.load_spec({"name": "judged_react", "extends": "react", "harness": [r"\*\*\* judge:"]})
  seg = tj.segment(text, format=spec)
  assert seg.texts(X) == ["*** judge: PASS ***\n"] and seg.texts(R) == ["Thought: t\n"]
  records = list(tj.read_jsonl([json.dumps({"trajectory": text})], format=spec))
  assert records[0].segmented.format == "judged_react"


def test_tags_and_turns_in_a_user_spec():
  spec = tj.load_spec({
      "name": "bracketed",
      "turns": {"header": r"^\[(?P<role>me|bot|env)\] ", "roles": {"me": "prompt", "bot": "agent",
                                                                  "env": "observation"}},
      "tags": [{"open": "<plan>", "close": "</plan>", "type": "reasoning"},
               {"open": "<cmd>", "close": "</cmd>", "type": "action"}],
  })
  text = "[me] list files\n[bot] <plan>use ls</plan> <cmd>ls</cmd>\n[env] a.txt\n[bot] There is a.txt.\n"
  seg = tj.segment(text, format=spec)
  assert seg.texts(R) == ["<plan>use ls</plan> "] and seg.texts(A) == ["<cmd>ls</cmd>\n", "There is a.txt.\n"]
  assert seg.texts(O) == ["a.txt\n"] and seg.texts(P) == ["list files\n"]
  assert seg.texts(X) == ["[me] ", "[bot] ", "[env] ", "[bot] "]


@pytest.mark.parametrize("spec, message", [
    ({"name": "x", "markers": [{"match": "A>", "type": "banana"}]}, r"markers\[0\].type must be one of"),
    ({"name": "x", "markers": [{"match": "(", "type": "action"}]}, r"markers\[0\].match is not a valid regular"),
    ({"name": "x", "marker": []}, r"unknown keys \['marker'\]"),
    ({"markers": []}, "needs a non-empty 'name'"),
    ({"name": "x", "turns": {"header": "U:", "roles": {}}}, r"must have a \(\?P<role>"),
    ({"name": "x", "turns": {"header": "(?P<role>U):", "roles": {"U": "human"}}}, r"roles\['U'\] must be one of"),
    ({"name": "x", "extends": "nope"}, "extends unknown format 'nope'"),
    ({"name": "x", "tags": [{"open": "<a>"}]}, r"tags\[0\] needs 'open' and 'type'"),
    ({"name": "x", "harness": "abc"}, "'harness' must be a list"),
    ("- just a list", "must be a mapping"),
    ("name: [unclosed", "not valid YAML"),
])
def test_spec_errors_name_the_field(spec, message):
  with pytest.raises(ValueError, match=message):
    tj.load_spec(spec)


def test_builtin_text_formats_are_specs():
  text = "Question: q\nThought: t\nAction: a[]\nObservation: o\n"
  for name in tj.TEXT_FORMATS:
    spec = tj.load_spec(formats.SPECS[name])
    assert isinstance(spec, tj.FormatSpec) and spec.name == name and spec.description
  assert tj.segment(text, format=tj.load_spec(formats.SPECS["react"])).spans == tj.segment(text).spans
  with pytest.raises(ValueError, match="format must be one of"):
    tj.segment(text, format=3)


# ------------------------------------------------------------------ never silently wrong


def test_coverage_and_issues():
  seg = tj.segment("Question: q\nThought: ab\nAction: c[]\n")
  assert seg.coverage == {"prompt": 12, "reasoning": 12, "action": 12, "observation": 0, "other": 0}
  assert seg.issues() == []
  mostly_other = tj.Segmented("x" * 95 + "abcde", ((95, 100, A),))
  assert mostly_other.issues() == ["95% of the non-space characters are OTHER (> 90%)"]
  assert mostly_other.issues(max_other=0.99) == []
  no_agent = tj.Segmented("only a prompt", ((0, 13, P),))
  assert no_agent.issues() == ["no agent span (no reasoning or action characters)"]


@pytest.mark.parametrize("trajectory, fmt", [
    ([{"role": "user", "content": "hello?"}], "chat"),
    ("Question: what now?\nObservation: nothing\n", "react"),
    ("<|im_start|>user\nhi<|im_end|>\n", "chatml"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt"),
])
def test_strict_rejects_what_it_cannot_label_lenient_warns(trajectory, fmt):
  with pytest.raises(tj.TrajectoryError):
    tj.segment(trajectory, format=fmt)
  seg = tj.segment(trajectory, format=fmt, strict=False)
  assert seg.warnings and "no agent span (no reasoning or action characters)" in seg.issues()


def test_read_jsonl_never_counts_unlabelled_records_ok():
  lines = [
      json.dumps({"id": "good", "trajectory": "Thought: t\nAction: a[]\n"}),
      json.dumps({"id": "user-only", "messages": [
          {"role": "user", "content": "Please summarise the attached quarterly report in three bullets."}]}),
      json.dumps({"id": "noise", "format": "chatml", "trajectory": "<|im_start|>assistant\nok<|im_end|>\n"
                                                                   + "<|im_start|>x\n" + "y" * 200 + "<|im_end|>\n"}),
      json.dumps({"id": "unknown", "trajectory": "just words, no markers"}),
      json.dumps({"id": "empty-action", "trajectory": "Thought: t\nAction:\n"}),
  ]
  report = tj.ReadReport()
  ids = [r.id for r in tj.read_jsonl(lines, strict=False, report=report)]
  assert ids == ["good", "user-only", "noise", "unknown", "empty-action"]
  assert (report.ok, report.recovered, report.flagged, report.malformed) == (1, 1, 3, 0)
  flags = {rid: reasons for _, rid, reasons in report.flags}
  assert flags["user-only"] == ("no agent span (no reasoning or action characters)",)
  assert "are OTHER (> 90%)" in flags["noise"][0]
  assert "no agent span" in flags["unknown"][0] and "are OTHER" in flags["unknown"][1]
  text = str(report)
  assert "5 lines: 1 ok, 1 recovered, 3 flagged, 0 malformed" in text
  assert "line 2 (user-only) flagged: no agent span" in text
  strict = tj.ReadReport()
  assert [r.id for r in tj.read_jsonl(lines, report=strict)] == ["good"]
  assert (strict.ok, strict.malformed) == (1, 4)
  with pytest.raises(ValueError, match="max_other must be in"):
    next(tj.read_jsonl(lines, max_other=2))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(
                               st.sampled_from(["role", "from", "value", "content", "type", "text",
                                                "tool_calls", "function_call", "name", "arguments",
                                                "observation", "action", "thought", "messages",
                                                "conversations", "history", "trajectory", "tools",
                                                "parts", "functionCall", "source", "args", "instruction",
                                                "output", "history", "query", "answers", "thought_0",
                                                "tool_name_0", "system", "response", "input"]),
                               c, max_size=4),
                           max_leaves=12)
roles = st.sampled_from(["user", "assistant", "tool", "system", "human", "gpt", "function_call",
                         "observation", "function", "tool_call", "tool_response", "wizard"])
messages = st.lists(st.fixed_dictionaries(
    {"role": roles, "content": st.one_of(st.text(max_size=20), json_values,
                                         st.lists(st.fixed_dictionaries(
                                             {"type": st.sampled_from(["text", "reasoning", "tool_call",
                                                                       "image", "tool_result"]),
                                              "value": st.one_of(st.text(max_size=8), json_values)}),
                                             max_size=3))}), max_size=5)


@hypothesis.settings(max_examples=200, deadline=2000)
@hypothesis.given(payload=st.one_of(json_values, messages, st.lists(st.text(max_size=10), max_size=4)),
                  key=st.sampled_from(["trajectory", "messages", "conversations", "history"]),
                  fmt=st.sampled_from([None, *tj.FORMATS]), extra=json_values)
def test_fuzz_read_jsonl_lenient_never_raises(payload, key, fmt, extra):
  record = {key: payload, **(extra if isinstance(extra, dict) else {})}
  report = tj.ReadReport()
  for rec in tj.read_jsonl([json.dumps(record)], format=fmt, strict=False, report=report):
    assert isinstance(rec.segmented, tj.Segmented)
  assert report.lines == report.ok + report.recovered + report.flagged + report.malformed == 1


def test_every_layout_is_linear_on_adversarial_input():
  big = {
      "plain": "USER: x ASSISTANT: " * 2500 + "Thought: " * 2500,
      "deepseek": "<｜User｜>" * 5000 + "<｜Assistant｜>" + "<think>" * 5000,
      "autogen": "bot (to user):\n" * 5000,
      "react": "Question: a\n" * 5000 + "Question: b\nThought: x\nAction: y\n",
      "alfworld": "Your task is to: a\n" * 5000 + "> go\n",
      "completion": "{" + '"thoughts": 1, ' * 5000 + '"command": 2}',
      "mistral": "[INST]" * 5000 + "[/INST]" + "[TOOL_CALLS]" * 2500,
      "crewai": "## Thought: x\n" * 5000,
  }
  for fmt, text in big.items():
    t0 = time.perf_counter()
    tj.segment(text, format=fmt, strict=False)
    assert time.perf_counter() - t0 < 2.0, fmt
  messages = [{"role": "user", "content": "q"}] + [
      {"role": "assistant", "content": "Action: a[]"}, {"role": "user", "content": "obs"}] * 1500
  t0 = time.perf_counter()
  seg = tj.segment(messages)
  assert time.perf_counter() - t0 < 2.0
  assert len(seg.texts(O)) == 1500  # every reply to an explicit action is an observation
