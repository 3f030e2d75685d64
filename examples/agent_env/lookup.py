"""A multi-hop question environment over a small knowledge base, with a ``lookup`` tool.

A task asks a bridge question in the style of HotPotQA (Yang et al. 2018,
"HotpotQA: A Dataset for Diverse, Explainable Multi-hop Question Answering"),
such as ``Who is the friend of the partner of 643?``. The agent has one tool,
``lookup``, that returns the knowledge-base entry of one entity: its id, then
its facts, one ``relation target.`` sentence each (:func:`entry_text`). To answer, it looks up the subject, reads the fact
of the first relation, whose target is the entity to look up next, and so on:
the entity each action needs is only found in the previous observation, and each
entry also holds facts of other relations (distractors) that lead elsewhere. It
ends with ``The answer is ID.``.

Every task carries its own knowledge base (HotPotQA's distractor setting: the
gold entities plus distractor entities, all with entries), generated afresh, so
no fact can be memorized across tasks; the observations must be read. Relations
are plain labels: the generator obeys no real-world constraint between them.

Entities are three-digit ids (``100`` to ``999``): the example's tokenizer
writes digits one per token and never merges them with their neighbours, so an id
is the same tokens wherever it appears, and copying it from an observation into
the reasoning and from the reasoning into a tool call is token-for-token copying
(as with the calculator's numbers). Written-out names (``Zelu``) would merge with
the characters around them into different tokens in each place. How well the
example's teacher learns this environment is measured in ``docs/lookup_env.md``.

Everything is ChatML in the layout of :mod:`examples.agent_env.base` (``train``
task 0 of ``generate_tasks("train", 50, seed=0)`` with two hops)::

  <|im_start|>system
  Answer with the lookup tool, one entity per call.<|im_end|>
  <|im_start|>user
  Who is the friend of the partner of 643?<|im_end|>
  <|im_start|>assistant
  <think>First, the partner of 643.</think>
  <tool_call>{"name": "lookup", "arguments": {"entity": "643"}}</tool_call><|im_end|>
  <|im_start|>user
  <tool_response>643. mentor 656. partner 955. parent 945.</tool_response><|im_end|>
  <|im_start|>assistant
  <think>643. partner 955. Next, the friend of 955.</think>
  <tool_call>{"name": "lookup", "arguments": {"entity": "955"}}</tool_call><|im_end|>
  <|im_start|>user
  <tool_response>955. friend 945. student 643. sibling 656.</tool_response><|im_end|>
  <|im_start|>assistant
  <think>955. friend 945.</think>
  The answer is 945.<|im_end|>

The expert's reasoning carries what its next action needs: the fact it picked
out of the observation, quoted as the entry writes it (``643. partner 955.``),
and the relation to follow next; the action copies the id from it.

Splits. An id whose digit sum is a multiple of 7 (``700``, ``158``; 126 of the
900 ids) is a *held-out entity*. A pair of consecutive relations (``relation``
then ``next relation``, indices ``i``, ``j`` in :data:`RELATIONS`) with
``(i + j) % 4 == 0`` is a *held-out composition* (16 of the 64 pairs). A
``train`` task has no held-out entity anywhere in its knowledge base and no
held-out composition in its question; a ``test`` task has only held-out
entities and at least one held-out composition. Every digit at every position
and every relation at every hop occur in both splits.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import re

import numpy as np

from examples.agent_env import base
from examples.agent_env.base import IM_END

SYSTEM_PROMPT = "Answer with the lookup tool, one entity per call."
RELATIONS = ("friend", "rival", "mentor", "partner", "parent", "student", "neighbor", "sibling")
SPLITS = ("train", "test")
OPTIONS = {"min_hops": 2, "max_hops": 3, "facts_per_entity": 3}  # generate_tasks' options
MAX_TURNS = 6  # 3 lookups + the answer need 4
POSITIONS = "rope"  # copying the id after the matched relation is a relative lookup
STUDY_TEACHER_STEPS = 6000  # 99.8% held-out; a 3000-step schedule: 39% (docs/lookup_env.md)
_ANSWER = re.compile(r"The answer is (\d+)\.")


def is_held_out_entity(name: str) -> bool:
  """Whether an entity id is reserved for the ``test`` split (its digit sum is a multiple of 7)."""
  return sum(int(d) for d in name) % 7 == 0


def is_held_out_composition(relation: str, next_relation: str) -> bool:
  """Whether following ``next_relation`` right after ``relation`` is reserved for ``test``."""
  return (RELATIONS.index(relation) + RELATIONS.index(next_relation)) % 4 == 0


def _is_held_out_path(relations: tuple[str, ...]) -> bool:
  return any(is_held_out_composition(a, b) for a, b in zip(relations, relations[1:]))


def all_entities() -> tuple[str, ...]:
  """Every entity id, sorted: ``"100"`` to ``"999"``."""
  return tuple(str(i) for i in range(100, 1000))


@functools.cache
def _split_entities(split: str) -> np.ndarray:
  held = split == "test"
  return np.asarray([n for n in all_entities() if is_held_out_entity(n) == held])


@dataclasses.dataclass(frozen=True)
class Task:
  """One multi-hop question and its knowledge base.

  Attributes:
    subject: the entity the question starts from.
    relations: the ``k >= 1`` relations to follow, in hop order: ``relations[0]``
      of the subject first. ``("rival", "mentor")`` asks "the mentor of the
      rival of the subject".
    kb: the knowledge base, ``((name, ((relation, target), ...)), ...)``: one
      entry per entity, its facts in the order the tool shows them. Names are
      unique, an entry's relations are distinct and every target has an entry.
  """
  subject: str
  relations: tuple[str, ...]
  kb: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

  def __post_init__(self):
    if not self.relations or any(r not in RELATIONS for r in self.relations):
      raise ValueError(f"relations must be a non-empty tuple of {RELATIONS}, "
                       f"got {self.relations}")
    names = [name for name, _ in self.kb]
    if len(set(names)) != len(names):
      raise ValueError(f"kb names must be unique, got {names}")
    for name, facts in self.kb:
      rels = [r for r, _ in facts]
      if len(set(rels)) != len(rels) or any(r not in RELATIONS for r in rels):
        raise ValueError(f"entry {name!r} must have distinct relations of {RELATIONS}, "
                         f"got {rels}")
      missing = [t for _, t in facts if t not in names]
      if missing:
        raise ValueError(f"entry {name!r} has targets without an entry: {missing}")
    self.chain()  # every hop resolves

  @property
  def entries(self) -> dict[str, dict[str, str]]:
    """``{name: {relation: target}}``."""
    return {name: dict(facts) for name, facts in self.kb}

  def chain(self) -> list[str]:
    """The entities the question walks through: subject, each hop's target; the last is
    the answer.

    Raises:
      ValueError: the subject has no entry, or an entity on the way lacks the relation.
    """
    entries = self.entries
    out = [self.subject]
    for relation in self.relations:
      entry = entries.get(out[-1])
      if entry is None or relation not in entry:
        raise ValueError(f"task does not resolve: {out[-1]!r} has no {relation!r} fact "
                         f"(subject {self.subject!r}, relations {self.relations})")
      out.append(entry[relation])
    return out

  @property
  def answer(self) -> str:
    return self.chain()[-1]

  @property
  def question(self) -> str:
    """``Who is the friend of the partner of 643?`` (the last hop's relation first)."""
    return "Who is " + "".join(f"the {r} of " for r in reversed(self.relations)) + \
        f"{self.subject}?"


def _make_task(rng: np.random.Generator, names: np.ndarray, relations: tuple[str, ...],
               facts_per_entity: int) -> Task:
  """A task over ``relations``: gold chain plus ``k * (facts_per_entity - 1)`` distractors."""
  k = len(relations)
  num = (k + 1) + k * (facts_per_entity - 1)
  picked = [str(n) for n in rng.choice(names, size=num, replace=False)]
  chain = picked[:k + 1]
  entries = []
  for i, name in enumerate(picked):
    if i < k:  # a gold hop: its relation points to the next chain entity
      others = [r for r in RELATIONS if r != relations[i]]
      rels = [relations[i]] + [str(r) for r in rng.choice(others, facts_per_entity - 1,
                                                          replace=False)]
      forbidden = {name, chain[i + 1]}
      targets = [chain[i + 1]]
    else:  # the answer or a distractor
      rels = [str(r) for r in rng.choice(RELATIONS, facts_per_entity, replace=False)]
      forbidden = {name}
      targets = []
    pool = [n for n in picked if n not in forbidden]
    targets += [str(t) for t in rng.choice(pool, facts_per_entity - len(targets),
                                           replace=False)]
    order = rng.permutation(facts_per_entity)
    entries.append((name, tuple((rels[j], targets[j]) for j in order)))
  order = rng.permutation(num)
  return Task(chain[0], relations, tuple(entries[j] for j in order))


def generate_tasks(split: str, n: int, seed: int, *, min_hops: int = OPTIONS["min_hops"],
                   max_hops: int = OPTIONS["max_hops"],
                   facts_per_entity: int = OPTIONS["facts_per_entity"]) -> list[Task]:
  """``n`` distinct tasks of a split, a deterministic function of the arguments.

  Args:
    split: ``"train"`` (no held-out entity or composition) or ``"test"`` (held-out
      entities only, at least one held-out composition; needs ``max_hops >= 2``).
    n: number of tasks.
    seed: numpy seed; the same arguments always give the same list.
    min_hops, max_hops: range of the number of lookups a task needs.
    facts_per_entity: facts per entry (one gold fact per hop, the rest distractors);
      ``k`` hops make a knowledge base of ``k + 1 + k * (facts_per_entity - 1)`` entities.

  Returns:
    ``n`` distinct :class:`Task` s.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 1 <= min_hops <= max_hops:
    raise ValueError(f"need 1 <= min_hops <= max_hops, got {min_hops}, {max_hops}")
  if split == "test" and max_hops < 2:
    raise ValueError(f"test tasks hold a held-out composition of two relations: need "
                     f"max_hops >= 2, got {max_hops}")
  if not 1 <= facts_per_entity <= len(RELATIONS):
    raise ValueError(f"facts_per_entity must be in [1, {len(RELATIONS)}], "
                     f"got {facts_per_entity}")
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  names = _split_entities(split)
  held = split == "test"
  low = max(min_hops, 2) if held else min_hops

  def draw() -> Task:
    k = int(rng.integers(low, max_hops + 1))
    relations = tuple(str(r) for r in rng.choice(RELATIONS, size=k))
    while _is_held_out_path(relations) != held:  # k first: both splits share its law
      relations = tuple(str(r) for r in rng.choice(RELATIONS, size=k))
    return _make_task(rng, names, relations, facts_per_entity)

  return base.distinct_tasks(n, draw)


def prompt_text(task: Task) -> str:
  """The ChatML prefix an agent continues: system, user question, assistant header."""
  return base.prompt_text(SYSTEM_PROMPT, task.question)


def entry_text(name: str, facts: tuple[tuple[str, str], ...]) -> str:
  """What the tool returns for the entry of ``name``: ``643. mentor 656. partner 955.
  parent 945.`` (the entity, then one sentence per fact).

  Every relation is preceded by an id and ``". "``, so the example's tokenizer (no
  merges across digits) writes each relation as the same tokens in every fact
  of every entry; with a ``"; "`` separator and no title, the first fact's
  relation would be other tokens than the same relation further on.
  """
  return ". ".join([name] + [f"{r} {t}" for r, t in facts]) + "."


def tool_call_text(entity: str) -> str:
  """The lookup call of ``entity``."""
  return base.tool_call_text("lookup", {"entity": entity})


def reading_text(entity: str, relation: str, target: str) -> str:
  """The expert's reading of a fact: ``643. partner 955.``, the fact as the entry of
  ``entity`` writes it (:func:`entry_text`), quoted after the entry's id.

  Quoted so, the relation is the same token as in the observation and the target
  follows it as there: copying the target is matching the tokens just written
  against the observation's and continuing (an induction-style copy), the
  mechanism a small transformer learns (Olsson et al. 2022, "In-context Learning
  and Induction Heads").
  """
  return f"{entity}. {relation} {target}."


def expert_turns(task: Task) -> list[str]:
  """The expert's assistant turns (each ends with ``<|im_end|>``): one lookup per hop, then
  the answer. Each reasoning quotes the fact just read (:func:`reading_text`) and
  names the relation to follow next."""
  chain = task.chain()
  turns = []
  for i, relation in enumerate(task.relations):
    found = "First" if i == 0 else (
        reading_text(chain[i - 1], task.relations[i - 1], chain[i]) + " Next")
    turns.append(f"<think>{found}, the {relation} of {chain[i]}.</think>\n"
                 f"{tool_call_text(chain[i])}{IM_END}")
  turns.append(f"<think>{reading_text(chain[-2], task.relations[-1], chain[-1])}</think>\n"
               f"The answer is {chain[-1]}.{IM_END}")
  return turns


def expert_trajectory(task: Task) -> str:
  """The full ChatML trajectory of the expert on ``task``: its turns played in :class:`Env`."""
  turns = expert_turns(task)
  env = LookupEnv(task, max_turns=len(turns))
  env.reset()
  for turn in turns:
    env.step(turn)
  return env.text


FAILURES = ("subject", "relation", "distractor", "digits", "copy", "format")
_READ = re.compile(r"<think>\d+\. (\w+) (\d+)\.")


def first_failure(task: Task, text: str) -> tuple[int, str, str | None] | None:
  """Where an episode's text first leaves the expert's path, or None if it never does.

  Returns:
    ``(hop, kind, read)``: hop ``0`` is the first lookup (of the subject), hop
    ``i >= 1`` the reading of the ``i``-th observation and the call or answer
    after it; ``kind`` one of :data:`FAILURES`: ``subject`` (the first call is not
    the subject), ``relation`` (the reasoning names another relation than hop
    ``i``'s), ``distractor`` (it reads the id of another fact of the entry),
    ``digits`` (an id that is no fact of the entry: digits of several ids or
    none), ``copy`` (the call or answer does not repeat the id read), ``format``
    (no ``ID. RELATION ID.`` reading, a missing turn, another call); ``read``:
    the id read at a reading failure, else None.
  """
  turns = [t.split(IM_END)[0] for t in text.split(f"{base.IM_START}assistant\n")[1:]]
  chain, entries = task.chain(), task.entries

  def target(turn: str) -> str | None:
    try:
      entity = base.parse_tool_call(turn, "lookup", "entity")
    except base.ToolCallError:
      return None
    if entity is not None:
      return entity
    answer = _ANSWER.search(turn)
    return answer.group(1) if answer else None

  if not turns or target(turns[0]) != task.subject:
    return 0, "subject", None
  for hop, relation in enumerate(task.relations, start=1):
    read = _READ.search(turns[hop]) if hop < len(turns) else None
    if read is None:
      return hop, "format", None
    name, value = read.groups()
    if name != relation:
      return hop, "relation", value
    if value != chain[hop]:
      kind = "distractor" if value in entries[chain[hop - 1]].values() else "digits"
      return hop, kind, value
    if target(turns[hop]) != value:
      return hop, "copy", None
  return None


def failure_counts(episodes) -> dict:
  """Success and first failures of lookup episodes (:class:`examples.agent_env.Episode` s).

  Returns:
    ``success``, ``num_tasks``, ``failures`` ``{"hop H: kind": count}`` over the
    failed episodes (:func:`first_failure`), and ``misread_digits``
    ``{position: count}``: the (1-based) digit positions read wrong at the
    reading failures (``distractor`` and ``digits``).
  """
  kinds, digits = collections.Counter(), collections.Counter()
  for e in episodes:
    if e.success:
      continue
    hop, kind, read = first_failure(e.task, e.text) or (None, "none", None)
    kinds[f"hop {hop}: {kind}"] += 1
    if read is not None and kind in ("distractor", "digits"):
      gold = e.task.chain()[hop]
      digits.update(j + 1 for j in range(max(len(gold), len(read)))
                    if gold[j:j + 1] != read[j:j + 1])
  return {"success": sum(e.success for e in episodes) / len(episodes),
          "num_tasks": len(episodes), "failures": dict(kinds.most_common()),
          "misread_digits": dict(sorted(digits.items()))}


class LookupEnv(base.ToolEnv):
  """One episode of a :class:`Task`: parses assistant turns, runs ``lookup``, checks success.

  A turn with one well-formed ``lookup`` call of an entity of the task's
  knowledge base is a valid action and gets that entry back
  (:func:`entry_text`); a malformed call or an unknown entity gets an
  ``error: ...`` observation (an invalid action; the episode goes on); a turn
  without a tool call ends the episode, successfully when it holds
  ``The answer is ID.`` with the right id.

  Args:
    task: the task.
    max_turns: the episode ends (unsuccessfully) after this many assistant turns.
  """

  def __init__(self, task: Task, max_turns: int = MAX_TURNS):
    super().__init__(task, max_turns)
    self._kb = dict(task.kb)
    self._answer = task.answer

  def prompt(self) -> str:
    return prompt_text(self.task)

  def act(self, content: str) -> tuple[str | None, bool, bool]:
    try:
      entity = base.parse_tool_call(content, "lookup", "entity")
    except base.ToolCallError as e:
      return f"error: {e}", False, False
    if entity is not None:
      if entity not in self._kb:
        return f"error: no entry for {entity}", False, False
      return entry_text(entity, self._kb[entity]), True, False
    match = _ANSWER.search(content)
    return None, match is not None, match is not None and match.group(1) == self._answer


Env = LookupEnv  # the environment interface's name (examples.agent_env)
