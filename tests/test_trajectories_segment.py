"""Segmentation: each format's rules, errors, templates, fuzzing (and the optional shared samples)."""
from __future__ import annotations

import json
import re
import time

import hypothesis
from hypothesis import strategies as st
import pytest

from sad_jax.objective._spans import SpanType
from sad_jax.data import trajectories as tj

P, R, A, O, X = (SpanType.PROMPT, SpanType.REASONING, SpanType.ACTION,
                 SpanType.OBSERVATION, SpanType.OTHER)


def load_samples(shared_dir):
  """The optional `../shared` samples (an extra check: skipped where the folder is absent)."""
  with open(shared_dir / "trajectories" / "samples.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def occurrence_has_type(seg: tj.Segmented, sub: str, span_type: SpanType) -> bool:
  """Some occurrence of ``sub`` has every non-space character labelled ``span_type``."""
  types = seg.char_types()
  for m in re.finditer(re.escape(sub), seg.text):
    if all(types[i] == span_type for i in range(m.start(), m.end()) if not seg.text[i].isspace()):
      return True
  return False


def labelled(seg: tj.Segmented) -> list[tuple[str, str]]:
  return [(t.name, seg.text[s:e]) for s, e, t in seg.pieces()]


# ------------------------------------------------------------------ samples


@pytest.mark.parametrize("fmt", ["given", "auto"])
def test_every_sample_meets_its_expect(shared_dir, fmt):
  samples = load_samples(shared_dir)
  assert len(samples) >= 5
  for rec in samples:
    seg = tj.segment(rec["trajectory"], format=rec["format"] if fmt == "given" else "auto")
    assert seg.format == rec["format"], rec["name"]
    assert not seg.warnings
    for type_name, subs in rec["expect"].items():
      for sub in subs:
        assert occurrence_has_type(seg, sub, SpanType[type_name]), (rec["name"], type_name, sub)


def test_builtin_chat_rendering_equals_chatml_segmentation(trajectory_fixtures):
  chats = [r for r in trajectory_fixtures if r["format"] in ("chat", "sharegpt")]
  assert len(chats) >= 5
  for rec in chats:
    seg = tj.segment(rec["trajectory"])
    again = tj.segment(seg.text, format="chatml")
    assert again.spans == seg.spans, rec["name"]


# ------------------------------------------------------------------ react


def test_react_action_word_inside_thought_is_reasoning():
  text = ("Question: q?\n"
          "Thought 1: I will not write Action: here as an action.\n"
          "It continues on a second line.\n"
          "Action 1: Search[x]\n"
          "Observation 1: found x.\n")
  seg = tj.segment(text, format="react")
  assert labelled(seg) == [
      ("PROMPT", "Question: q?\n"),
      ("REASONING", "Thought 1: I will not write Action: here as an action.\n"
                    "It continues on a second line.\n"),
      ("ACTION", "Action 1: Search[x]\n"),
      ("OBSERVATION", "Observation 1: found x.\n"),
  ]


def test_react_webshop_think_action_and_langchain_layout():
  webshop = ("WebShop\nInstruction:\ni need a red mug\n[Search]\n\n"
             "Action: search[red mug]\nObservation: [Back to Search] B01 red mug $9\n"
             "Action: think[B01 is red and cheap.]\nObservation: OK.\nAction: click[B01]\n")
  seg = tj.segment(webshop)
  assert seg.format == "react"
  assert occurrence_has_type(seg, "i need a red mug", P)
  assert occurrence_has_type(seg, "think[B01 is red and cheap.]", R)
  assert occurrence_has_type(seg, "click[B01]", A)
  lc = "Thought: use the tool\nAction: search\nAction Input: weather\nObservation: sunny\nFinal Answer: sunny\n"
  seg = tj.segment(lc, format="react")
  assert [t for _, t in labelled(seg)] == [
      "Thought: use the tool\n", "Action: search\nAction Input: weather\n",
      "Observation: sunny\n", "Final Answer: sunny\n"]
  assert [n for n, _ in labelled(seg)] == ["REASONING", "ACTION", "OBSERVATION", "ACTION"]


def test_react_errors_and_recovery():
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment("Question: q\nThought: t\nAction 1:\nObservation: o\n", format="react")
  assert e.value.position == len("Question: q\nThought: t\n") and "empty action" in str(e.value)
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment("just some text\n", format="react")
  assert e.value.position == 0
  seg = tj.segment("just some text\n", format="react", strict=False)
  assert labelled(seg) == [("PROMPT", "just some text\n")] and seg.warnings


# ------------------------------------------------------------------ alfworld


def test_alfworld_lines():
  text = "Room.\nYour task is to: x.\n> think: plan\nOK.\n> go to a 1\nYou arrive.\n"
  assert labelled(tj.segment(text)) == [
      ("PROMPT", "Room.\nYour task is to: x.\n"), ("REASONING", "> think: plan\n"),
      ("OBSERVATION", "OK.\n"), ("ACTION", "> go to a 1\n"), ("OBSERVATION", "You arrive.\n")]
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment("Room.\n> \nok\n", format="alfworld")
  assert e.value.position == 6
  seg = tj.segment("Room.\n> \nok\n", format="alfworld", strict=False)
  assert seg.texts(A) == ["> \n"] and seg.warnings


# ------------------------------------------------------------------ codeact


def test_codeact_fences_and_code_tags():
  text = ("Task: t\nThought: plan\n```python\nx = 1  # Observation: not a marker\n```\n"
          "Observation: ```py\nnot code\n```\n"
          "Thought: again\n<code>\nprint(2)\n</code>\n")
  seg = tj.segment(text)
  assert seg.format == "codeact"
  assert seg.texts(A) == ["```python\nx = 1  # Observation: not a marker\n```\n", "<code>\nprint(2)\n</code>\n"]
  assert seg.texts(O) == ["Observation: ```py\nnot code\n```\n"]


def test_codeact_unclosed_fence():
  text = "Thought: t\nCode:\n```py\nprint(1)\n"
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment(text, format="codeact")
  assert e.value.position == text.index("```") and "unclosed code block" in e.value.reason
  seg = tj.segment(text, format="codeact", strict=False)
  assert seg.texts(A) == ["Code:\n```py\nprint(1)\n"]


# ------------------------------------------------------------------ chatml


def test_chatml_r1_layout_and_tool_role():
  text = ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhmm, let me see\n</think>\n\nhello"
          "<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n")
  seg = tj.segment(text)
  assert seg.texts(R) == ["hmm, let me see\n</think>\n\n"]
  assert seg.texts(A) == ["hello"] and seg.texts(O) == ["42"]


@pytest.mark.parametrize("text, reason, where", [
    ("<|im_start|>assistant\n<think>no end<|im_end|>\n", "unclosed <think>", "<think>"),
    ("<|im_start|>assistant\n<tool_call>\n{\"name\": 1\n</tool_call><|im_end|>", "not valid JSON", "</tool_call>"),
    ("<|im_start|>assistant\n<tool_call>[1]</tool_call><|im_end|>", '"name"', "[1]"),
    ("<|im_start|>robot\nhi<|im_end|>", "unknown role 'robot'", "robot"),
    ("<|im_start|>user\nhi", "without <|im_end|>", "<|im_start|>"),
    ("<|im_start|>user\n<tool_response>x<|im_end|>", "unclosed <tool_response>", "<tool_response>"),
    ("<|im_start|>user\nhi<|im_end|>\nstray", "outside", "stray"),
])
def test_chatml_errors_point_at_the_problem(text, reason, where):
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment(text, format="chatml")
  assert reason in e.value.reason
  assert e.value.position == text.index(where)
  seg = tj.segment(text, format="chatml", strict=False)
  assert seg.warnings and seg.text == text


# ------------------------------------------------------------------ chat

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
    {"role": "assistant", "content": None, "reasoning_content": "Need the tool.",
     "tool_calls": [{"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}},
                    {"id": "c2", "type": "function",
                     "function": {"name": "time", "arguments": {"tz": "CET"}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
    {"role": "assistant", "content": "<think>It rains.</think>Take an umbrella."},
]


def test_chat_builtin_rendering_is_qwen_chatml():
  seg = tj.segment({"messages": MESSAGES})
  assert seg.format == "chat"
  assert seg.text == (
      "<|im_start|>system\nBe brief.<|im_end|>\n"
      "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
      "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\n\n"
      "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call><|im_end|>\n"
      "<|im_start|>user\n<tool_response>\nrain\n</tool_response>\n<tool_response>\n12:00\n</tool_response><|im_end|>\n"
      "<|im_start|>assistant\n<think>It rains.</think>Take an umbrella.<|im_end|>\n")
  assert seg.texts(P) == ["Be brief.", "Weather in Oslo?"]
  assert seg.texts(O) == ["<tool_response>\nrain\n</tool_response>\n<tool_response>\n12:00\n</tool_response>"]
  assert seg.texts(R) == ["<think>\nNeed the tool.\n</think>\n\n\n", "<think>It rains.</think>"]
  assert seg.texts(A)[-1] == "Take an umbrella."
  assert tj.segment(seg.text, format="chatml").spans == seg.spans


@pytest.mark.parametrize("messages, reason, message_start", [
    ([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}], "messages[1] has unknown role", 29),
    ([{"role": "assistant", "content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": "{bad"}}]}],
     "messages[0].tool_calls[0].function.arguments is not valid JSON", 0),
    ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], "no function name", 0),
    ([{"role": "user", "content": 7}], "messages[0].content must be a string", 0),
])
def test_chat_errors_name_the_message(messages, reason, message_start):
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment(messages)
  assert reason in e.value.reason and e.value.position == message_start
  seg = tj.segment(messages, strict=False)
  assert seg.warnings


def test_chat_unclosed_think_position_is_in_rendered_text():
  messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok <think>hmm"}]
  with pytest.raises(tj.TrajectoryError) as e:
    tj.segment(messages)
  seg = tj.segment(messages, strict=False)
  assert e.value.position == seg.text.index("<think>") and "messages[1]" in e.value.reason
  assert seg.texts(R) == ["<think>hmm"]


@pytest.mark.parametrize("bad", [None, 3, "", [], [1], {"nomessages": 1}])
def test_chat_rejects_non_message_input(bad):
  with pytest.raises(tj.TrajectoryError):
    tj.segment(bad, format="chat")
  with pytest.raises(tj.TrajectoryError):
    tj.segment(bad, format="chat", strict=False)


QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN3_LIKE_TEMPLATE = """{%- for message in messages %}
{%- if message.role == "assistant" %}
{%- set content = message.content %}
{%- set reasoning = message.reasoning_content or '' %}
{%- if '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
{%- for tool_call in message.tool_calls or [] %}
{{- '\\n<tool_call>\\n' + tool_call.function | tojson + '\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}"""


def test_chat_template_qwen25_matches_builtin():
  messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in MESSAGES]
  builtin = tj.segment(messages)
  seg = tj.segment(messages, chat_template=QWEN25_TEMPLATE)
  assert seg.text == builtin.text and not seg.warnings
  # Only characters copied from the messages are labelled, and exactly as built-in.
  types, ref = seg.char_types(), builtin.char_types()
  labelled_chars = types != X
  assert labelled_chars.sum() > 50
  assert (types[labelled_chars] == ref[labelled_chars]).all()
  assert seg.texts(A)[:2] == ["weather", '{"city": "Oslo"}']
  assert seg.texts(R) == ["It rains."] and seg.texts(P) == ["Be brief.", "Weather in Oslo?"]


def test_chat_template_qwen25_with_tools_and_default_system():
  messages = [m for m in MESSAGES if m["role"] != "system"]
  tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
  seg = tj.segment({"messages": messages, "tools": tools}, chat_template=QWEN25_TEMPLATE)
  assert seg.text.startswith("<|im_start|>system\nYou are Qwen")
  assert "Weather in Oslo?" in seg.texts(P)
  assert seg.texts(O) == ["rain", "12:00"]


def test_chat_template_that_splits_think_keeps_offsets_exact():
  seg = tj.segment(MESSAGES, chat_template=QWEN3_LIKE_TEMPLATE)
  assert not seg.warnings
  assert "<|im_start|>assistant\n<think>\nIt rains.\n</think>\n\nTake an umbrella.<|im_end|>" in seg.text
  assert seg.texts(R) == ["Need the tool.", "It rains."]
  assert "Take an umbrella." in seg.texts(A)
  assert seg.texts(A)[:2] == ["weather", '{"city": "Oslo"}']


def test_chat_template_that_rewrites_content():
  template = "{% for m in messages %}[{{ m.role }}] {{ m.content[:4] }}|{{ m.content }}\n{% endfor %}"
  messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "fine"}]
  with pytest.raises(tj.TrajectoryError, match="rewrites message content"):
    tj.segment(messages, chat_template=template)
  seg = tj.segment(messages, chat_template=template, strict=False)
  assert seg.text == "[user] hell|hello there\n[assistant] fine|fine\n"
  assert seg.warnings and seg.texts(P) == ["hello there"]


def test_chat_template_errors():
  with pytest.raises(ValueError, match="chat_template has a Jinja syntax error"):
    tj.segment(MESSAGES, chat_template="{% for %}")
  with pytest.raises(tj.TrajectoryError, match="roles must alternate"):
    tj.segment(MESSAGES, chat_template="{{ raise_exception('roles must alternate') }}")
  with pytest.raises(tj.TrajectoryError, match="failed to render"):
    tj.segment(MESSAGES, chat_template="{{ messages[0].content.nope() }}")
  with pytest.raises(ValueError, match="only apply to message formats"):
    tj.segment("Thought: x\nAction: y\n", chat_template=QWEN25_TEMPLATE)


# ------------------------------------------------------------------ dispatch


def test_auto_detection_and_argument_errors():
  assert tj.detect_format("no markers here") is None
  assert tj.detect_format(MESSAGES) == "chat"
  with pytest.raises(tj.TrajectoryError, match="could not detect"):
    tj.segment("no markers here")
  seg = tj.segment("no markers here", strict=False)
  assert seg.format == "unknown" and seg.spans == () and seg.warnings
  with pytest.raises(ValueError, match=r"format must be one of .* got 'yaml'"):
    tj.segment("x", format="yaml")
  with pytest.raises(tj.TrajectoryError, match="needs the trajectory as a string"):
    tj.segment(MESSAGES, format="react")


def test_segmented_validates_spans():
  with pytest.raises(ValueError, match=r"spans\[1\]"):
    tj.Segmented("abcdef", ((0, 3, P), (2, 4, A)))
  with pytest.raises(ValueError, match="PAD"):
    tj.Segmented("abc", ((0, 1, SpanType.PAD),))
  seg = tj.Segmented("abcdef", ((1, 3, P),))
  assert seg.char_types().tolist() == [5, 1, 1, 5, 5, 5]


def test_linear_time_on_adversarial_input():
  """4x the input costs ~4x the CPU time (a quadratic scan: ~16x); CPU time of this
  process, best of 3, so other processes on the machine do not enter the ratio."""
  big = {
      "chatml": lambda n: "<|im_start|>" * n + "<|im_start|>assistant\n" + "<think><tool_call>" * n,
      "react": lambda n: "Thought: Action: " * n + "\nAction:" * n,
      "codeact": lambda n: "Thought: x\n" + "```py\n" * n,
      "alfworld": lambda n: "> \n" * (2 * n),
  }

  def cpu_seconds(text, fmt):
    times = []
    for _ in range(3):
      t0 = time.process_time()
      tj.segment(text, format=fmt, strict=False)
      times.append(time.process_time() - t0)
    return min(times)

  for fmt, make in big.items():
    small, large = cpu_seconds(make(5000), fmt), cpu_seconds(make(20000), fmt)
    assert large < 8.0 * max(small, 1e-3), (fmt, small, large)


# ------------------------------------------------------------------ fuzzing

FRAGMENTS = [
    "\n", " ", "Question:", "Thought:", "Thought 2:", "Action:", "Action 1:", "Observation:",
    "Action Input:", "Final Answer:", "think[", "]", "> ", "> think:", "think:", "Task:", "Code:",
    "```", "```py", "```python", "<end_code>", "<code>", "</code>", "<|im_start|>", "<|im_end|>",
    "system", "user", "assistant", "tool", "robot", "<think>", "</think>", "<tool_call>",
    "</tool_call>", "<tool_response>", "</tool_response>", '{"name": "f"}', '{"name"', "{", "}",
    "x", "hello world", "é", "\U0010FFF3", "\r\n", "\t",
]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)


def check_valid(seg: tj.Segmented):
  assert isinstance(seg, tj.Segmented)
  prev = 0
  for start, end, typ in seg.spans:
    assert prev <= start < end <= len(seg.text) and typ in (P, R, A, O)
    prev = end


@hypothesis.settings(max_examples=150, deadline=1000)
@hypothesis.given(text=texts, fmt=st.sampled_from(tj.FORMATS))
def test_fuzz_text_segments_or_raises_trajectory_error(text, fmt):
  try:
    check_valid(tj.segment(text, format=fmt))
  except tj.TrajectoryError as e:
    assert 0 <= e.position <= len(text) or fmt in tj.SCHEMAS
  if fmt not in tj.SCHEMAS:
    seg = tj.segment(text, format=fmt, strict=False)
    check_valid(seg)
    assert seg.text == text


@hypothesis.settings(max_examples=60, deadline=1000)
@hypothesis.given(data=st.data())
def test_fuzz_mutated_fixtures(trajectory_fixtures, data):
  rec = data.draw(st.sampled_from(trajectory_fixtures))
  text = rec["trajectory"] if isinstance(rec["trajectory"], str) else tj.segment(rec["trajectory"]).text
  for _ in range(data.draw(st.integers(1, 4))):
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 40)))
    text = text[:i] + data.draw(st.sampled_from(FRAGMENTS + [""])) + text[j:]
  for fmt in ("auto", rec["format"] if rec["format"] in tj.TEXT_FORMATS else "chatml"):
    try:
      check_valid(tj.segment(text, format=fmt))
    except tj.TrajectoryError as e:
      assert 0 <= e.position <= len(text)
    check_valid(tj.segment(text, format=fmt, strict=False))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                           max_leaves=6)
tool_calls = st.lists(st.one_of(
    json_values,
    st.fixed_dictionaries({"function": st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["f", ""]), json_values),
         "arguments": st.one_of(texts, st.sampled_from(['{"a": 1}', "{", "[1]"]), json_values)})})),
    max_size=2)
messages = st.lists(st.one_of(json_values, st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "wizard", None]),
     "content": st.one_of(st.none(), texts, json_values)},
    optional={"tool_calls": tool_calls, "reasoning_content": st.one_of(texts, json_values)})),
    max_size=5)


@hypothesis.settings(max_examples=80, deadline=2000)
@hypothesis.given(msgs=messages, template=st.sampled_from([None, QWEN25_TEMPLATE, QWEN3_LIKE_TEMPLATE]),
                  strict=st.booleans())
def test_fuzz_messages_segment_or_raise_trajectory_error(msgs, template, strict):
  try:
    check_valid(tj.segment(msgs, chat_template=template, strict=strict))
  except tj.TrajectoryError:
    pass
