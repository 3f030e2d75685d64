"""Tests of the end-to-end agent distillation example (examples/)."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples.agent_env import calculator as calc  # noqa: E402
from examples.agent_env import loop as rollout_lib  # noqa: E402
from sad_jax.data import trajectories as tj
from sad_jax.objective._spans import SpanType  # noqa: E402
from scripted_policy import ScriptedPolicy  # noqa: E402
from interrupt import interrupt_at  # noqa: E402


# ---------------------------------------------------------------- environment


def test_tasks_are_deterministic_and_seeded():
  a = calc.generate_tasks("train", 50, seed=3)
  assert a == calc.generate_tasks("train", 50, seed=3)
  assert a != calc.generate_tasks("train", 50, seed=4)
  assert len(set(a)) == 50


def test_held_out_split_has_unseen_numbers():
  train = calc.generate_tasks("train", 500, seed=0)
  test = calc.generate_tasks("test", 500, seed=0)
  assert not any(calc.is_held_out_number(x) for t in train for x in t.operands)
  assert all(any(calc.is_held_out_number(x) for x in t.operands) for t in test)
  assert not set(train) & set(test)


def test_expert_succeeds_on_every_task():
  tasks = calc.generate_tasks("train", 200, seed=1) + calc.generate_tasks("test", 200, seed=1)
  episodes = rollout_lib.rollout(rollout_lib.ExpertPolicy(calc, tasks), tasks, env=calc)
  assert all(e.success for e in episodes)
  assert all(e.valid_actions == e.turns == len(e.task.ops) + 1 for e in episodes)
  assert [e.text for e in episodes] == [calc.expert_trajectory(t) for t in tasks]


def test_expert_trajectory_segments_into_reasoning_actions_observations():
  task = calc.Task((12, 30, 4), ("+", "*"))
  seg = tj.segment(calc.expert_trajectory(task), format="chatml")
  assert seg.texts(SpanType.OBSERVATION) == ["<tool_response>42</tool_response>",
                                             "<tool_response>168</tool_response>"]
  actions = seg.texts(SpanType.ACTION)
  assert json.loads(actions[1][len("<tool_call>"):-len("</tool_call>")]) == {
      "name": "calculator", "arguments": {"expression": "42 * 4"}}
  assert actions[-1] == "The answer is 168."
  assert len(seg.texts(SpanType.REASONING)) == 3


def test_env_executes_tool_calls_and_checks_the_answer_itself():
  task = calc.Task((12, 30), ("+",))
  env = calc.CalculatorEnv(task, max_turns=4)
  assert env.reset().endswith("<|im_start|>assistant\n")
  r = env.step(calc.tool_call_text("(12 + 30) * 2"))  # any valid expression is run
  assert r.valid_action and not r.done and "<tool_response>84</tool_response>" in r.observation
  r = env.step('<tool_call>{"name": "calc"}</tool_call>')
  assert not r.valid_action and "error" in r.observation
  r = env.step("<tool_call>not json</tool_call>")
  assert not r.valid_action and not r.done
  r = env.step("The answer is 43.")  # wrong answer
  assert r.done and r.valid_action and not r.success
  env.reset()
  assert env.step("<think>easy</think>\nThe answer is 42.<|im_end|>").success


def test_env_turn_limit_and_turn_without_action():
  env = calc.CalculatorEnv(calc.Task((2, 3), ("*",)), max_turns=2)
  env.reset()
  assert not env.step(calc.tool_call_text("2 * 3")).done
  r = env.step(calc.tool_call_text("2 * 3"))
  assert r.done and not r.success
  env.reset()
  r = env.step("<think>hmm</think>")
  assert r.done and not r.success and not r.valid_action
  with pytest.raises(RuntimeError, match="finished episode"):
    env.step("The answer is 6.")


@pytest.mark.parametrize("expr,value", [("2 + 3 * 4", 14), ("-(5 - 7) * 3", 6), ("10 - -2", 12)])
def test_calculator_evaluates(expr, value):
  assert calc.evaluate_expression(expr) == value


@pytest.mark.parametrize(
    "expr", ["__import__('os')", "7 / 2", "1.5 + 1", "x + 1", "99999999 * 99999999"])
def test_calculator_rejects(expr):
  with pytest.raises(ValueError):
    calc.evaluate_expression(expr)


def test_rollout_loop_with_a_scripted_policy():
  tasks = [calc.Task((2, 3), ("*",)), calc.Task((4, 5, 6), ("+", "-"))]
  scripts = [[calc.tool_call_text("2 * 3"), "The answer is 6."], ["oops", "never used"]]
  policy = ScriptedPolicy(lambda i, fed: scripts[i][len(fed) - 1])
  eps = rollout_lib.rollout(policy, tasks, env=calc, max_turns=5)
  assert [e.success for e in eps] == [True, False]
  assert [e.turns for e in eps] == [2, 1]
  assert [e.valid_actions for e in eps] == [2, 0]
  assert policy.fed[0][0] == calc.prompt_text(tasks[0])
  assert policy.fed[0][1] == calc.observation_text("6")
  assert eps[0].text == (calc.prompt_text(tasks[0]) + calc.tool_call_text("2 * 3") + "<|im_end|>"
                         + calc.observation_text("6") + "The answer is 6.<|im_end|>")


# ------------------------------------------------------------ models, pipeline


def _tiny_lm(vocab_size, seed=0, positions="learned"):
  from examples import agent_lm as lm
  return lm.create_model(lm.ModelConfig(vocab_size=vocab_size, d_model=16, num_layers=1,
                                        num_heads=2, d_ff=32, max_len=256,
                                        positions=positions), seed)


@pytest.fixture(scope="module")
def tokenizer():
  from examples import agent_lm as lm
  tasks = calc.generate_tasks("train", 300, seed=0)
  return lm.train_tokenizer([calc.expert_trajectory(t) for t in tasks])


def test_tokenizer_round_trip_and_agent_span_ids(tokenizer):
  from examples import agent_lm as lm
  task = calc.generate_tasks("test", 1, seed=5)[0]
  text = calc.expert_trajectory(task)
  enc = lm.encode_trajectory(text, tokenizer)
  assert tokenizer.decode(enc.ids.tolist(), skip_special_tokens=False) == text
  im_end = tokenizer.token_to_id("<|im_end|>")
  ends = enc.span_ids[enc.ids == im_end]
  # Closing an assistant turn is an action; closing system/user/tool turns is glue.
  assert list(ends).count(SpanType.ACTION) == len(task.ops) + 1
  assert set(ends) == {SpanType.ACTION, SpanType.OTHER}
  # Unseen numbers are no unseen tokens: one token per digit.
  pieces = [tokenizer.id_to_token(int(i)) for i in enc.ids]
  digits = [p for p in pieces if p.isdigit()]
  assert all(len(d) == 1 for d in digits)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_kv_cache_decode_matches_full_forward(tokenizer, positions):
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from examples import agent_lm as lm
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size(), positions=positions)
  ids = lm.encode_trajectory(calc.expert_trajectory(calc.Task((3, 4), ("+",))), tokenizer).ids
  tokens = jnp.asarray(np.stack([ids, ids[::-1]]))
  full = lm.make_apply(graphdef)(params, tokens)
  model = nnx.merge(graphdef, params)
  cache = model.init_cache(2)
  steps = []
  for t in range(tokens.shape[1]):
    logits, cache = model.decode(tokens[:, t], jnp.full((2,), t), cache)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)


@pytest.mark.parametrize("t", [1, 7, pytest.param(50, marks=pytest.mark.slow)])
def test_query_blocks_change_no_logit(t):
  import dataclasses
  import jax
  import numpy as np
  from flax import nnx
  from examples import agent_lm as lm
  cfg = lm.ModelConfig(vocab_size=40, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                       max_len=64, query_blocks=1)
  graphdef, params = lm.create_model(cfg, seed=3)
  tokens = jax.random.randint(jax.random.key(t), (3, t), 0, 40)
  one = lm.make_apply(graphdef)(params, tokens)
  for blocks in (2, 4, 64):
    blocked = nnx.merge(*lm.create_model(dataclasses.replace(cfg, query_blocks=blocks), 3))
    nnx.update(blocked, params)
    np.testing.assert_allclose(blocked(tokens), one, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="query_blocks=0"):
    dataclasses.replace(cfg, query_blocks=0)


def test_rotary_scores_depend_on_the_offset_only():
  import jax
  import numpy as np
  from examples import agent_lm as lm
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 8))
  def score(i, j):
    return float((lm.rotate(q, np.array([i])) * lm.rotate(k, np.array([j]))).sum())
  assert abs(score(5, 2) - score(40, 37)) < 1e-4
  assert abs(score(5, 2) - score(5, 3)) > 1e-3
  np.testing.assert_allclose(lm.rotate(q, np.array([0])), q)
  with pytest.raises(ValueError, match="positions='alibi'"):
    lm.ModelConfig(vocab_size=8, positions="alibi")
  with pytest.raises(ValueError, match="even head width"):
    lm.ModelConfig(vocab_size=8, d_model=6, num_heads=2, positions="rope")


def test_model_policy_runs_episodes_in_a_batch(tokenizer):
  from examples import agent_lm as lm
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size())
  tasks = calc.generate_tasks("test", 5, seed=0)
  policy = lm.ModelPolicy(graphdef, params, tokenizer, batch_size=3, max_turn_tokens=8)
  episodes = lm.evaluate_policy(lambda: policy, tasks, env=calc, batch_size=3, max_turns=3)
  assert [e.task for e in episodes] == tasks
  for e in episodes:
    assert e.text.startswith(calc.prompt_text(e.task)) and 1 <= e.turns <= 3
  assert policy.tokens_generated > 0


def test_interrupted_training_resumes_to_the_same_params(tmp_path, tokenizer):
  import jax
  import ml_collections
  import numpy as np
  from examples import agent_data, agent_io, agent_train
  from examples import agent_lm as lm
  cfg = ml_collections.ConfigDict(dict(log_every=2, checkpoint_every=3))
  examples = [lm.encode_trajectory(calc.expert_trajectory(t), tokenizer)
              for t in calc.generate_tasks("train", 16, seed=0)]
  batches = agent_data.Batches(examples, [208], batch_size=4, seed=0)
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size())
  run_cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, steps=8))
  tx = agent_train.optimizer(run_cfg)

  def fresh():
    return agent_train.make_method_step("sft", cfg, lm.make_apply(graphdef), params, tx, 0)

  no_eval = lambda p: {}
  state, step = fresh()
  interrupting_step = interrupt_at(step, 6)

  run = agent_train.run_training
  with pytest.raises(KeyboardInterrupt):
    run("t", tmp_path / "a", state, interrupting_step, batches, 8, cfg, 4, no_eval)
  assert sorted(p.name for p in (tmp_path / "a" / "ckpt").iterdir()) == ["3", "5"]
  resumed = run("t", tmp_path / "a", fresh()[0], step, batches, 8, cfg, 4, no_eval)
  straight = run("t", tmp_path / "b", fresh()[0], step, batches, 8, cfg, 4, no_eval)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, straight.params)
  log = agent_io.read_jsonl(tmp_path / "a" / "metrics.jsonl")
  assert [(r["kind"], r["step"]) for r in log] == [
      ("train", 2), ("train", 4), ("eval", 4), ("train", 6), ("train", 8), ("eval", 8)]


def test_offline_teacher_logits_equal_the_online_teacher_on_every_batch(tokenizer):
  import jax.numpy as jnp
  import numpy as np
  from examples import agent_data
  from examples import agent_lm as lm
  examples = [lm.encode_trajectory(calc.expert_trajectory(t), tokenizer)
              for t in calc.generate_tasks("train", 12, seed=1)]
  batches = agent_data.Batches(examples, [150, 208], batch_size=5, seed=0)
  graphdef, params = _tiny_lm(tokenizer.get_vocab_size())
  apply = lm.make_apply(graphdef)
  batches.attach_teacher(agent_data.teacher_logits(apply, params, batches, chunk=4))
  assert batches.teacher_logits.dtype == np.float16
  for step in range(3):
    b = batches.get(step)
    online = np.asarray(apply(params, jnp.asarray(b["tokens"])))
    valid = b["tokens"] != 0
    assert b["teacher"].shape == online.shape and b["teacher"].dtype == np.float32
    # stored in float16: relative rounding <= 2**-11
    np.testing.assert_allclose(b["teacher"][valid], online[valid], rtol=2.0 ** -11, atol=1e-4)
    assert not b["teacher"][~valid].any()
  with pytest.raises(ValueError, match="2 teacher logit rows for 12 examples"):
    batches.attach_teacher(batches.teacher_logits[:2])
  with pytest.raises(ValueError, match="teacher logits of length 150, the largest bucket is 208"):
    batches.attach_teacher(batches.teacher_logits[:, :150])


@pytest.mark.slow  # ~4-6 min: the pipeline twice (on-policy runs included), a second share
def test_smoke_preset_end_to_end_and_rerun_reuses_everything(tmp_path):
  from examples import agent_io
  from examples import distill_agent as da
  from configs import agent_distill
  cfg = agent_distill.get_config("smoke")
  summary = da.run(cfg, tmp_path)
  for name in ("summary.json", "summary.md", "tokenizer.json", "distill_data.jsonl",
               "loss_per_span.png", "success_curves.png", "success.png",
               "teacher/result.json", "teacher/metrics.jsonl"):
    assert (tmp_path / name).is_file(), name
  on_policy = {"on_policy_kd", "on_policy_sad", "on_policy_sad_turns"}
  assert set(summary["methods"]) == {"sft", "sad"} | on_policy
  assert summary["teacher"]["params"] >= 4 * summary["student_params"]
  for run in summary["runs"]:
    assert 0.0 <= run["success"] <= 1.0 and run["num_tasks"] == cfg.num_eval_tasks
    assert run["kl/reasoning"] > 0 and run["kl/action"] > 0
    assert run["kl_train/reasoning"] > 0 and run["kl_train/action"] > 0
  sad_log = agent_io.read_jsonl(tmp_path / "students" / "sad-seed0" / "metrics.jsonl")
  assert any("loss/reasoning" in r and "loss/action" in r for r in sad_log if r["kind"] == "train")
  # The on-policy students: one off-policy init run for the seed, shared; each run
  # trained the remaining steps on its own pools, logged with the pool's statistics.
  assert [p.name for p in (tmp_path / "on_policy_init").iterdir() if p.is_dir()] == [
      "token_kd-seed0"]
  for run in (r for r in summary["runs"] if r["method"] in on_policy):
    assert run["init_steps"] == cfg.on_policy.init_steps and run["init_method"] == "token_kd"
    assert run["train_steps"] == cfg.student.steps and run["pools"] >= 1
    assert 0.0 <= run["on_policy_success"] <= 1.0 and run["rollout_seconds"] > 0
    run_dir = tmp_path / "students" / f"{run['method']}-seed0"
    assert len(list((run_dir / "pools").glob("pool-*.npz"))) == run["pools"]
    log = agent_io.read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in log if r["kind"] == "train"]
    assert train[0]["step"] == cfg.on_policy.init_steps + cfg.log_every
    assert all("on_policy/success" in r and "on_policy/rollout_seconds" in r
               and "divergence/action" in r for r in train)
  table = (tmp_path / "summary.md").read_text()
  assert "| sad | 1 |" in table and "| sft | 1 |" in table
  assert all(f"| {m} | 1 |" in table for m in on_policy)
  assert "| success | seed 0 |" in table and "− token_kd" not in table  # no KD run to pair
  # A second invocation finds every phase done and only rewrites the report.
  mtimes = {p: p.stat().st_mtime for p in tmp_path.rglob("result.json")}
  again = da.run(cfg, tmp_path)
  assert again["runs"] == summary["runs"]
  assert {p: p.stat().st_mtime for p in tmp_path.rglob("result.json")} == mtimes
  # Another share of the study (another method list) in the same workdir: its
  # report is the union of every finished run; config.json is not rewritten.
  stored = (tmp_path / "config.json").read_text()
  share = agent_distill.get_config("smoke")
  share.methods = "token_kd"
  union = da.run(share, tmp_path)
  assert list(union["methods"]) == ["token_kd", "on_policy_kd", "on_policy_sad",
                                    "on_policy_sad_turns", "sad", "sft"]  # the others by name
  by_method = lambda runs: sorted(runs, key=lambda r: r["method"])
  assert by_method(r for r in union["runs"] if r["method"] != "token_kd") == by_method(
      summary["runs"])
  assert (tmp_path / "config.json").read_text() == stored
  assert "− token_kd, per seed" in (tmp_path / "summary.md").read_text()
  # A changed config (but for the run selection) is refused: its results would mix.
  changed = agent_distill.get_config("smoke")
  changed.teacher.steps += 1
  with pytest.raises(ValueError, match=r"teacher.steps: 20 -> 21"):
    da.run(changed, tmp_path)


@pytest.mark.slow
def test_command_line_with_config_overrides(tmp_path):
  import subprocess
  cmd = [sys.executable, str(ROOT / "examples" / "distill_agent.py"),
         f"--config={ROOT / 'configs' / 'agent_distill.py'}:smoke", f"--workdir={tmp_path}",
         "--config.methods=sft,token_kd", "--config.student.steps=10"]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1200)
  assert "| token_kd | 1 |" in out.stdout
  sft_row = next(l for l in out.stdout.splitlines() if l.startswith("| sft | ") and "±" not in l)
  assert sft_row.count("|") == 4 and ("+" in sft_row or "-" in sft_row)  # seed 0, − token_kd
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["student_steps"] == 10 and set(summary["methods"]) == {"sft", "token_kd"}


@pytest.mark.slow
def test_two_processes_split_one_study_in_one_workdir(tmp_path):
  import subprocess
  from examples import agent_io

  def command(methods):
    return [sys.executable, str(ROOT / "examples" / "distill_agent.py"),
            f"--config={ROOT / 'configs' / 'agent_distill.py'}:smoke", f"--workdir={tmp_path}",
            f"--config.methods={methods}", "--config.student.steps=10"]

  procs = [subprocess.Popen(command(m), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for m in ("sft,token_kd", "sad,token_kd")]
  outs = [p.communicate(timeout=1200) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  # The shared phases ran once: one teacher log with each step once.
  steps = [r["step"] for r in agent_io.read_jsonl(tmp_path / "teacher" / "metrics.jsonl")
           if r["kind"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 20
  # The last process to finish wrote the union of all runs.
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert sorted(summary["methods"]) == ["sad", "sft", "token_kd"]
  assert sorted((r["method"], r["seed"]) for r in summary["runs"]) == [
      ("sad", 0), ("sft", 0), ("token_kd", 0)]
  assert not list(tmp_path.rglob("*.tmp"))
