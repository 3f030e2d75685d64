"""Tests of the multi-hop lookup environment (examples/agent_env/lookup.py)."""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from examples import agent_env  # noqa: E402
from examples.agent_env import lookup  # noqa: E402
from sad_jax.data import trajectories as tj  # noqa: E402
from sad_jax.objective._spans import SpanType  # noqa: E402
from scripted_policy import ScriptedPolicy  # noqa: E402


def _names(task: lookup.Task) -> set[str]:
  return {name for name, _ in task.kb} | {t for _, facts in task.kb for _, t in facts}


def _compositions(task: lookup.Task) -> set[tuple[str, str]]:
  return set(zip(task.relations, task.relations[1:]))


# ------------------------------------------------------------------- tasks


def test_registered_with_the_interface():
  assert "lookup" in agent_env.names()
  env = agent_env.get("lookup")
  assert env is lookup
  assert lookup.generate_tasks("train", 3, 0, **lookup.OPTIONS) == lookup.generate_tasks(
      "train", 3, 0)


def test_tasks_are_deterministic_and_seeded():
  for split in lookup.SPLITS:
    a = lookup.generate_tasks(split, 40, seed=3)
    assert a == lookup.generate_tasks(split, 40, seed=3)
    assert a != lookup.generate_tasks(split, 40, seed=4)
    assert len(set(a)) == 40
    assert {len(t.relations) for t in a} == {2, 3}


def test_options_set_hops_and_knowledge_base_size():
  tasks = lookup.generate_tasks("train", 30, seed=0, min_hops=1, max_hops=4, facts_per_entity=2)
  assert {len(t.relations) for t in tasks} == {1, 2, 3, 4}
  for t in tasks:
    k = len(t.relations)
    assert len(t.kb) == k + 1 + k * (2 - 1)
    assert all(len(facts) == 2 for _, facts in t.kb)


def test_held_out_split_is_disjoint_in_entities_and_compositions():
  train = lookup.generate_tasks("train", 400, seed=0)
  test = lookup.generate_tasks("test", 400, seed=0)
  train_names = set().union(*map(_names, train))
  test_names = set().union(*map(_names, test))
  assert not train_names & test_names
  assert not any(lookup.is_held_out_entity(n) for n in train_names)
  assert all(lookup.is_held_out_entity(n) for n in test_names)
  assert not any(lookup.is_held_out_composition(*c) for t in train for c in _compositions(t))
  assert all(any(lookup.is_held_out_composition(*c) for c in _compositions(t)) for t in test)
  assert not set(train) & set(test)
  # What is held out is a combination: every relation at every hop and every
  # digit at every position occur in both splits.
  for tasks in (train, test):
    for hop in range(3):
      assert {t.relations[hop] for t in tasks if len(t.relations) > hop} == set(lookup.RELATIONS)
  digits = lambda names: {(i, d) for n in names for i, d in enumerate(n)}  # noqa: E731
  assert digits(train_names) == digits(test_names) == digits(lookup.all_entities())


def test_held_out_rules():
  assert lookup.is_held_out_entity("700") and lookup.is_held_out_entity("158")
  assert not lookup.is_held_out_entity("643")
  assert len(lookup.all_entities()) == 900 == len(set(lookup.all_entities()))
  assert sum(map(lookup.is_held_out_entity, lookup.all_entities())) == 126
  held = [(a, b) for a in lookup.RELATIONS for b in lookup.RELATIONS
          if lookup.is_held_out_composition(a, b)]
  assert len(held) == 16


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="dev"), "split must be one of"),
    (dict(min_hops=3, max_hops=2), "min_hops <= max_hops"),
    (dict(split="test", min_hops=1, max_hops=1), "max_hops >= 2"),
    (dict(facts_per_entity=0), "facts_per_entity"),
    (dict(facts_per_entity=9), "facts_per_entity"),
])
def test_generate_tasks_rejects_bad_options(kwargs, match):
  args = dict(split="train", n=2, seed=0) | kwargs
  with pytest.raises(ValueError, match=match):
    lookup.generate_tasks(**args)


def test_task_validates_its_knowledge_base():
  kb = (("101", (("friend", "202"),)), ("202", (("rival", "101"),)))
  task = lookup.Task("101", ("friend", "rival"), kb)
  assert task.chain() == ["101", "202", "101"] and task.answer == "101"
  assert task.question == "Who is the rival of the friend of 101?"
  with pytest.raises(ValueError, match="has no 'mentor' fact"):
    lookup.Task("101", ("friend", "mentor"), kb)
  with pytest.raises(ValueError, match="targets without an entry"):
    lookup.Task("101", ("friend",), (("101", (("friend", "202"),)),))
  with pytest.raises(ValueError, match="relations must be"):
    lookup.Task("101", ("boss",), kb)
  with pytest.raises(ValueError, match="distinct relations"):
    lookup.Task("101", ("friend",), (("101", (("friend", "101"), ("friend", "101"))),))


# ------------------------------------------------------------- the episodes


def test_expert_succeeds_on_every_task():
  tasks = (lookup.generate_tasks("train", 150, seed=1)
           + lookup.generate_tasks("test", 150, seed=1)
           + lookup.generate_tasks("train", 20, seed=1, min_hops=1, max_hops=5,
                                   facts_per_entity=8))
  episodes = agent_env.rollout(agent_env.ExpertPolicy(lookup, tasks), tasks, env=lookup)
  assert all(e.success for e in episodes)
  assert all(e.valid_actions == e.turns == len(e.task.relations) + 1 for e in episodes)
  assert [e.text for e in episodes] == [lookup.expert_trajectory(t) for t in tasks]


def test_each_lookup_needs_the_previous_observation_and_reasoning_names_it():
  for task in lookup.generate_tasks("test", 60, seed=2) + lookup.generate_tasks("train", 60, 2):
    chain = task.chain()
    seg = tj.segment(lookup.expert_trajectory(task), format="chatml")
    observations = seg.texts(SpanType.OBSERVATION)
    actions = seg.texts(SpanType.ACTION)
    reasoning = seg.texts(SpanType.REASONING)
    k = len(task.relations)
    assert len(observations) == k and len(actions) == len(reasoning) == k + 1
    assert actions[-1] == f"The answer is {task.answer}."
    for i in range(k):
      call = json.loads(actions[i][len("<tool_call>"):-len("</tool_call>")])
      assert call == {"name": "lookup", "arguments": {"entity": chain[i]}}
      assert f"{task.relations[i]} {chain[i + 1]}" in observations[i]  # the next hop
      assert chain[i] in reasoning[i]  # the reasoning names what the action looks up
      if i:  # ... which only the previous observation told, not the question
        assert chain[i] in observations[i - 1] and chain[i] not in task.question
    assert task.answer in reasoning[-1]


def test_distractors_defeat_reading_by_position():
  """A policy that follows the first fact of every entry rarely reaches the answer."""
  tasks = lookup.generate_tasks("train", 300, seed=4)

  def first_fact(i, fed):
    if len(fed) == 1:
      return lookup.tool_call_text(tasks[i].subject)
    facts = fed[-1].split("<tool_response>")[1].split("</tool_response>")[0]
    target = facts.split(". ")[1].rstrip(".").split(" ")[1]  # after the entity's own id
    if len(fed) <= len(tasks[i].relations):
      return lookup.tool_call_text(target)
    return f"The answer is {target}."

  episodes = agent_env.rollout(ScriptedPolicy(first_fact), tasks, env=lookup)
  assert all(e.valid_actions == e.turns for e in episodes)  # every lookup is of a real entry
  rate = np.mean([e.success for e in episodes])
  assert 0.0 < rate < 0.3, rate


def test_env_runs_lookups_and_checks_the_answer_itself():
  task = lookup.generate_tasks("train", 1, seed=5, min_hops=2, max_hops=2)[0]
  chain = task.chain()
  distractor = next(n for n, _ in task.kb if n not in chain)
  env = lookup.Env(task)
  assert env.max_turns == lookup.MAX_TURNS
  assert env.reset().endswith("<|im_start|>assistant\n") and task.question in env.text
  r = env.step(lookup.tool_call_text(distractor))  # a wrong but existing entity
  assert r.valid_action and not r.done
  assert lookup.entry_text(distractor, dict(task.kb)[distractor]) in r.observation
  r = env.step(lookup.tool_call_text("1000"))
  assert not r.valid_action and not r.done and "error: no entry for 1000" in r.observation
  r = env.step('<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>')
  assert not r.valid_action and "error" in r.observation
  r = env.step("<tool_call>not json</tool_call>")
  assert not r.valid_action and not r.done
  r = env.step(f"<think>Guess.</think>\nThe answer is {chain[1]}.")  # stopped one hop early
  assert r.done and r.valid_action and not r.success and not env.success
  env.reset()
  assert env.step(f"The answer is {task.answer}.<|im_end|>").success  # the env checks it
  env.reset()
  r = env.step("<think>No idea.</think>")
  assert r.done and not r.success and not r.valid_action
  with pytest.raises(RuntimeError, match="finished episode"):
    env.step(f"The answer is {task.answer}.")


def test_turn_limit():
  task = lookup.generate_tasks("train", 1, seed=6)[0]
  env = lookup.Env(task, max_turns=2)
  env.reset()
  assert not env.step(lookup.tool_call_text(task.subject)).done
  r = env.step(lookup.tool_call_text(task.subject))
  assert r.done and not r.success and env.turns == 2
  with pytest.raises(ValueError, match="max_turns"):
    lookup.Env(task, max_turns=0)


# ----------------------------------------------------------------- lengths


def test_tokenized_lengths_fit_the_example_models():
  """Expert trajectories fit the example's context and turn limits under its tokenizer,
  and stay within 1.35x of the calculator environment's mean length."""
  from configs import agent_distill
  from examples import agent_lm as lm
  from examples.agent_env import calculator as calc
  cfg = agent_distill.get_config("default,env=lookup")
  tok = lm.train_tokenizer([lookup.expert_trajectory(t)
                            for t in lookup.generate_tasks("train", 600, seed=0)])
  tasks = lookup.generate_tasks("test", 300, seed=0)
  lengths = np.asarray([len(lm.encode_trajectory(lookup.expert_trajectory(t), tok).ids)
                        for t in tasks])
  assert lengths.max() < cfg.max_len, lengths.max()
  turns = [len(tok.encode(turn).ids) for t in tasks for turn in lookup.expert_turns(t)]
  assert max(turns) < cfg.max_turn_tokens, max(turns)
  calc_tok = lm.train_tokenizer([calc.expert_trajectory(t)
                                 for t in calc.generate_tasks("train", 600, seed=0)])
  calc_lengths = [len(calc_tok.encode(calc.expert_trajectory(t)).ids)
                  for t in calc.generate_tasks("test", 300, seed=0)]
  assert lengths.mean() < 1.35 * np.mean(calc_lengths), (lengths.mean(), np.mean(calc_lengths))


@pytest.mark.slow
def test_example_pipeline_runs_on_the_lookup_env(tmp_path):
  """The agent distillation example, ``smoke`` preset, with ``env=lookup``."""
  from configs import agent_distill
  from examples import agent_io
  from examples import distill_agent as da
  cfg = agent_distill.get_config("smoke,env=lookup")
  assert cfg.env == "lookup" and dict(cfg.env_options) == lookup.OPTIONS
  summary = da.run(cfg, tmp_path)
  assert set(summary["methods"]) == set(agent_io.csv_list(cfg.methods))
  assert {"sft", "sad", "on_policy_sad"} <= set(summary["methods"])
  for run in summary["runs"]:
    assert run["num_tasks"] == cfg.num_eval_tasks and run["kl/action"] > 0
  records = agent_io.read_jsonl(tmp_path / "distill_data.jsonl")
  assert records and all(lookup.SYSTEM_PROMPT in r["text"] for r in records)


def test_first_failure_names_the_hop_and_kind_of_an_error():
  task = next(t for t in lookup.generate_tasks("train", 50, seed=0) if len(t.relations) == 2)
  chain, entries = task.chain(), task.entries
  text = lookup.expert_trajectory(task)
  assert lookup.first_failure(task, text) is None
  distractor = next(v for r, v in entries[chain[0]].items() if r != task.relations[0])
  gold_read = lookup.reading_text(chain[0], task.relations[0], chain[1])
  misread = str(int(chain[1]) % 900 + 100)  # another id, unlikely a fact: digits
  cases = {
      (1, "distractor", distractor): text.replace(gold_read, gold_read.replace(chain[1],
                                                                               distractor)),
      (1, "relation", chain[1]): text.replace(gold_read, gold_read.replace(
          task.relations[0], next(r for r in lookup.RELATIONS if r != task.relations[0]))),
      (2, "copy", None): text.replace(f"The answer is {chain[2]}.", "The answer is 100."),
      (0, "subject", None): text.replace(f'"entity": "{task.subject}"', '"entity": "100"', 1),
      (2, "format", None): text.replace(f"<think>{chain[1]}. {task.relations[1]}", "<think>It is"),
  }
  if misread not in entries[chain[0]].values():
    cases[(1, "digits", misread)] = text.replace(gold_read, gold_read.replace(chain[1], misread))
  for expected, bad in cases.items():
    assert bad != text and lookup.first_failure(task, bad) == expected, expected
  # A reading failure of a model's episode in the environment.
  episode = lookup.Env(task)
  episode.reset()
  episode.step(lookup.expert_turns(task)[0])
  episode.step(f"<think>{lookup.reading_text(chain[0], task.relations[0], distractor)}"
               f"</think>\nThe answer is {distractor}.")
  assert lookup.first_failure(task, episode.text) == (1, "distractor", distractor)


def test_failure_counts_of_episodes():
  tasks = lookup.generate_tasks("test", 6, seed=0)

  def write(i, fed):  # the expert, but episodes 0 and 1 read the first listed fact at hop 1
    turn = lookup.expert_turns(tasks[i])[len(fed) - 1]
    if i < 2 and len(fed) == 2:
      t = tasks[i]
      first = next(v for r, v in t.entries[t.subject].items())
      read = first if first != t.chain()[1] else "999"
      turn = (f"<think>{lookup.reading_text(t.subject, t.relations[0], read)}</think>\n"
              f"The answer is {read}.")
    return turn

  episodes = agent_env.rollout(ScriptedPolicy(write), tasks, env=lookup)
  out = lookup.failure_counts(episodes)
  assert out["success"] == pytest.approx(4 / 6) and out["num_tasks"] == 6
  assert sum(out["failures"].values()) == 2
  assert set(out["failures"]) <= {"hop 1: distractor", "hop 1: digits"}
  assert out["misread_digits"] and set(out["misread_digits"]) <= {1, 2, 3}
