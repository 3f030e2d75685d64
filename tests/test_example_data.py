"""The agent example's data: tasks, tokenizer, teacher rollouts, batches (examples/agent_data.py)."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import examples.agent_env as agent_env  # noqa: E402
from configs import agent_distill  # noqa: E402
from examples import agent_data  # noqa: E402
from examples.agent_env import calculator as calc  # noqa: E402

CALC = agent_env.get("calculator")


def _cfg():
  cfg = agent_distill.get_config("smoke")
  cfg.num_train_tasks, cfg.num_distill_tasks, cfg.num_eval_tasks = 60, 8, 12
  cfg.num_curve_tasks, cfg.num_kl_trajectories = 4, 5
  return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return agent_data.prepare_data(_cfg(), tmp_path_factory.mktemp("w"), CALC)


def test_env_options_must_be_the_environments():
  cfg = _cfg()
  assert agent_data.env_options(cfg, CALC) == {"min_ops": 2, "max_ops": 3}
  cfg.env_options = {"hops": 2}
  with pytest.raises(ValueError, match=r"config.env_options has \['hops'\], environment "
                                       r"'calculator' takes \['max_ops', 'min_ops'\]"):
    agent_data.env_options(cfg, CALC)


def test_tasks_of_the_config(data):
  cfg = _cfg()
  assert data.train_tasks == calc.generate_tasks("train", 60, cfg.data_seed)
  assert data.distill_tasks == calc.generate_tasks("train", 8, cfg.data_seed + 1000)
  assert data.eval_tasks == calc.generate_tasks("test", 12, cfg.data_seed)
  assert data.curve_tasks == data.eval_tasks[:4] and data.env is CALC
  assert len(data.teacher_examples) == 60
  assert data.kl_batch["tokens"].shape == (5, 208) == data.kl_batch["span_ids"].shape


def test_the_tokenizer_is_trained_once_per_workdir(tmp_path):
  cfg = _cfg()
  first = agent_data.prepare_data(cfg, tmp_path, CALC)
  stamp = (tmp_path / "tokenizer.json").stat().st_mtime_ns
  cfg.num_train_tasks = 30  # another corpus: the stored tokenizer is read, not retrained
  again = agent_data.prepare_data(cfg, tmp_path, CALC)
  assert (tmp_path / "tokenizer.json").stat().st_mtime_ns == stamp
  assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()


def _episodes(tasks, solved):
  return [agent_env.Episode(t, calc.expert_trajectory(t), i in solved, len(t.ops) + 1,
                            len(t.ops) + 1) for i, t in enumerate(tasks)]


def test_distill_examples_are_the_solved_rollouts_made_once(tmp_path, data):
  cfg = _cfg()
  cfg.keep_failed_trajectories = False
  calls = []

  def rollouts(tasks):
    calls.append(len(tasks))
    return _episodes(tasks, solved={0, 2, 3})

  examples, stats = agent_data.distill_examples(cfg, tmp_path, data, rollouts)
  assert calls == [8] and stats == {"teacher_train_success": 3 / 8, "trajectories": 3}
  solved = [calc.expert_trajectory(data.distill_tasks[i]) for i in (0, 2, 3)]
  assert [data.tokenizer.decode(e.ids.tolist(), skip_special_tokens=False)
          for e in examples] == solved
  cfg.keep_failed_trajectories = True
  examples, stats = agent_data.distill_examples(cfg, tmp_path, data, rollouts)
  assert calls == [8] and len(examples) == 8 and stats["trajectories"] == 8


def test_distill_examples_refuse_a_teacher_that_solved_nothing(tmp_path, data):
  cfg = _cfg()
  cfg.keep_failed_trajectories = False
  with pytest.raises(RuntimeError, match="solved none of the 8 training tasks"):
    agent_data.distill_examples(cfg, tmp_path, data, lambda tasks: _episodes(tasks, set()))


def test_batches_are_a_function_of_seed_and_step(data):
  batches = agent_data.Batches(data.teacher_examples, [150, 208], batch_size=4, seed=3)
  lengths = [len(e.ids) for e in data.teacher_examples]
  for bucket, members in batches.members.items():
    for i in members:
      assert lengths[i] <= bucket and (bucket == 150 or lengths[i] > 150)
  same = agent_data.Batches(data.teacher_examples, [208, 150], batch_size=4, seed=3)
  for step in range(4):
    a, b = batches.get(step), same.get(step)
    assert a["tokens"].shape[0] == 4 and a["tokens"].shape[1] in (150, 208)
    for k in ("tokens", "labels", "span_ids"):
      np.testing.assert_array_equal(a[k], b[k])
  other = agent_data.Batches(data.teacher_examples, [150, 208], batch_size=4, seed=4)
  assert any(not np.array_equal(batches.get(s)["tokens"], other.get(s)["tokens"])
             for s in range(4))
  with pytest.raises(ValueError, match="no training examples"):
    agent_data.Batches([], [208], batch_size=4, seed=0)
