"""The paper's baseline: one text tower whose vocabulary is extended by the speech vocabulary.

It is a plain `Tower` (same code, same decoding, same trainer): ids [0, text_vocab) are text,
[text_vocab, text_vocab + speech_vocab) are speech tokens, read as one concatenated sequence
[speech; text] (ASR) or [text; speech] (TTS).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zipper_jax.tower import TowerConfig


def single_decoder_config(text: TowerConfig, speech_vocab_size: int) -> TowerConfig:
  return dataclasses.replace(text, vocab_size=text.vocab_size + speech_vocab_size)


def speech_token_ids(speech_tokens, text_vocab_size: int):
  """Where speech vocabulary ids live in the Single Decoder's vocabulary."""
  return speech_tokens + text_vocab_size


def _new_rows(rows, count: int, rng, axis: int):
  """`count` new rows drawn around the existing ones: their mean plus noise of their spread.

  Sampling from the existing rows' statistics (rather than a fresh initialiser) keeps new logits
  on the scale of the old ones, so the pre-trained text distribution is barely disturbed.
  """
  rows = jnp.moveaxis(rows, axis, 0).astype(jnp.float32)
  mean, std = jnp.mean(rows, axis=0), jnp.std(rows, axis=0)
  new = mean + std * jax.random.normal(rng, (count,) + mean.shape)
  return jnp.moveaxis(new, 0, axis)


def single_decoder_params(text_params, text: TowerConfig, speech_vocab_size: int, rng):
  """A Single Decoder's parameters from a pre-trained text tower's (embedding and head grown).

  The text tower's padding rows are dropped, the speech rows follow its real vocabulary, and the
  grown table is padded again (with zeros: padded ids are masked out) to the Single Decoder's
  padded size.
  """
  single = single_decoder_config(text, speech_vocab_size)
  embed_rng, head_rng = jax.random.split(rng)

  def grown(table, axis, rng):
    rows = jax.lax.slice_in_dim(table, 0, text.vocab_size, axis=axis)
    table = jnp.concatenate(
        [rows, _new_rows(rows, speech_vocab_size, rng, axis).astype(table.dtype)], axis=axis)
    padding = [(0, 0)] * table.ndim
    padding[axis] = (0, single.padded_vocab_size - single.vocab_size)
    return jnp.pad(table, padding)

  params = dict(text_params)  # the subtrees we grow are replaced, never mutated
  params['embedder'] = {'embedding': grown(params['embedder']['embedding'], 0, embed_rng)}
  if 'lm_head' in params:
    # [embed, vocab]
    params['lm_head'] = {'kernel': grown(params['lm_head']['kernel'], 1, head_rng)}
  return params
