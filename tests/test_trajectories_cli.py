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
def tokenizer_json(shared_dir, tmp_path_factory):
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=["<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  texts = [r.segmented.text for r in tj.read_jsonl(shared_dir / "trajectories" / "samples.jsonl")]
  tok.train_from_iterator(texts, trainer)
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def test_inspect_plain_and_coloured(shared_dir):
  path = str(shared_dir / "trajectories" / "samples.jsonl")
  plain = run("inspect", path, "--color", "never", "--limit", "0")
  assert "⟨R|Thought 1: The 1992 Summer Olympics" in plain
  assert "⟨A|> go to countertop 1⟩" in plain
  assert "format=chatml" in plain and "5 lines: 5 ok, 0 malformed" in plain
  coloured = run("inspect", path, "--color", "always", "--limit", "1")
  assert "\033[33mThought 1:" in coloured and "\033[0m" in coloured
  assert "alfworld" not in coloured


def test_inspect_per_token_view(shared_dir, tokenizer_json):
  path = str(shared_dir / "trajectories" / "samples.jsonl")
  text = run("inspect", path, "--color", "never", "--tokenizer", tokenizer_json, "--format", "auto")
  assert "tokens" in text
  assert any(line.startswith("REASONING   ") and "│" in line for line in text.splitlines())
  assert "OTHER       <|im_start|>│" in text


def test_stats_table_and_malformed(tmp_path, shared_dir, tokenizer_json):
  lines = (shared_dir / "trajectories" / "samples.jsonl").read_text().splitlines()
  path = tmp_path / "mixed.jsonl"
  path.write_text("\n".join(lines + ["{oops", json.dumps({"trajectory": "Thought: a\nAction:\n"})]) + "\n")
  text = run("stats", str(path), "--tokenizer", tokenizer_json)
  assert "tokens" in text.splitlines()[0] and "reasoning" in text.splitlines()[0]
  assert [line.split()[0] for line in text.splitlines()[2:8]] == [
      "alfworld", "chat", "chatml", "codeact", "react", "total"]
  assert "7 lines: 5 ok, 2 malformed" in text and "line 6: invalid JSON" in text
  recovered = run("stats", str(path), "--non-strict")
  assert "7 lines: 6 ok, 1 malformed" in recovered and "chars" in recovered.splitlines()[0]


def test_inspect_with_chat_template_file(tmp_path, shared_dir):
  template = tmp_path / "template.jinja"
  template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}")
  text = run("inspect", str(shared_dir / "trajectories" / "samples.jsonl"), "--format", "chat",
             "--color", "never", "--chat-template", str(template))
  assert "⟨P|How many days are there between" in text
  assert "4 malformed" in text  # the text records are not messages
