"""Transformer layers shared by every tower and by the Zipper's cross-attention blocks.

Every parameter is created with logical axis names and every large activation is constrained to
them; `partitioning.py` maps the names onto a device mesh. Parameters are stored in `param_dtype`
and computed in `dtype`; normalisation statistics and softmax run in float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from zipper_jax import attention

Dtype = Any
Initializer = Any
partitioned = nn.with_logical_partitioning
constrain = nn.with_logical_constraint
KV_AXES = ('batch', 'length', 'kv_heads', 'kv')  # keys and values, as computed and as cached


class Dense(nn.Module):
  """A linear map contracting the last `contract` axes of its input, kernel kept at full rank.

  Unlike `nn.DenseGeneral` (which initialises a flattened kernel and reshapes it), the kernel is
  created at its real shape, so its logical axis names apply to it under a mesh as well.
  The default initialiser is fan-in scaled over all contracted axes.
  """
  features: int | tuple[int, ...]
  kernel_axes: tuple[str | None, ...]  # contracted axes first, then output axes
  contract: int = 1
  use_bias: bool = False
  kernel_init: Initializer | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    shape = x.shape[x.ndim - self.contract:] + features
    init = self.kernel_init or nn.initializers.variance_scaling(
        1.0, 'fan_in', 'truncated_normal', in_axis=tuple(range(self.contract)),
        out_axis=tuple(range(self.contract, len(shape))))
    kernel = self.param('kernel', partitioned(init, self.kernel_axes), shape, self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.contract)
    if self.use_bias:
      bias = self.param('bias', partitioned(nn.initializers.zeros,
                                            self.kernel_axes[self.contract:]),
                        features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', partitioned(nn.initializers.ones, ('embed',)), (x.shape[-1],),
                       jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale).astype(self.dtype)


def apply_rotary(x, positions, theta: float):
  """Rotary position embedding, half-split layout (as Llama checkpoints in `transformers`)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, half]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class MLP(nn.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""
  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda features, axes, name: Dense(
        features, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    gate = checkpoint_name(dense(self.hidden_dim, ('embed', 'mlp'), 'gate')(x), 'mlp_gate')
    up = checkpoint_name(dense(self.hidden_dim, ('embed', 'mlp'), 'up')(x), 'mlp_up')
    hidden = constrain(nn.silu(gate) * up, ('batch', 'length', 'mlp'))
    return checkpoint_name(dense(x.shape[-1], ('mlp', 'embed'), 'down')(hidden), 'mlp_out')


@flax.struct.dataclass
class KVCache:
  """Keys and values of attention layers, with the coordinates their masks are made from.

  A stack of layers keeps one cache: keys and values carry a leading `layers` axis, the
  coordinates (the same for every layer) are kept once. Self-attention caches are allocated empty
  at the decode length; a call `advance`s the coordinates over its new tokens, then each layer
  `store`s their keys and values (all rows share `end_index`: prompts of the decoded tower are
  left-padded). Cross-attention caches hold the other tower's projected keys and values, computed
  once at prefill.
  """
  keys: jnp.ndarray  # [(layers,) batch, size, kv_heads, head_dim]
  values: jnp.ndarray  # [(layers,) batch, size, kv_heads, head_dim]
  positions: jnp.ndarray  # [batch, size]
  segment_ids: jnp.ndarray  # [batch, size], 0 = empty slot or padding
  end_index: jnp.ndarray  # [] int32: slots filled so far

  @classmethod
  def empty(cls, layers: int, batch: int, size: int, kv_heads: int, head_dim: int,
            dtype: Dtype) -> KVCache:
    kv = constrain(jnp.zeros((layers, batch, size, kv_heads, head_dim), dtype),
                   ('layers',) + KV_AXES)
    coords = constrain(jnp.zeros((batch, size), jnp.int32), ('batch', 'length'))
    return cls(kv, kv, coords, coords, jnp.zeros((), jnp.int32))

  @classmethod
  def full(cls, keys, values, positions, segment_ids) -> KVCache:
    return cls(keys, values, positions, segment_ids, jnp.asarray(keys.shape[-3], jnp.int32))

  def advance(self, positions, segment_ids) -> KVCache:
    """Takes the coordinates of `positions.shape[1]` new tokens, before their keys are stored."""
    update = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), self.end_index, axis=1)
    return self.replace(positions=update(self.positions, positions),
                        segment_ids=update(self.segment_ids, segment_ids),
                        end_index=self.end_index + positions.shape[1])

  def store(self, keys, values) -> KVCache:
    """One layer's cache with the newest tokens' `keys` and `values` in their slots."""
    start = self.end_index - keys.shape[1]
    update = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), start, axis=cache.ndim - 3)
    return self.replace(keys=update(self.keys, keys), values=update(self.values, values))

  def layer(self, keys, values) -> KVCache:
    """The cache of one layer of the stack, given that layer's slices of keys and values."""
    return self.replace(keys=keys, values=values)

  def take_rows(self, rows) -> KVCache:
    """The cache of batch rows `rows` (beam search copies and reorders rows)."""
    take = lambda x, axis: jnp.take(x, rows, axis=x.ndim + axis)
    return self.replace(keys=take(self.keys, -4), values=take(self.values, -4),
                        positions=take(self.positions, -2),
                        segment_ids=take(self.segment_ids, -2))


class Attention(nn.Module):
  """Multi-head attention with grouped K/V heads.

  Split into `project_kv` and `attend` so that a caller can cache keys and values: self-attention
  appends them to a growing cache, cross-attention computes them once from the other tower.
  `rope_theta=None` turns rotary embeddings off (cross-attention: the two towers' positions are
  not comparable). `qkv_bias` adds biases to the query, key and value projections (Qwen2).
  `kernel` is the attention kernel (`attention.KERNELS`).
  """
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float | None = 10_000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: bool = False
  kernel: str = 'auto'

  def setup(self):
    dense = lambda features, axes, contract=1, use_bias=False: Dense(
        features, axes, contract, use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    self.query = dense((self.num_heads, self.head_dim), ('embed', 'heads', 'kv'),
                       use_bias=self.qkv_bias)
    self.key = dense((self.num_kv_heads, self.head_dim), ('embed', 'kv_heads', 'kv'),
                     use_bias=self.qkv_bias)
    self.value = dense((self.num_kv_heads, self.head_dim), ('embed', 'kv_heads', 'kv'),
                       use_bias=self.qkv_bias)
    self.out = dense(self.embed_dim, ('heads', 'kv', 'embed'), contract=2)

  def project_kv(self, x, positions=None):
    keys = checkpoint_name(self.key(x), 'key_proj')
    values = checkpoint_name(self.value(x), 'value_proj')
    if self.rope_theta is not None:
      keys = apply_rotary(keys, positions, self.rope_theta)
    return constrain(keys, KV_AXES), constrain(values, KV_AXES)

  def attend(self, x, keys, values, visibility: attention.Visibility, positions=None):
    """A query that sees no key (`visibility`) outputs exactly zero."""
    query = checkpoint_name(self.query(x), 'query_proj')
    if self.rope_theta is not None:
      query = apply_rotary(query, positions, self.rope_theta)
    query = constrain(query, ('batch', 'length', 'heads', 'kv'))
    # Initialisation needs only shapes (of a one-token example): no kernel's constraints apply.
    kernel = 'xla' if self.is_initializing() else self.kernel
    out = attention.attend(query, keys.astype(query.dtype), values.astype(query.dtype),
                           visibility, kernel)
    out = constrain(out, ('batch', 'length', 'heads', 'kv'))
    return checkpoint_name(self.out(out), 'out_proj')

