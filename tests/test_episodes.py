"""On-policy episodes -> span ids on the sampled ids (sad_jax.data.episodes)."""
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sad_jax.data import episodes as ep_lib
from sad_jax.data import trajectories as tj
from sad_jax.objective import SpanType

P, R, A, O = (int(SpanType.PROMPT), int(SpanType.REASONING), int(SpanType.ACTION),
              int(SpanType.OBSERVATION))

# ChatML (Qwen2.5 / Hermes layout, as documented in sad_jax.data.trajectories.chatml).
PROMPT = "<|im_start|>user\nFind the capital of France.<|im_end|>\n<|im_start|>assistant\n"
THINK = "<think>\nI should search for it.\n</think>\n"
CALL = '<tool_call>\n{"name": "search", "arguments": {"q": "capital of France"}}\n</tool_call>'
END = "<|im_end|>"
OBS_FINAL = "\n<|im_start|>user\n<tool_response>\nParis\n</tool_response><|im_end|>\n"
OBS = OBS_FINAL + "<|im_start|>assistant\n"  # the observation and the next turn's header


@pytest.fixture(scope="module")
def bpe():
  """A byte-level BPE (GPT-2 style) trained here on a few ChatML episodes."""
  corpus = [PROMPT + THINK + CALL + END + OBS + "<think>\nIt is Paris.\n</think>\nParis" + END,
            "The capital of France is Paris. I should search for it."] * 30
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus, trainer)
  return tok


def _chars(tok, text):
  """Ids that spell ``text`` one character at a time: valid samples, never what encode gives."""
  return [i for ch in text for i in tok.encode(ch).ids]


def _expected(ep, ranges):
  """Span id per token from (start, end, type) character ranges of the decoded text."""
  out = []
  for start, _ in ep.offsets:
    out.append(next(t for s, e, t in ranges if s <= start < e))
  return np.array(out)


def test_span_ids_on_sampled_ids_where_retokenization_differs(bpe):
  prompt = bpe.encode(PROMPT).ids
  # The sampler spelled "<think>" character by character, and "é" as two byte tokens.
  think = THINK.replace("for it", "for it é")
  sampled = _chars(bpe, "<think>") + bpe.encode(think[len("<think>"):]).ids
  sampled += bpe.encode(CALL).ids + bpe.encode(END).ids
  inserted = bpe.encode(OBS_FINAL).ids
  ep = ep_lib.episode_example(prompt, [ep_lib.Turn(sampled, inserted)], bpe, format="chatml")

  assert ep.text == PROMPT + think + CALL + END + OBS_FINAL
  assert len(ep.ids) == len(prompt) + len(sampled) + len(inserted)
  retokenized = bpe.encode(ep.text).ids
  assert retokenized != ep.ids.tolist() and len(retokenized) < len(ep.ids)
  # Every sampled id, in order, is kept: the labels are on what was sampled.
  np.testing.assert_array_equal(ep.ids, prompt + sampled + inserted)

  a, b = len(PROMPT), len(PROMPT) + len(think)
  c = b + len(CALL) + len(END)
  ranges = [(0, a, P), (a, b, R), (b, c, A), (c, len(ep.text) + 1, O)]
  np.testing.assert_array_equal(ep.span_ids, _expected(ep, ranges))
  src = np.array([0] * len(prompt) + [1] * len(sampled) + [2] * len(inserted))
  np.testing.assert_array_equal(ep.source, src)
  np.testing.assert_array_equal(ep.turn_ids, np.minimum(src, 1))
  # The two byte tokens of "é" share its character and are both reasoning.
  e_pos = ep.text.index("é")
  e_tokens = np.flatnonzero((ep.offsets[:, 0] == e_pos) & (ep.offsets[:, 1] == e_pos + 1))
  assert e_tokens.size == 2 and np.all(ep.span_ids[e_tokens] == R)
  assert ep.recoveries == ()


def test_hand_made_vocab_prompt_observation_and_glue():
  vocab = ["Task: add 2 and 2.\n", "Thought", ":", " two", " plus", " two", "\n", "Act",
           "ion: ", "finish[4]", "\n", "Observation: correct\n", "<eos>"]
  decode = lambda ids: "".join(vocab[i] for i in ids)
  # A greedy tokenizer would read "Action: " as one piece; the sampler emitted "Act" "ion: ".
  ep = ep_lib.episode_example([0], [([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], [11])], decode,
                              format="react")
  np.testing.assert_array_equal(ep.span_ids, [P, R, R, R, R, R, R, A, A, A, A, A, O])
  np.testing.assert_array_equal(ep.turn_ids, [0] + [1] * 12)
  np.testing.assert_array_equal(ep.offsets[7:9], [[len(decode(range(7))), len(decode(range(8)))],
                                                  [len(decode(range(8))), len(decode(range(9)))]])


def test_unclosed_think_in_a_truncated_turn(bpe):
  prompt = bpe.encode(PROMPT).ids
  turn1 = ep_lib.Turn(bpe.encode(THINK + CALL + END).ids, bpe.encode(OBS).ids)
  turn2 = ep_lib.Turn(bpe.encode("<think>\nIt is Par").ids, (), truncated=True)
  ep = ep_lib.episode_example(prompt, [turn1, turn2], bpe, format="chatml")
  last = ep.turn_ids == 2
  assert np.all(ep.span_ids[last] == R)
  reasons = [(r.turn, r.reason) for r in ep.recoveries]
  assert any(t == 2 and "unclosed <think>" in s for t, s in reasons), reasons
  assert any(t == 2 and "cut at the token limit" in s for t, s in reasons), reasons
  cut = next(r for r in ep.recoveries if "token limit" in r.reason)
  assert cut.position == len(ep.text)


def test_broken_tool_call_json_is_still_an_action(bpe):
  broken = '<tool_call>\n{"name": "search", "arguments": {"q": "capital"}\n</tool_call>'
  sampled = bpe.encode(THINK + broken + END).ids
  ep = ep_lib.episode_example(bpe.encode(PROMPT).ids, [(sampled, bpe.encode(OBS_FINAL).ids)], bpe,
                              format="chatml")
  call = (ep.source == 1) & (ep.offsets[:, 0] >= len(PROMPT) + len(THINK))
  assert call.any() and np.all(ep.span_ids[call] == A)
  (rec,) = [r for r in ep.recoveries if "JSON" in r.reason]
  assert rec.turn == 1 and len(PROMPT) + len(THINK) <= rec.position < len(PROMPT + THINK + broken)


def test_sampled_text_typed_as_environment_is_relabelled_and_recorded(bpe):
  # The student hallucinates the user's next turn: the segmentation calls that text PROMPT or OBSERVATION.
  sampled = bpe.encode(CALL + END + "\n<|im_start|>user\nParis").ids
  ep = ep_lib.episode_example(bpe.encode(PROMPT).ids, [(sampled, ())], bpe, format="chatml")
  assert set(ep.span_ids[ep.source == 1].tolist()) == {A}
  assert any(("types PROMPT" in r.reason or "types OBSERVATION" in r.reason) and r.turn == 1
             for r in ep.recoveries)


def test_metaspace_decoder_keeps_leading_spaces():
  """SentencePiece-style "▁" tokens: a token alone would lose its space; in context it keeps it."""
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator(["Thought: look up the answer\nAction: search[x]\n"] * 20,
                          trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"]))
  text = "Thought: look up the answer\nAction: search[x]\n"
  ids = tok.encode(text).ids
  decoded, offsets = ep_lib.decode_offsets(ids, tok)
  assert decoded == tok.decode(ids)
  pieces = [decoded[s:e] for s, e in offsets]
  assert "".join(pieces) == decoded and any(p.startswith(" ") for p in pieces)


def test_batch_episodes_aligns_turns_with_labels(bpe):
  prompt = bpe.encode(PROMPT).ids
  turns = [(bpe.encode(THINK + CALL + END).ids, bpe.encode(OBS).ids),
           (bpe.encode("Paris" + END).ids, ())]
  eps = [ep_lib.episode_example(prompt, turns, bpe, format="chatml"),
         ep_lib.episode_example(prompt, turns[:1], bpe, format="chatml")]
  out = ep_lib.batch_episodes(eps, 96)
  ref = tj.batch(eps, 96)
  for name in ref._fields:
    np.testing.assert_array_equal(getattr(out, name), getattr(ref, name))
  n = len(eps[0].ids)
  np.testing.assert_array_equal(out.turn_ids[0, :min(n, 96) - 1], eps[0].turn_ids[1:96])
  # Every trained label is a sampled token, and every observation label is in a turn.
  trained = np.isin(out.span_ids, [R, A])
  assert np.all(out.turn_ids[trained] >= 1)
  assert np.all(out.turn_ids[out.span_ids == P] == 0)


def test_errors():
  decode = lambda ids: "x" * len(ids)
  with pytest.raises(ValueError, match="turns is empty"):
    ep_lib.episode_example([1], [], decode)
  with pytest.raises(ValueError, match="negative token id"):
    ep_lib.episode_example([1], [([-3], ())], decode)
  with pytest.raises(ValueError, match="either format= or segmenter="):
    ep_lib.episode_example([1], [([2], ())], decode, format="react",
                           segmenter=lambda t: tj.segment(t, format="react", strict=False))
  with pytest.raises(ValueError, match="exactly the decoded text"):
    ep_lib.episode_example([1], [([2], ())], decode,
                           segmenter=lambda t: tj.segment("Thought: a", format="react"))
  with pytest.raises(TypeError, match="decoder must be"):
    ep_lib.decode_offsets([1], 3)
  unstable = lambda ids: "ab"[:len(ids)][::-1]  # rewrites what it already emitted
  with pytest.raises(ValueError, match="not prefix-stable at token 1"):
    ep_lib.decode_offsets([5, 6], unstable)
  with pytest.raises(TypeError, match="must be an Episode"):
    ep_lib.batch_episodes([([1, 2], [1, 2])], 4)
