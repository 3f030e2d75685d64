"""The agent language models of the example: tokenizer, transformer, KV-cache rollouts.

* :func:`train_tokenizer`: a byte-level BPE (``tokenizers``) trained on the
  generated ChatML corpus, with the ChatML / tool tags as special tokens and one
  token per digit (numbers are copied digit by digit, so unseen numbers are no
  unseen tokens).
* :class:`Transformer`: a Flax NNX decoder-only transformer (pre-LayerNorm,
  ReLU MLP, learned or rotary positions, tied input/output embeddings) with a full-sequence
  ``__call__`` for training and a one-token ``decode`` step over a KV cache.
* :class:`ModelPolicy`: a batched agent policy for
  :func:`examples.agent_env.rollout`, greedy or sampling at a temperature; every
  episode keeps its own KV cache, so a turn only processes the new tokens (the
  observation) instead of the prefix; each episode's ids are recorded as
  sampled / inserted (:class:`Rollout`), the input of on-policy distillation.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sad_jax.data import episodes
from sad_jax.data import trajectories as tj
from sad_jax.objective._spans import SpanType

PAD = "<pad>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD, "<|im_start|>", IM_END, "<think>", "</think>", "<tool_call>",
                  "</tool_call>", "<tool_response>", "</tool_response>")


# ------------------------------------------------------------------ tokenizer


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> Tokenizer:
  """Trains a byte-level BPE on ``corpus``.

  Digits are split one per token before the byte-level step; no regex split,
  so frequent template text (``{"name": "calculator", ...``) merges into few
  tokens. ``<pad>`` has id 0. Encoding then decoding gives the text back exactly.
  """
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  return tok


def encode_trajectory(text: str, tokenizer: Tokenizer, *, strict: bool = True) -> tj.Tokenized:
  """Tokenizes a ChatML trajectory with ``sad_jax`` span ids (per input token).

  Segmentation is ``sad_jax.data.trajectories.segment(format="chatml", strict=strict)``
  (``strict=False`` for model-written text, which may be malformed). One change:
  the ``<|im_end|>`` closing an assistant turn (``OTHER`` glue for the
  segmenter) becomes ``ACTION``: emitting it is the agent's decision to end its
  turn, and a model that is never trained on it never stops talking.
  """
  tok = tj.tokenize(tj.segment(text, format="chatml", strict=strict), tokenizer)
  span_ids = tok.span_ids.copy()
  im_end = tokenizer.token_to_id(IM_END)
  ends = np.flatnonzero(tok.ids[1:] == im_end) + 1
  agent = np.isin(span_ids[ends - 1], (SpanType.REASONING, SpanType.ACTION))
  span_ids[ends[agent]] = int(SpanType.ACTION)
  return tok._replace(span_ids=span_ids)


# ---------------------------------------------------------------- transformer


POSITIONS = ("learned", "rope")


def rotate(x: jax.Array, pos: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding of ``x [..., T, H, D]`` at positions ``pos [..., T]``.

  Pairs ``(x[2i], x[2i+1])`` turn by ``pos * base ** (-2i / D)`` (Su et al. 2021, eq. 34).
  """
  d = x.shape[-1]
  freq = base ** (-np.arange(0, d, 2) / d)
  angle = pos[..., None, None].astype(jnp.float32) * freq          # [..., T, 1, D/2]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  even, odd = x[..., 0::2], x[..., 1::2]
  return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Transformer shape: vocabulary, width, depth, heads, MLP width, max length.

  ``query_blocks``: causal attention runs over this many query blocks, each
  against the keys up to its end only (see :meth:`Block.__call__`); it changes
  no parameter and no result beyond float rounding.

  ``positions``: ``"learned"`` (a ``[max_len, d]`` table added to the token
  embeddings) or ``"rope"`` (rotary embeddings of queries and keys, Su et al.
  2021, arXiv:2104.09864: a score depends on the query-key offset only, so
  attending to "the token after the one that matched" is the same function at
  every position -- the relative lookup a copy from an observation needs).
  """
  vocab_size: int
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  d_ff: int = 512
  max_len: int = 256
  query_blocks: int = 4
  positions: str = "learned"

  def __post_init__(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"positions={self.positions!r}; allowed: {', '.join(POSITIONS)}")
    if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
      raise ValueError(f"positions='rope' needs an even head width, got d_model={self.d_model}"
                       f" / num_heads={self.num_heads}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
    if self.query_blocks < 1:
      raise ValueError(f"query_blocks={self.query_blocks} must be >= 1")


class Block(nnx.Module):
  """Pre-LayerNorm attention + ReLU MLP block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d = cfg.d_model
    self.num_heads = cfg.num_heads
    self.query_blocks = cfg.query_blocks
    self.rope = cfg.positions == "rope"
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
    self.out = nnx.Linear(d, d, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.fc1 = nnx.Linear(d, cfg.d_ff, rngs=rngs)
    self.fc2 = nnx.Linear(cfg.d_ff, d, rngs=rngs)

  def _heads(self, x, pos):
    """``x [..., d]`` at ``pos [...]`` -> q, k, v each ``[..., H, d/H]`` (q, k rotated
    under rotary positions)."""
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    shape = x.shape[:-1] + (self.num_heads, -1)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    if self.rope:
      q, k = rotate(q, pos), rotate(k, pos)
    return q, k, v

  def _mlp(self, x):
    return x + self.fc2(jax.nn.relu(self.fc1(self.ln2(x))))

  def __call__(self, x):
    """``x [B, T, d]`` -> ``[B, T, d]`` with causal self-attention.

    The queries are cut into ``query_blocks`` blocks; block ``[a, b)`` attends to
    keys ``[0, b)`` only, so the masked upper triangle is mostly never computed
    (4 blocks: 62.5% of the ``T x T`` scores) and each block's scores stay in
    cache. Measured on the 2-core CPU (batch 32, T = 144-192): a training step
    24% faster for the student and 13% for the teacher against one block; in
    the agent example's runs, median steps 12% (student SFT) and 3% (teacher)
    faster.
    """
    t = x.shape[1]
    q, k, v = self._heads(x, jnp.arange(t))
    q = q / np.sqrt(q.shape[-1])
    bounds = np.linspace(0, t, min(self.query_blocks, t) + 1).astype(int)
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
      scores = jnp.einsum("bqhd,bkhd->bhqk", q[:, a:b], k[:, :b])
      causal = np.arange(a, b)[:, None] >= np.arange(b)[None, :]
      scores = jnp.where(causal, scores, -1e9)
      blocks.append(jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v[:, :b]))
    x = x + self.out(jnp.concatenate(blocks, axis=1).reshape(x.shape))
    return self._mlp(x)

  def decode(self, x, pos, k_cache, v_cache):
    """One token per row: ``x [B, d]`` at positions ``pos [B]``; caches ``[B, H, S, d/H]``.

    The ``[B, H, S, d/H]`` layout makes both attention products plain batched
    matrix-vector products (about 7x faster on CPU than ``[B, S, H, d/H]``).
    """
    q, k, v = self._heads(x, pos)
    rows = jnp.arange(x.shape[0])
    k_cache = k_cache.at[rows, :, pos].set(k)
    v_cache = v_cache.at[rows, :, pos].set(v)
    scores = (k_cache @ q[..., None])[..., 0] / np.sqrt(q.shape[-1])
    valid = jnp.arange(k_cache.shape[2])[None, :] <= pos[:, None]
    scores = jnp.where(valid[:, None, :], scores, -1e9)
    attn = (jax.nn.softmax(scores, axis=-1)[..., None, :] @ v_cache)[..., 0, :]
    x = x + self.out(attn.reshape(x.shape))
    return self._mlp(x), k_cache, v_cache


class Transformer(nnx.Module):
  """Decoder-only transformer LM with tied embeddings."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    if cfg.positions == "learned":
      self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model)))
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)

  def __call__(self, tokens):
    """``tokens [B, T]`` int (``T <= max_len``) -> logits ``[B, T, V]`` float32."""
    if tokens.shape[1] > self.cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[1]} > max_len {self.cfg.max_len}")
    x = self.embed(tokens)
    if self.cfg.positions == "learned":
      x = x + self.pos[:tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    return self.embed.attend(self.ln_f(x))

  def init_cache(self, batch: int) -> dict[str, list[jax.Array]]:
    """Zero KV cache: ``k``, ``v``: one ``[B, H, max_len, d/H]`` array per layer."""
    c = self.cfg
    shape = (batch, c.num_heads, c.max_len, c.d_model // c.num_heads)
    return {name: [jnp.zeros(shape, jnp.float32) for _ in range(c.num_layers)]
            for name in ("k", "v")}

  def decode(self, tokens, pos, cache):
    """One decoding step: ``tokens [B]`` at ``pos [B]`` -> (logits ``[B, V]``, new cache)."""
    x = self.embed(tokens)
    if self.cfg.positions == "learned":
      x = x + self.pos[pos]
    ks, vs = [], []
    for i, block in enumerate(self.blocks):
      x, k, v = block.decode(x, pos, cache["k"][i], cache["v"][i])
      ks.append(k)
      vs.append(v)
    return self.embed.attend(self.ln_f(x)), {"k": ks, "v": vs}


def create_model(cfg: ModelConfig, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
  """Initializes a :class:`Transformer`; returns ``(graphdef, params)``."""
  return nnx.split(Transformer(cfg, nnx.Rngs(seed)))


def count_params(params: nnx.State) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def make_apply(graphdef: nnx.GraphDef) -> Callable[[nnx.State, jax.Array], jax.Array]:
  """A pure ``apply(params, tokens [B, T]) -> logits [B, T, V]`` (not jitted)."""
  def apply(params, tokens):
    return nnx.merge(graphdef, params)(tokens)
  return apply


def make_decode_step(graphdef: nnx.GraphDef, temperature: float | None = None):
  """Jitted step ``(params, cache, tokens [B], pos [B], key, count) -> (next ids [B], cache)``.

  ``temperature`` None or 0: greedy (``argmax``; ``key`` and ``count`` are unused).
  Otherwise each row's next id is sampled from ``softmax(logits / temperature)``
  with the key ``fold_in(key, count)`` (``count``: the decoding step's number, so a
  rollout's samples are a function of its key and its schedule of steps).

  The cache is donated (updated in place): do not reuse the cache passed in.
  """
  if temperature is not None and not temperature >= 0:
    raise ValueError(f"temperature must be None or >= 0, got {temperature!r}")

  @functools.partial(jax.jit, donate_argnums=1)
  def step(params, cache, tokens, pos, key, count):
    logits, cache = nnx.merge(graphdef, params).decode(tokens, pos, cache)
    if not temperature:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache
    ids = jax.random.categorical(jax.random.fold_in(key, count), logits / temperature, axis=-1)
    return ids.astype(jnp.int32), cache
  return step


# -------------------------------------------------------------------- policy


@dataclasses.dataclass
class Rollout:
  """The token ids of one episode as the policy saw and wrote them.

  Attributes:
    prompt_ids: the ids of the task prompt (fed before the first turn).
    turns: one :class:`sad_jax.data.episodes.Turn` per assistant turn: the ids the
      model sampled (its closing ``<|im_end|>`` included), then the ids inserted
      after them (a cut turn's appended ``<|im_end|>``, the observation with the
      next header), ``truncated`` for a turn cut at the token or context limit.
  """
  prompt_ids: list[int] = dataclasses.field(default_factory=list)
  turns: list[episodes.Turn] = dataclasses.field(default_factory=list)

  def example(self, tokenizer: Tokenizer) -> episodes.Episode:
    """The span-labelled example (:func:`sad_jax.data.episodes.episode_example`, ChatML):
    span ids on the ids that were sampled, never on a re-tokenization of the text."""
    return episodes.episode_example(self.prompt_ids, self.turns, decoder=tokenizer,
                                    format="chatml")


class ModelPolicy:
  """Batched agent policy over a KV cache (see :mod:`examples.agent_env.loop`).

  Every step feeds one token per episode: the next token of the text the
  environment appended (prompt or observation) while there is one, else the
  token the model just generated. Episodes that wait (turn over, or the batch
  has fewer episodes than ``batch_size``) idle without advancing. A turn ends at
  ``<|im_end|>``, after ``max_turn_tokens`` tokens, or when the cache is full; an
  episode whose next observation does not fit gets an empty turn (which ends it
  as a failure in the environment).

  Greedy by default; with a ``temperature`` > 0 the next ids are sampled (keys
  from ``key``, see :func:`make_decode_step`). Either way :attr:`rollouts` records
  each episode's ids (one :class:`Rollout` per episode, in the order of the
  ``begin`` calls).

  Args:
    graphdef, params: the model (``nnx.split``).
    tokenizer: its tokenizer.
    batch_size: the cache's batch size (episodes per rollout at most).
    max_turn_tokens: generation limit per turn.
    step_fn: a :func:`make_decode_step` of the model at this temperature (to share
      one compilation); default a new one.
    temperature: None or 0: greedy; > 0: the sampling temperature.
    key: the PRNG key of the samples (required when sampling).
  """

  def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, tokenizer: Tokenizer, *,
               batch_size: int, max_turn_tokens: int = 64, step_fn=None,
               temperature: float | None = None, key: jax.Array | None = None):
    if temperature and key is None:
      raise ValueError(f"temperature={temperature} samples: give a PRNG key")
    self._model_cfg: ModelConfig = nnx.merge(graphdef, params).cfg
    self._graphdef, self._params, self._tok = graphdef, params, tokenizer
    self._step = step_fn or make_decode_step(graphdef, temperature)
    self._key = jax.random.key(0) if key is None else key
    self._count = 0
    self._batch = batch_size
    self._max_turn = max_turn_tokens
    self._im_end = tokenizer.token_to_id(IM_END)
    self._cache = None
    self._pos = np.zeros(batch_size, np.int32)
    self._carry: list[list[int]] = []
    self._records: list[Rollout] = []
    self.rollouts: list[Rollout] = []
    self.tokens_generated = 0

  def begin(self, n: int) -> None:
    if n > self._batch:
      raise ValueError(f"{n} episodes > batch_size {self._batch}")
    self._cache = nnx.merge(self._graphdef, self._params).init_cache(self._batch)
    self._pos[:] = 0
    self._carry = [[] for _ in range(n)]
    self._records = [Rollout() for _ in range(n)]
    self.rollouts += self._records

  def act(self, feeds: dict[int, str]) -> dict[int, str]:
    max_len = self._model_cfg.max_len
    pending = {}
    out: dict[int, str] = {}
    for i, text in feeds.items():
      fed = self._tok.encode(text).ids
      record = self._records[i]
      (record.turns[-1].inserted if record.turns else record.prompt_ids).extend(fed)
      ids = self._carry[i] + fed
      if self._pos[i] + len(ids) >= max_len:
        out[i] = ""  # the context is full: no room for the observation
        record.turns.append(episodes.Turn([], [self._im_end], truncated=True))
      else:
        pending[i] = collections.deque(ids)
    generated = {i: [] for i in pending}
    running = set(pending)
    tokens = np.zeros(self._batch, np.int32)
    while running:
      for i in running:
        if pending[i]:
          tokens[i] = pending[i].popleft()
        else:
          tokens[i] = generated[i][-1]
      next_ids, self._cache = self._step(self._params, self._cache, jnp.asarray(tokens),
                                         jnp.asarray(self._pos), self._key,
                                         np.int32(self._count))
      self._count += 1
      next_ids = np.asarray(next_ids)
      for i in list(running):
        self._pos[i] += 1
        if pending[i]:
          continue
        y = int(next_ids[i])
        if y == self._im_end:
          running.discard(i)
          self._carry[i] = [self._im_end]
          self._records[i].turns.append(episodes.Turn(generated[i] + [y], []))
        else:
          generated[i].append(y)
          if len(generated[i]) >= self._max_turn or self._pos[i] >= max_len - 1:
            running.discard(i)  # cut: the last generated token is not in the cache yet
            self._carry[i] = [y, self._im_end]
            self._records[i].turns.append(
                episodes.Turn(list(generated[i]), [self._im_end], truncated=True))
    for i, ids in generated.items():
      self.tokens_generated += len(ids)
      out[i] = self._tok.decode(ids, skip_special_tokens=False) + IM_END
    return out


def evaluate_policy(make_policy: Callable[[], object], tasks: Sequence, *, env,
                    batch_size: int, max_turns: int | None = None, progress=None):
  """Rolls out ``tasks`` of environment ``env`` in chunks of ``batch_size``; returns the
  episodes in order (``max_turns``: default the environment's ``MAX_TURNS``)."""
  from examples.agent_env import rollout  # pylint: disable=g-import-not-at-top
  policy = make_policy()
  episodes = []
  for start in range(0, len(tasks), batch_size):
    chunk = tasks[start:start + batch_size]
    episodes += rollout(policy, chunk, env=env, max_turns=max_turns)
    if progress is not None:
      progress.update(len(chunk))
  return episodes
