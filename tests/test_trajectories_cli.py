"""``python -m sad_jax.data.trajectories inspect|stats``."""
from __future__ import annotations

import io
import json

import pytest

from sad_jax.data import trajectories as tj
from sad_jax.data.trajectories.__main__ import main


def run(*argv) -> str:
  out = io.StringIO()
  assert main(list(argv), out=out) == 0
  return out.getvalue()


@pytest.fixture(scope="module")
def tokenizer_json(conventions_path, tmp_path_factory):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=["<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  texts = [r.segmented.text for r in tj.read_jsonl(conventions_path)]
  tok.train_from_iterator(texts, trainer)
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


@pytest.fixture()
def small_file(conventions_path, tmp_path):
  """Five convention records: react, alfworld, codeact, chatml, sharegpt."""
  by_name = {json.loads(line)["name"]: line for line in conventions_path.read_text("utf-8").splitlines()}
  names = ["react_run_log_with_harness_lines", "reflexion_alfworld_new_plan", "codeact_smolagents",
           "qwen_agent_fncall_text", "sharegpt_react_in_chat"]
  path = tmp_path / "small.jsonl"
  path.write_text("\n".join(by_name[n] for n in names) + "\n", "utf-8")
  return path


def test_inspect_plain_and_coloured(small_file):
  plain = run("inspect", str(small_file), "--color", "never", "--limit", "0")
  assert "⟨R|Thought 1: The Matterhorn sits on a border" in plain
  assert "⟨A|> go to stoveburner 1⟩" in plain
  assert "format=chatml" in plain and "format=sharegpt" in plain
  assert "5 lines: 5 ok, 0 recovered, 0 flagged, 0 malformed" in plain
  assert "chars: prompt=" in plain and "flagged:" not in plain.split("5 lines")[0]
  coloured = run("inspect", str(small_file), "--color", "always", "--limit", "1")
  assert "\033[33mThought 1:" in coloured and "\033[0m" in coloured
  assert "alfworld" not in coloured


def test_inspect_shows_flagged_records(tmp_path, small_file):
  path = tmp_path / "flagged.jsonl"
  path.write_text(small_file.read_text("utf-8") + json.dumps(
      {"id": "only-user", "messages": [{"role": "user", "content": "hello?"}]}) + "\n", "utf-8")
  strict = run("inspect", str(path), "--color", "never")
  assert "6 lines: 5 ok, 0 recovered, 0 flagged, 1 malformed" in strict
  lenient = run("inspect", str(path), "--color", "never", "--non-strict")
  assert "6 lines: 5 ok, 0 recovered, 1 flagged, 0 malformed" in lenient
  assert "line 6 (only-user) flagged: no agent span" in lenient
  assert "   flagged: no agent span" in lenient


def test_inspect_per_token_view(small_file, tokenizer_json):
  text = run("inspect", str(small_file), "--color", "never", "--tokenizer", tokenizer_json, "--format", "auto")
  assert "tokens" in text
  assert any(line.startswith("REASONING   ") and "│" in line for line in text.splitlines())
  assert "OTHER       <|im_start|>│" in text


def test_stats_table_and_malformed(tmp_path, small_file, tokenizer_json):
  lines = small_file.read_text("utf-8").splitlines()
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(lines + ["{oops", json.dumps({"trajectory": "Thought: a\nAction:\n"})]) + "\n")
  text = run("stats", str(path), "--tokenizer", tokenizer_json)
  assert "tokens" in text.splitlines()[0] and "reasoning" in text.splitlines()[0]
  assert [line.split()[0] for line in text.splitlines()[2:8]] == [
      "alfworld", "chatml", "codeact", "react", "sharegpt", "total"]
  assert "7 lines: 5 ok, 0 recovered, 0 flagged, 2 malformed" in text and "line 6: invalid JSON" in text
  recovered = run("stats", str(path), "--non-strict")
  assert "7 lines: 5 ok, 1 recovered, 0 flagged, 1 malformed" in recovered
  assert "chars" in recovered.splitlines()[0]


def test_inspect_with_chat_template_file(tmp_path, small_file):
  template = tmp_path / "template.jinja"
  template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}")
  text = run("inspect", str(small_file), "--format", "sharegpt", "--color", "never",
             "--chat-template", str(template))
  assert "⟨P|Answer with the search tool." in text
  assert "4 malformed" in text  # the text records are not messages


def test_inspect_with_a_yaml_spec(tmp_path):
  spec = tmp_path / "mylog.yaml"
  spec.write_text("name: mylog\nstart: prompt\nmarkers:\n"
                  "  - {match: 'PLAN>', type: reasoning}\n  - {match: 'DO>', type: action}\n"
                  "  - {match: 'SAW>', type: observation}\nharness: ['## step \\d+']\n")
  data = tmp_path / "log.jsonl"
  data.write_text(json.dumps({"id": "a", "trajectory": "Goal: tidy up\n## step 1\nPLAN> pick the cup\n"
                                                       "DO> take cup\nSAW> you hold the cup\n"}) + "\n")
  text = run("inspect", str(data), "--spec", str(spec), "--color", "never")
  assert "format=mylog" in text and "⟨R|PLAN> pick the cup⟩" in text and "⟨x|## step 1⟩" in text
  assert "1 lines: 1 ok" in text
  bad = tmp_path / "bad.yaml"
  bad.write_text("name: x\nmarkers: [{match: 'A>', type: banana}]\n")
  assert main(["inspect", str(data), "--spec", str(bad)], out=io.StringIO()) == 2
