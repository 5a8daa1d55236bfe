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


def single_decoder_params(text_params, speech_vocab_size: int, rng):
  """A Single Decoder's parameters from a pre-trained text tower's (embedding and head grown)."""
  embed_rng, head_rng = jax.random.split(rng)
  params = dict(text_params)  # the subtrees we grow are replaced, never mutated
  embedding = params['embedder']['embedding']
  params['embedder'] = {'embedding': jnp.concatenate(
      [embedding, _new_rows(embedding, speech_vocab_size, embed_rng, 0).astype(embedding.dtype)])}
  if 'lm_head' in params:
    kernel = params['lm_head']['kernel']  # [embed, vocab]
    params['lm_head'] = {'kernel': jnp.concatenate(
        [kernel, _new_rows(kernel, speech_vocab_size, head_rng, 1).astype(kernel.dtype)], axis=1)}
  return params
