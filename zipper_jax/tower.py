"""A tower: an ordinary Llama-style decoder-only LM, usable alone and, unchanged, inside a Zipper.

The Zipper drives a tower block by block (`embed`, `block`, `logits`) so that it can interleave
cross-attention between towers; `__call__` is the same path without it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipper_jax.inputs import TowerInput
from zipper_jax.layers import MLP, Attention, Dense, KVCache, RMSNorm, constrain, partitioned
from zipper_jax.masks import attention_mask


# 'full' keeps only each block's input; 'dots' also keeps the matmul outputs (less recompute).
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def rematerialised(module: type[nn.Module], remat: str) -> type[nn.Module]:
  """`module`, recomputed in the backward pass under policy `remat` unless it is 'none'."""
  return module if remat == 'none' else nn.remat(module, policy=REMAT_POLICIES[remat])


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
  dtype: Any = jnp.float32  # compute
  param_dtype: Any = jnp.float32
  remat: str = 'none'  # recompute block activations in the backward pass: see REMAT_POLICIES

  def __post_init__(self):
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for rotary embeddings')

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads


class DecoderBlock(nn.Module):
  """Pre-norm block: causal self-attention then SwiGLU MLP, each on the residual stream."""
  config: TowerConfig

  @nn.compact
  def __call__(self, h, inputs: TowerInput, cache: KVCache | None = None):
    c = self.config
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_attention_norm')(h)
    attention = Attention(c.embed_dim, c.num_heads, c.kv_heads, c.head_dim, c.rope_theta,
                          c.dtype, c.param_dtype, c.qkv_bias, name='attention')
    keys, values = attention.project_kv(x, inputs.positions)
    key_positions, key_segments = inputs.positions, inputs.segment_ids
    if cache is not None:
      cache = cache.append(keys, values, inputs.positions, inputs.segment_ids)
      keys, values = cache.keys, cache.values
      key_positions, key_segments = cache.positions, cache.segment_ids
    mask = attention_mask(inputs.positions, inputs.segment_ids, key_positions, key_segments,
                          strict=False)
    h = h + attention.attend(x, keys, values, mask, inputs.positions)
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_mlp_norm')(h)
    h = h + MLP(c.mlp_dim, c.dtype, c.param_dtype, name='mlp')(x)
    return constrain(h, ('batch', 'length', 'embed')), cache


class Tower(nn.Module):
  config: TowerConfig

  def setup(self):
    c = self.config
    self.embedder = nn.Embed(
        c.vocab_size, c.embed_dim, dtype=c.dtype, param_dtype=c.param_dtype,
        embedding_init=partitioned(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=1, out_axis=0),
            ('vocab', 'embed')))
    block = rematerialised(DecoderBlock, c.remat)
    self.blocks = [block(c, name=f'block_{i}') for i in range(c.num_layers)]
    self.final_norm = RMSNorm(c.norm_epsilon, c.dtype)
    if not c.tie_embeddings:
      self.lm_head = Dense(c.vocab_size, ('embed', 'vocab'), dtype=c.dtype,
                           param_dtype=c.param_dtype)

  def embed(self, tokens):
    return constrain(self.embedder(tokens), ('batch', 'length', 'embed'))

  def block(self, index: int, h, inputs: TowerInput, cache: KVCache | None = None):
    return self.blocks[index](h, inputs, cache)

  def logits(self, h):
    h = self.final_norm(h)
    logits = self.embedder.attend(h) if self.config.tie_embeddings else self.lm_head(h)
    return constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))

  def __call__(self, inputs: TowerInput, caches: Sequence[KVCache] | None = None):
    """Returns (logits [batch, length, vocab] float32, updated caches or None)."""
    h = self.embed(inputs.tokens)
    new_caches = []
    for i in range(self.config.num_layers):
      h, cache = self.block(i, h, inputs, None if caches is None else caches[i])
      new_caches.append(cache)
    return self.logits(h), (None if caches is None else new_caches)


def init_caches(config: TowerConfig, batch: int, size: int) -> list[KVCache]:
  """Empty self-attention caches for decoding up to `size` tokens of this tower."""
  return [KVCache.empty(batch, size, config.kv_heads, config.head_dim, config.dtype)
          for _ in range(config.num_layers)]
