"""Autoregressive generation inside `jit`: one prefill call, then one cached call per token.

The prompt towers (e.g. speech for ASR) run once, in the prefill, which also fills the decoded
tower's self-attention caches and its cross-attention keys/values; each later step runs only the
decoded tower on one new token. The decoded tower's prompt must be left-padded (its last column
is every row's last prompt token), so that all rows write their caches at the same index.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp

from zipper_jax import tower as tower_lib
from zipper_jax import zipper as zipper_lib
from zipper_jax.inputs import TowerInput
from zipper_jax.layers import KVCache


@dataclasses.dataclass(frozen=True, eq=False)
class Decoder:
  """What decoding needs of a model.

  apply(params, inputs: {tower: TowerInput}, caches) -> ({tower: logits}, caches);
  init_caches(batch, size) -> empty caches for `output`, the tower that is decoded.
  """
  apply: Callable
  init_caches: Callable
  output: str

  @classmethod
  def for_zipper(cls, model: zipper_lib.Zipper, output: str) -> Decoder:
    return cls(lambda params, inputs, caches: model.apply({'params': params}, inputs, caches),
               functools.partial(zipper_lib.init_caches, model.config, output), output)

  @classmethod
  def for_tower(cls, model: tower_lib.Tower, name: str = 'tower') -> Decoder:
    def apply(params, inputs, caches):
      logits, caches = model.apply({'params': params}, inputs[name], caches)
      return {name: logits}, caches
    return cls(apply, functools.partial(tower_lib.init_cache, model.config), name)


@flax.struct.dataclass
class Generated:
  tokens: jnp.ndarray  # [batch, max_new_tokens]; after an end token, padding
  lengths: jnp.ndarray  # [batch]; tokens up to and including the end token
  logits: jnp.ndarray | None = None  # [batch, max_new_tokens, vocab] if asked for


@flax.struct.dataclass
class Beams:
  tokens: jnp.ndarray  # [batch, beams, max_new_tokens], best beam first
  scores: jnp.ndarray  # [batch, beams]: sum of log-probabilities
  lengths: jnp.ndarray  # [batch, beams]


def sample(logits, rng, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
  """One token per row: greedy at temperature 0, else from the top-k / nucleus-truncated softmax."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    kept = jnp.cumsum(probs, axis=-1) - probs < top_p  # always keeps the most likely token
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


def _step_input(last: TowerInput, tokens, offset):
  """The decoded tower's input for new `tokens` [batch], `offset` places after its prompt."""
  column = lambda x: (x[:, -1] + offset)[:, None]
  return TowerInput(tokens[:, None], column(last.positions), last.segment_ids[:, -1:],
                    column(last.interleaved_positions))


def _lengths(tokens, eos_id: int | None):
  if eos_id is None:
    return jnp.full(tokens.shape[:-1], tokens.shape[-1], jnp.int32)
  is_eos = tokens == eos_id
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1) + 1, tokens.shape[-1]).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('decoder', 'max_new_tokens', 'eos_id', 'pad_id',
                                             'temperature', 'top_k', 'top_p', 'return_logits'))
def generate(decoder: Decoder, params, prompt: Mapping[str, TowerInput], rng=None, *,
             max_new_tokens: int, eos_id: int | None, pad_id: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             return_logits: bool = False) -> Generated:
  """Greedy or sampled generation of `decoder.output`, stopping rows at `eos_id`."""
  prefix = prompt[decoder.output]
  batch, prefix_length = prefix.shape
  rng = jax.random.key(0) if rng is None else rng
  caches = decoder.init_caches(batch, prefix_length + max_new_tokens)
  logits, caches = decoder.apply(params, prompt, caches)
  logits = logits[decoder.output][:, -1]
  history = jnp.zeros((batch, max_new_tokens, logits.shape[-1]) if return_logits else (0,))

  def keep_going(state):
    step, _, done, *_ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def one_token(state):
    step, tokens, done, logits, caches, rng, history = state
    rng, key = jax.random.split(rng)
    token = jnp.where(done, pad_id, sample(logits, key, temperature, top_k, top_p))
    tokens = tokens.at[:, step].set(token)
    if return_logits:
      history = history.at[:, step].set(logits)
    if eos_id is not None:
      done = done | (token == eos_id)
    logits, caches = decoder.apply(params, {decoder.output: _step_input(prefix, token, step + 1)},
                                   caches)
    return step + 1, tokens, done, logits[decoder.output][:, 0], caches, rng, history

  state = (jnp.zeros((), jnp.int32), jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
           jnp.zeros((batch,), bool), logits, caches, rng, history)
  _, tokens, _, _, _, _, history = jax.lax.while_loop(keep_going, one_token, state)
  return Generated(tokens, _lengths(tokens, eos_id), history if return_logits else None)


def _take_rows(caches, rows):
  return jax.tree.map(lambda cache: cache.take_rows(rows), caches,
                      is_leaf=lambda x: isinstance(x, KVCache))


def _length_penalty(lengths, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha; alpha = 0 ranks by plain log-probability."""
  return ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('decoder', 'beam_size', 'max_new_tokens', 'eos_id',
                                             'pad_id', 'length_penalty'))
def beam_search(decoder: Decoder, params, prompt: Mapping[str, TowerInput], *, beam_size: int,
                max_new_tokens: int, eos_id: int | None, pad_id: int = 0,
                length_penalty: float = 0.0) -> Beams:
  """Beam search; a finished beam stays in the beam, extended only by padding at no cost."""
  prefix = prompt[decoder.output]
  batch, prefix_length = prefix.shape
  caches = decoder.init_caches(batch, prefix_length + max_new_tokens)
  logits, caches = decoder.apply(params, prompt, caches)  # prefill once, then copy per beam
  per_beam = lambda x: jnp.repeat(x, beam_size, axis=0)
  caches = _take_rows(caches, jnp.repeat(jnp.arange(batch), beam_size))
  prefix = jax.tree.map(per_beam, prefix)
  log_probs = jax.nn.log_softmax(per_beam(logits[decoder.output][:, -1]))
  vocab = log_probs.shape[-1]
  pad_only = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)

  def keep_going(state):
    step, _, _, finished, *_ = state
    return (step < max_new_tokens) & ~jnp.all(finished)

  def one_token(state):
    step, tokens, scores, finished, lengths, log_probs, caches = state
    log_probs = jnp.where(finished[..., None], pad_only, log_probs.reshape(batch, beam_size, vocab))
    candidates = (scores[..., None] + log_probs).reshape(batch, beam_size * vocab)
    candidate_lengths = jnp.where(finished, lengths, step + 1)
    rank = candidates / jnp.repeat(_length_penalty(candidate_lengths, length_penalty), vocab, -1)
    _, best = jax.lax.top_k(rank, beam_size)
    parent, token = best // vocab, (best % vocab).astype(jnp.int32)
    from_parent = lambda x: jnp.take_along_axis(
        x, parent.reshape(parent.shape + (1,) * (x.ndim - 2)), 1)
    scores = jnp.take_along_axis(candidates, best, 1)
    tokens = from_parent(tokens).at[:, :, step].set(token)
    was_finished = from_parent(finished)
    lengths = jnp.where(was_finished, from_parent(lengths), step + 1)
    finished = was_finished if eos_id is None else was_finished | (token == eos_id)
    rows = (jnp.arange(batch)[:, None] * beam_size + parent).reshape(-1)
    caches = _take_rows(caches, rows)
    logits, caches = decoder.apply(
        params, {decoder.output: _step_input(prefix, token.reshape(-1), step + 1)}, caches)
    log_probs = jax.nn.log_softmax(logits[decoder.output][:, 0])
    return step + 1, tokens, scores, finished, lengths, log_probs, caches

  first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
  state = (jnp.zeros((), jnp.int32),
           jnp.full((batch, beam_size, max_new_tokens), pad_id, jnp.int32),
           jnp.broadcast_to(first_beam_only, (batch, beam_size)),
           jnp.zeros((batch, beam_size), bool), jnp.zeros((batch, beam_size), jnp.int32),
           log_probs, caches)
  _, tokens, scores, _, lengths, _, _ = jax.lax.while_loop(keep_going, one_token, state)
  order = jnp.argsort(-scores / _length_penalty(lengths, length_penalty), axis=-1)
  take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
  return Beams(take(tokens), take(scores), take(lengths))


@functools.partial(jax.jit, static_argnames=('decoder', 'max_new_tokens'))
def greedy_without_cache(decoder: Decoder, params, prompt: Mapping[str, TowerInput], *,
                         max_new_tokens: int):
  """Greedy decoding that recomputes every tower over the whole sequence at each step.

  The reference that cached decoding must match, and the baseline it is measured against.
  Returns (tokens [batch, max_new_tokens], logits [batch, max_new_tokens, vocab]).
  """
  prefix = prompt[decoder.output]
  batch, prefix_length = prefix.shape
  new = jnp.arange(1, max_new_tokens + 1, dtype=jnp.int32)[None, :]
  grow = lambda x, tail: jnp.concatenate([x, tail.astype(x.dtype)], axis=1)
  sequence = TowerInput(
      grow(prefix.tokens, jnp.zeros((batch, max_new_tokens))),
      grow(prefix.positions, prefix.positions[:, -1:] + new),
      grow(prefix.segment_ids, jnp.zeros((batch, max_new_tokens))),  # not yet generated: hidden
      grow(prefix.interleaved_positions, prefix.interleaved_positions[:, -1:] + new))

  def one_token(step, state):
    sequence, history = state
    logits, _ = decoder.apply(params, {**prompt, decoder.output: sequence}, None)
    logits = jax.lax.dynamic_index_in_dim(logits[decoder.output], prefix_length - 1 + step, 1,
                                          keepdims=False)
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    column = prefix_length + step
    sequence = sequence.replace(
        tokens=sequence.tokens.at[:, column].set(token),
        segment_ids=sequence.segment_ids.at[:, column].set(prefix.segment_ids[:, -1]))
    return sequence, history.at[:, step].set(logits)

  vocab = jax.eval_shape(decoder.apply, params, prompt, None)[0][decoder.output].shape[-1]
  history = jnp.zeros((batch, max_new_tokens, vocab))
  sequence, history = jax.lax.fori_loop(0, max_new_tokens, one_token, (sequence, history))
  return sequence.tokens[:, prefix_length:], history
