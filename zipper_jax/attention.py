"""Attention math, in one place: which keys a query sees, and the kernels that attend.

Visibility is a rule over the tokens' coordinates (`Visibility`), never a stored [queries, keys]
tensor outside the reference kernel: a key is visible iff it is in the query's (non-padding)
segment and its position is not after the query's (self-attention, over a tower's own positions)
or strictly before it (`strict`: cross-attention, over interleaved positions). A query that sees
no key outputs exactly zero, with every kernel.

Kernels (`TowerConfig.attention_kernel`):
  xla      the reference: scores and mask materialised, [batch, heads, queries, keys];
  chunked  FlashAttention in `jnp`: a scan over blocks of keys with an online softmax, whose
           backward pass recomputes each block's scores (`jax.custom_vjp`); memory linear in
           length, any platform; the CPU default;
  cudnn    cuDNN's fused attention (`jax.nn.dot_product_attention`); the GPU default;
  splash   the Pallas TPU splash kernel, per device inside `shard_map`; the TPU default;
  auto     the default of the platform the step is traced for (its mesh's devices).
cuDNN and splash mask by index order, so they serve causal self-attention only: cross-attention's
interleaved rule and cached decoding take `chunked` (said once in the log), as do batches whose
coordinates do not follow index order, checked per batch (packed rows, for cuDNN).
"""
from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

KERNELS = ('auto', 'xla', 'chunked', 'cudnn', 'splash')
PLATFORM_DEFAULTS = {'tpu': 'splash', 'gpu': 'cudnn', 'cuda': 'cudnn'}  # else 'chunked'
BLOCK_SIZE = 512  # keys per block of `chunked`
SPLASH_BLOCK_SIZE = 512  # queries and keys per block of `splash` (at most)
SPLASH_MULTIPLE = 128  # splash's lengths are padded to a multiple of this (its smallest block)


@flax.struct.dataclass
class Visibility:
  """The coordinates that decide which keys each query sees (see the module docstring)."""
  query_positions: jax.Array  # [batch, queries] int32
  query_segments: jax.Array  # [batch, queries] int32, 0 = padding
  key_positions: jax.Array  # [batch, keys]
  key_segments: jax.Array  # [batch, keys]
  strict: bool = flax.struct.field(pytree_node=False, default=False)

  def mask(self) -> jax.Array:
    """[batch, queries, keys] booleans: the reference kernel's mask."""
    return visible(self.query_positions, self.query_segments, self.key_positions,
                   self.key_segments, self.strict)

  @property
  def is_self_attention(self) -> bool:
    """Keys are the queries' own tokens (not a cache, not another tower)."""
    return (not self.strict and self.key_positions is self.query_positions and
            self.key_segments is self.query_segments)


def visible(query_positions, query_segments, key_positions, key_segments, strict: bool):
  """[batch, queries, keys]: whether each query sees each key."""
  q_pos, k_pos = query_positions[:, :, None], key_positions[:, None, :]
  order = k_pos < q_pos if strict else k_pos <= q_pos
  k_seg = key_segments[:, None, :]
  return order & (query_segments[:, :, None] == k_seg) & (k_seg != 0)


def attend(query, key, value, visibility: Visibility, kernel: str = 'auto'):
  """query [batch, queries, heads, head_dim], key and value [batch, keys, kv_heads, head_dim]
  (heads a multiple of kv_heads) -> [batch, queries, heads, head_dim], scaled by head_dim**-0.5."""
  return KERNEL_FUNCTIONS[resolve(kernel)](query, key, value, visibility)


def resolve(kernel: str) -> str:
  """`kernel`, with 'auto' replaced by the default of the platform being compiled for."""
  if kernel not in KERNELS:
    raise ValueError(f'attention_kernel={kernel!r}; expected one of {KERNELS}')
  return kernel if kernel != 'auto' else PLATFORM_DEFAULTS.get(_platform(), 'chunked')


def _platform() -> str:
  """The platform being compiled for: the devices of the mesh in context, else JAX's default."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def xla(query, key, value, visibility: Visibility):
  """Every score materialised, [batch, kv_heads, groups * queries, keys] in float32, in plain
  `jnp`. Not `jax.nn.dot_product_attention`: XLA:CPU differentiates its grouped five-dimensional
  layout slowly (forward and backward at the demo's speech shape, batch 4, 384 tokens, 4 heads:
  20.5 ms against 6.0 here, 2026-12-05), and `chunked` runs this below 512 keys, the CPU default.
  The queries sharing a KV head share its axis, so keys and values are never repeated."""
  batch, queries, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  groups = heads // kv_heads
  by_kv_head = jnp.moveaxis(_grouped(query, kv_heads), 1, 3).reshape(batch, kv_heads, -1, head_dim)
  scores = jnp.einsum('bhqd,bkhd->bhqk', by_kv_head, key, preferred_element_type=jnp.float32)
  mask = jnp.tile(visibility.mask()[:, None], (1, 1, groups, 1))
  scores = jnp.where(mask, scores * head_dim ** -0.5, -jnp.inf)
  # The softmax, shifted by each row's largest score (a constant to the gradient: the softmax
  # does not depend on it); a row that sees no key sums to zero and outputs zero.
  top = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
  p = jnp.exp(scores - jnp.where(top == -jnp.inf, 0.0, top))
  total = p.sum(axis=-1, keepdims=True)
  out = jnp.einsum('bhqk,bkhd->bhqd', p.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  out = jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0), 0.0)
  out = jnp.moveaxis(out.reshape(batch, kv_heads, groups, queries, head_dim), 3, 1)
  return out.reshape(batch, queries, heads, head_dim).astype(query.dtype)


def chunked(query, key, value, visibility: Visibility, block_size: int | None = None):
  """FlashAttention over blocks of `block_size` (default `BLOCK_SIZE`) keys, the last block
  padded with invisible keys. Keys that fit in one block are the reference's program: the same
  memory, and XLA fuses it."""
  block_size = block_size or BLOCK_SIZE
  if key.shape[1] <= block_size:
    return xla(query, key, value, visibility)
  v = visibility
  block = block_size
  pad = -key.shape[1] % block
  pad_keys = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return _flash(block, v.strict, query, pad_keys(key), pad_keys(value), v.query_positions,
                v.query_segments, pad_keys(v.key_positions), pad_keys(v.key_segments))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(block, strict, query, key, value, q_pos, q_seg, k_pos, k_seg):
  return _flash_forward(block, strict, query, key, value, q_pos, q_seg, k_pos, k_seg)[0]


def _grouped(x, kv_heads):
  """[batch, length, heads, d] -> [batch, length, kv_heads, heads // kv_heads, d]."""
  return x.reshape(x.shape[:2] + (kv_heads, x.shape[2] // kv_heads, x.shape[3]))


def _scan_key_blocks(step, init, block, *arrays):
  """`lax.scan`s `step` over blocks of `block` keys of [batch, keys, ...] `arrays` (each step
  gets [batch, block, ...] slices)."""
  split = lambda x: jnp.moveaxis(x.reshape((x.shape[0], -1, block) + x.shape[2:]), 1, 0)
  return jax.lax.scan(step, init, tuple(split(x) for x in arrays))


def _scores(query, key, scale):
  """[batch, kv_heads, groups, queries, keys] float32 of grouped queries and one block of keys."""
  return jnp.einsum('bqkgd,bskd->bkgqs', query, key, preferred_element_type=jnp.float32) * scale


def _flash_forward(block, strict, query, key, value, q_pos, q_seg, k_pos, k_seg):
  batch, queries, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  scale = head_dim ** -0.5
  grouped = _grouped(query, kv_heads)

  def step(carry, blocks):
    top, total, acc = carry  # running max and sum of exp(score - max), weighted values
    k, v, kp, ks = blocks
    seen = visible(q_pos, q_seg, kp, ks, strict)[:, None, None]
    scores = jnp.where(seen, _scores(grouped, k, scale), -jnp.inf)
    new_top = jnp.maximum(top, scores.max(axis=-1))
    shift = jnp.where(new_top == -jnp.inf, 0.0, new_top)  # no key seen yet: nothing to shift
    p = jnp.exp(scores - shift[..., None])
    rescale = jnp.exp(top - shift)
    acc = acc * rescale[..., None] + jnp.einsum('bkgqs,bskd->bkgqd', p.astype(v.dtype), v,
                                                preferred_element_type=jnp.float32)
    return (new_top, total * rescale + p.sum(axis=-1), acc), None

  stats = (batch, kv_heads, heads // kv_heads, queries)
  init = (jnp.full(stats, -jnp.inf), jnp.zeros(stats), jnp.zeros(stats + (head_dim,)))
  (top, total, acc), _ = _scan_key_blocks(step, init, block, key, value, k_pos, k_seg)
  sees_any = total > 0
  out = jnp.where(sees_any[..., None], acc / jnp.where(sees_any, total, 1.0)[..., None], 0.0)
  out = jnp.moveaxis(out, 3, 1).reshape(query.shape).astype(query.dtype)
  log_sum = jnp.where(sees_any, top + jnp.log(jnp.where(sees_any, total, 1.0)), 0.0)
  return out, (query, key, value, q_pos, q_seg, k_pos, k_seg, out, log_sum)


def _flash_backward(block, strict, residuals, d_out):
  query, key, value, q_pos, q_seg, k_pos, k_seg, out, log_sum = residuals
  head_dim, kv_heads = query.shape[-1], key.shape[2]
  scale = head_dim ** -0.5
  grouped, d_grouped = _grouped(query, kv_heads), _grouped(d_out, kv_heads)
  # Row sums of d_out * out: the softmax's backward, without its [queries, keys] Jacobian.
  delta = jnp.einsum('bqkgd,bqkgd->bkgq', d_grouped.astype(jnp.float32),
                     _grouped(out, kv_heads).astype(jnp.float32))

  def step(d_query, blocks):
    k, v, kp, ks = blocks
    seen = visible(q_pos, q_seg, kp, ks, strict)[:, None, None]
    p = jnp.where(seen, jnp.exp(_scores(grouped, k, scale) - log_sum[..., None]), 0.0)
    d_value = jnp.einsum('bkgqs,bqkgd->bskd', p.astype(d_out.dtype), d_grouped,
                         preferred_element_type=jnp.float32)
    d_p = jnp.einsum('bqkgd,bskd->bkgqs', d_grouped, v, preferred_element_type=jnp.float32)
    d_scores = (p * (d_p - delta[..., None]) * scale).astype(query.dtype)
    d_query = d_query + jnp.einsum('bkgqs,bskd->bqkgd', d_scores, k,
                                   preferred_element_type=jnp.float32)
    d_key = jnp.einsum('bkgqs,bqkgd->bskd', d_scores, grouped, preferred_element_type=jnp.float32)
    return d_query, (d_key, d_value)

  d_query, (d_key, d_value) = _scan_key_blocks(
      step, jnp.zeros(grouped.shape, jnp.float32), block, key, value, k_pos, k_seg)
  merge = lambda d, like: jnp.moveaxis(d, 0, 1).reshape(like.shape).astype(like.dtype)
  return (d_query.reshape(query.shape).astype(query.dtype), merge(d_key, key),
          merge(d_value, value), None, None, None, None)


_flash.defvjp(_flash_forward, _flash_backward)


def follows_index_order(positions, segments):
  """[batch] booleans: whether, over a row's non-padding tokens in order, (segment, position)
  strictly increases. Then a key's position is not after a query's of the same segment iff its
  index is not after the query's: a kernel's causal mask by index is the rule by positions."""
  real = segments != 0
  index = jnp.arange(segments.shape[1])
  # The index of the last non-padding token before each token (-1: none).
  previous = jax.lax.cummax(jnp.where(real, index, -1), axis=1)
  previous = jnp.pad(previous[:, :-1], [(0, 0), (1, 0)], constant_values=-1)
  at_previous = lambda x: jnp.take_along_axis(x, jnp.maximum(previous, 0), axis=1)
  prev_seg, prev_pos = at_previous(segments), at_previous(positions)
  increases = (segments > prev_seg) | ((segments == prev_seg) & (positions > prev_pos))
  return jnp.all(~real | (previous < 0) | increases, axis=1)


@functools.cache
def _say_once(message: str):
  logging.warning(message)


def _index_order_kernel(name: str, query, key, value, visibility: Visibility, run, applies):
  """`run(query, key, value)` where `applies` (a traced boolean) and `visibility` is causal
  self-attention, else `chunked`."""
  if not visibility.is_self_attention:
    what = 'cross-attention' if visibility.strict else 'attention over a cache'
    _say_once(f'attention_kernel={name!r} masks by index order and cannot express {what}: '
              'it uses the chunked kernel')
    return chunked(query, key, value, visibility)
  fallback = lambda q, k, v: chunked(q, k, v, visibility)
  return jax.lax.cond(applies, run, fallback, query, key, value)


def cudnn(query, key, value, visibility: Visibility):
  """cuDNN's causal kernel with per-row lengths (rows of one segment, padded at the end), per
  device over the batch and heads it holds: under a mesh, cuDNN's own partitioning rule refuses
  the rematerialised backward pass ("Query, key and value should have same sharding")."""
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    _say_once(f'attention_kernel=\'cudnn\' needs bfloat16 or float16, not {query.dtype}: it uses '
              'the chunked kernel')
    return chunked(query, key, value, visibility)
  if not _divides_over_mesh('cudnn', query, key):
    return chunked(query, key, value, visibility)
  segments = visibility.query_segments
  lengths = jnp.sum(segments != 0, axis=1, dtype=jnp.int32)
  one_segment_first = jnp.all(
      segments == jnp.where(jnp.arange(segments.shape[1]) < lengths[:, None], segments[:, :1], 0))
  _say_once('attention_kernel=\'cudnn\' takes batches whose rows hold one segment each; others '
            '(packed rows) use the chunked kernel')

  def per_device(q, k, v, seg):
    lengths = jnp.sum(seg != 0, axis=1, dtype=jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                       key_value_seq_lengths=lengths, implementation='cudnn')
    return jnp.where((seg != 0)[:, :, None, None], out, 0)

  applies = one_segment_first & jnp.all(follows_index_order(visibility.query_positions, segments))
  fused = lambda q, k, v: _per_device(per_device, q, k, v, segments)
  return _index_order_kernel('cudnn', query, key, value, visibility, fused, applies)


def _divides_over_mesh(name: str, query, key) -> bool:
  """Whether the batch, heads and KV heads divide over the devices the rules spread them on (a
  kernel run per device needs whole rows and heads); says once when they do not."""
  mesh = jax.sharding.get_abstract_mesh()
  for what, x, axes in (('batch', query, ('batch',)), ('heads', query, (None, None, 'heads')),
                        ('kv_heads', key, (None, None, 'kv_heads'))):
    dim = len(axes) - 1
    over = () if mesh.empty else nn.logical_to_mesh_axes(axes)[dim] or ()
    devices = math.prod(mesh.shape[a] for a in ((over,) if isinstance(over, str) else over))
    if x.shape[dim] % devices:
      _say_once(f'attention_kernel={name!r}: {what} of {x.shape[dim]} does not divide over '
                f'{devices} devices: the chunked kernel')
      return False
  return True


def _per_device(kernel, query, key, value, segments):
  """`kernel(query, key, value, segments)` on each device's batch rows and heads (`shard_map`
  over the mesh in context), or once on the whole arrays without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel(query, key, value, segments)
  spec = lambda *axes: nn.logical_to_mesh_axes(axes)
  return jax.shard_map(
      kernel, in_specs=(spec('batch', None, 'heads', None), spec('batch', None, 'kv_heads', None),
                        spec('batch', None, 'kv_heads', None), spec('batch', None)),
      out_specs=spec('batch', None, 'heads', None), check_vma=False)(query, key, value, segments)


def splash(query, key, value, visibility: Visibility):
  """The splash kernel (causal mask by index, segment ids), per device over the batch and heads
  it holds. Off TPUs it runs in Pallas's interpreter (slow: for tests)."""
  if not _divides_over_mesh('splash', query, key):
    return chunked(query, key, value, visibility)
  segments = visibility.query_segments
  applies = jnp.all(follows_index_order(visibility.query_positions, segments))
  run = functools.partial(_splash, segments=segments)
  return _index_order_kernel('splash', query, key, value, visibility, run, applies)


def _splash(query, key, value, segments):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415 -- TPU only
      splash_attention_kernel as kernels, splash_attention_mask as masks)
  length = query.shape[1]
  pad = -length % SPLASH_MULTIPLE
  padded = length + pad
  pad_length = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  block = min(SPLASH_BLOCK_SIZE, padded)
  sizes = kernels.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                             block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                             block_q_dq=block, block_kv_dq=block)
  interpret = _platform() != 'tpu'

  def per_device(q, k, v, seg):
    heads_here = q.shape[2]
    mask = masks.MultiHeadMask([masks.CausalMask((padded, padded))] * heads_here)
    kernel = kernels.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                     interpret=interpret)
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [batch, heads, length, head_dim]
    out = jax.vmap(kernel)(heads_first(q * q.shape[-1] ** -0.5), heads_first(k), heads_first(v),
                           kernels.SegmentIds(seg, seg))
    return heads_first(out)

  out = _per_device(per_device, pad_length(query), pad_length(key), pad_length(value),
                    pad_length(segments))
  return jnp.where((segments != 0)[:, :, None, None], out[:, :length], 0)


KERNEL_FUNCTIONS = {'xla': xla, 'chunked': chunked, 'cudnn': cudnn, 'splash': splash}
