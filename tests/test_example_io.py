"""The agent example's workdir: atomic files, locks, the stored config (examples/agent_io.py)."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from configs import agent_distill  # noqa: E402
from examples import agent_io as io  # noqa: E402


def test_write_atomic_leaves_no_temporary_file(tmp_path):
  io.write_atomic(tmp_path / "a.txt", "one")
  io.write_atomic(tmp_path / "a.txt", b"two")
  io.write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
  assert (tmp_path / "a.txt").read_text() == "two"
  assert json.loads((tmp_path / "b.json").read_text()) == {"z": 1, "a": [1, 2]}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_read_jsonl_and_csv_list(tmp_path):
  assert io.read_jsonl(tmp_path / "absent.jsonl") == []
  (tmp_path / "m.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
  assert io.read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"a": 2}]
  assert io.csv_list("sft, sad,") == ["sft", "sad"]
  assert io.csv_list("0,1", int) == [0, 1]
  assert io.csv_list(3, int) == [3] and io.csv_list((1, 2), str) == ["1", "2"]


def test_a_held_lock_is_seen_by_another_holder(tmp_path):
  lock = tmp_path / "sub" / "run.lock"
  with io.try_locked(lock) as mine:
    assert mine
    with io.try_locked(lock) as again:  # another open file description: refused
      assert not again
  with io.locked(lock):
    with io.try_locked(lock) as mine:
      assert not mine
  with io.try_locked(lock) as mine:  # released
    assert mine


def test_claim_workdir_stores_the_study_config_without_the_run_selection(tmp_path):
  cfg = agent_distill.get_config("smoke")
  io.claim_workdir(cfg, tmp_path)
  stored = json.loads((tmp_path / "config.json").read_text())
  assert "methods" not in stored and "seeds" not in stored
  assert stored["env"] == "calculator" and stored["teacher"]["steps"] == cfg.teacher.steps
  other = agent_distill.get_config("smoke")
  other.methods, other.seeds = "token_kd", "3,4"  # another process's share of the study
  io.claim_workdir(other, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text()) == stored
  other.student.steps = 7
  other.env_options.max_ops = 4
  with pytest.raises(ValueError, match=r"another config \(env_options.max_ops: 3 -> 4; "
                                       r"student.steps: 20 -> 7\)"):
    io.claim_workdir(other, tmp_path)


def test_claim_workdir_reads_a_config_that_still_holds_the_run_selection(tmp_path):
  cfg = agent_distill.get_config("smoke")
  (tmp_path / "config.json").write_text(cfg.to_json_best_effort())  # methods, seeds inside
  cfg.methods = "sft"
  io.claim_workdir(cfg, tmp_path)
  missing = json.loads((tmp_path / "config.json").read_text())
  del missing["env"]
  (tmp_path / "config.json").write_text(json.dumps(missing))
  with pytest.raises(ValueError, match=r"env: '<absent>' -> 'calculator'"):
    io.claim_workdir(cfg, tmp_path)


def test_run_dir():
  assert io.run_dir(pathlib.Path("/w"), "sad", 2) == pathlib.Path("/w/students/sad-seed2")


@pytest.mark.parametrize("arg,preset,env", [
    (None, "default", "calculator"), ("", "default", "calculator"),
    ("smoke", "smoke", "calculator"), ("study,env=calculator", "study", "calculator"),
    ("env=calculator", "default", "calculator")])
def test_config_argument(arg, preset, env):
  assert agent_distill.parse_arg(arg) == (preset, env)
  cfg = agent_distill.get_config(arg)
  assert cfg.preset == preset and cfg.env == env
  assert dict(cfg.env_options) == {"min_ops": 2, "max_ops": 3} and cfg.max_turns == 6


@pytest.mark.parametrize("arg,message", [
    ("tiny", "unknown preset 'tiny'"), ("smoke,study", "expected PRESET"),
    ("smoke,env=nope", "unknown environment 'nope'")])
def test_config_argument_errors(arg, message):
  with pytest.raises(ValueError, match=message):
    agent_distill.get_config(arg)
