"""A tower: an ordinary Llama-style decoder-only LM, usable alone and, unchanged, inside a Zipper.

Its blocks are one stack (`stacks.py`): parameters `blocks/...` with a leading `layers` axis, run
by one scan. The Zipper drives a tower piecewise (`embed`, its `blocks` applied by
`block_function`, `logits`) so that it can interleave cross-attention between towers;
`__call__` is the same path without it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipper_jax import attention, stacks
from zipper_jax.inputs import TowerInput
from zipper_jax.layers import MLP, Attention, Dense, KVCache, RMSNorm, constrain, partitioned


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: int | None = None  # None: as many as query heads (plain multi-head attention)
  rope_theta: float = 10_000.0
  norm_epsilon: float = 1e-6
  tie_embeddings: bool = False
  qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
  dtype: Any = jnp.float32  # compute; a name too ('bfloat16'), as gin files give it
  param_dtype: Any = jnp.float32
  remat: str = 'none'  # what the backward pass recomputes: see stacks.REMAT_POLICIES
  scan_layers: bool = True  # one compiled block for all; False unrolls them (same parameters)
  # The embedding and head have `padded_vocab_size` rows, a multiple of this (as t5x pads), so
  # that they shard over any tensor axis; the padded ids' logits are masked out.
  vocab_multiple: int = 128
  attention_kernel: str = 'auto'  # attention.KERNELS; 'auto': by the platform compiled for
  # Residual dropout: on each attention and MLP output before it joins the residual stream (its
  # cross-attention blocks' too, where this tower queries), in training steps only.
  dropout_rate: float = 0.0

  def __post_init__(self):
    for name in ('dtype', 'param_dtype'):
      if isinstance(getattr(self, name), str):
        object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}')
    if self.remat not in stacks.REMAT_POLICIES:
      raise ValueError(f'remat={self.remat!r}; expected one of {sorted(stacks.REMAT_POLICIES)}')
    if self.attention_kernel not in attention.KERNELS:
      raise ValueError(f'attention_kernel={self.attention_kernel!r}; expected one of '
                       f'{attention.KERNELS}')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for rotary embeddings')
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'dropout_rate={self.dropout_rate} must be in [0, 1)')

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class DecoderBlock(nn.Module):
  """Pre-norm block: causal self-attention then SwiGLU MLP, each on the residual stream."""
  config: TowerConfig

  @nn.compact
  def __call__(self, h, inputs: TowerInput, cache: KVCache | None = None):
    """With a `cache` (already `advance`d over `inputs`), stores this block's keys and values.
    Dropout acts only where the block is applied with a 'dropout' rng (`stacks.layer_rngs`)."""
    c = self.config
    dropout = residual_dropout(self, c)
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_attention_norm')(h)
    self_attention = Attention(c.embed_dim, c.num_heads, c.kv_heads, c.head_dim, c.rope_theta,
                               c.dtype, c.param_dtype, c.qkv_bias, c.attention_kernel,
                               name='attention')
    keys, values = self_attention.project_kv(x, inputs.positions)
    key_positions, key_segments = inputs.positions, inputs.segment_ids
    if cache is not None:
      cache = cache.store(keys, values)
      keys, values = cache.keys, cache.values
      key_positions, key_segments = cache.positions, cache.segment_ids
    visibility = attention.Visibility(inputs.positions, inputs.segment_ids, key_positions,
                                      key_segments)
    h = h + dropout(self_attention.attend(x, keys, values, visibility, inputs.positions))
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_mlp_norm')(h)
    h = h + dropout(MLP(c.mlp_dim, c.dtype, c.param_dtype, name='mlp')(x))
    return constrain(h, ('batch', 'length', 'embed')), cache


def residual_dropout(module: nn.Module, config: TowerConfig) -> nn.Dropout:
  """`config`'s dropout for a block's sublayer outputs, each call a fresh mask; the identity
  where `module` has no 'dropout' rng (evaluation, decoding)."""
  return nn.Dropout(config.dropout_rate, deterministic=not module.has_rng('dropout'))


def example_input(width: int | None = None):
  """A one-token input (and hidden state of `width`) to create a layer's parameters with."""
  inputs = TowerInput.from_tokens(jnp.zeros((1, 1), jnp.int32))
  return inputs if width is None else (jnp.zeros((1, 1, width)), inputs)


class Tower(nn.Module):
  config: TowerConfig

  def setup(self):
    c = self.config
    self.embedder = nn.Embed(
        c.padded_vocab_size, c.embed_dim, dtype=c.dtype, param_dtype=c.param_dtype,
        embedding_init=partitioned(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=1, out_axis=0),
            ('vocab', 'embed')))
    self.blocks = self.param('blocks', stacks.stacked(DecoderBlock(c, parent=None), c.num_layers,
                                                      *example_input(c.embed_dim)))
    self.final_norm = RMSNorm(c.norm_epsilon, c.dtype)
    if not c.tie_embeddings:
      self.lm_head = Dense(c.padded_vocab_size, ('embed', 'vocab'), dtype=c.dtype,
                           param_dtype=c.param_dtype)

  def embed(self, tokens):
    return constrain(self.embedder(tokens), ('batch', 'length', 'embed'))

  def logits(self, h):
    """[batch, length, padded_vocab_size] float32; padded ids get the lowest float, so that no
    loss, softmax or decoder ever gives them weight."""
    c = self.config
    h = self.final_norm(h)
    logits = self.embedder.attend(h) if c.tie_embeddings else self.lm_head(h)
    logits = constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))
    if c.padded_vocab_size == c.vocab_size:
      return logits
    return jnp.where(jnp.arange(c.padded_vocab_size) < c.vocab_size, logits,
                     jnp.finfo(jnp.float32).min)

  def __call__(self, inputs: TowerInput, cache: KVCache | None = None):
    """Returns (logits [batch, length, vocab] float32, the updated cache or None)."""
    c = self.config
    block = block_function(c, inputs)
    if cache is not None:
      cache = cache.advance(inputs.positions, inputs.segment_ids)

    def step(h, layer):
      params, rng, keys, values = layer
      h, layer_cache = block(params, h, None if cache is None else cache.layer(keys, values), rng)
      return h, (None if cache is None else (layer_cache.keys, layer_cache.values))

    kv = (None, None) if cache is None else (cache.keys, cache.values)
    rngs = stacks.layer_rngs(self, c.dropout_rate, c.num_layers)
    h, kv = jax.lax.scan(step, self.embed(inputs.tokens), (self.blocks, rngs, *kv),
                         unroll=not c.scan_layers)
    return self.logits(h), (None if cache is None else cache.replace(keys=kv[0], values=kv[1]))


def block_function(config: TowerConfig, inputs: TowerInput):
  """One block as a pure function (params, h, cache, dropout rng or None) -> (h, cache), for a
  tower's `inputs`."""
  block = stacks.layer_function(DecoderBlock(config, parent=None), config.remat,
                                unrolled=not config.scan_layers)
  return lambda params, h, cache, rng: block(params, rng, h, inputs, cache)


def init_cache(config: TowerConfig, batch: int, size: int) -> KVCache:
  """An empty self-attention cache of all blocks, for decoding up to `size` tokens."""
  return KVCache.empty(config.num_layers, batch, size, config.kv_heads, config.head_dim,
                       config.dtype)
