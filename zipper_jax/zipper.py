"""The Zipper: independently pre-trained towers fused by gated cross-attention (Zayats et al. 2024).

A directed edge `(query, key, interval)` makes tower `query`, after every `interval`-th of its
blocks, cross-attend to tower `key`'s hidden states at the same relative depth. Towers therefore
run in lockstep, block by block; any number of towers and any set of edges is allowed as long as
the dependencies they imply are acyclic.

Choices where the paper is silent:
  * Keys are the key tower's states right after its aligned block, before that tower's own
    cross-attention at that depth (so two-way edges at equal depths update both towers at once).
  * Block l of a tower of depth L_q reads block round((l + 1) * L_k / L_q) - 1 of a tower of depth
    L_k, rounding halves up and clamping at block 0.
  * No rotary embedding in cross-attention by default: order between towers is carried by the
    mask alone. `cross_attention_clock` puts every tower's positions on one clock instead.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp

from zipper_jax.inputs import TowerInput
from zipper_jax.layers import MLP, Attention, Dense, KVCache, RMSNorm, constrain, partitioned
from zipper_jax.masks import attention_mask
from zipper_jax.tower import Tower, TowerConfig, init_caches as init_tower_caches, rematerialised

INPUT_PROJECTIONS = ('none', 'residual', 'paper')


@dataclasses.dataclass(frozen=True)
class Edge:
  """`query` cross-attends to `key` after each `interval`-th block of `query`."""
  query: str
  key: str
  interval: int = 1


@dataclasses.dataclass(frozen=True)
class ZipperConfig:
  towers: Mapping[str, TowerConfig]
  edges: tuple[Edge, ...]
  input_projection: str = 'residual'
  # Tower -> clock ticks per token: cross-attention then rotates queries and keys by their
  # positions on one shared clock (say 40 ms ticks: speech at 25 Hz is 1.0, text at ~3.6 tokens
  # a second is 7.0), a prior for monotonic alignment. None: no positions (the paper).
  cross_attention_clock: Mapping[str, float] | None = None

  def __post_init__(self):
    # Edges may be given as (query, key, interval) tuples, as gin files do.
    object.__setattr__(self, 'edges', tuple(
        e if isinstance(e, Edge) else Edge(*e) for e in self.edges))
    if self.input_projection not in INPUT_PROJECTIONS:
      raise ValueError(f'input_projection={self.input_projection!r}; expected one of '
                       f'{INPUT_PROJECTIONS}')
    seen = set()
    for edge in self.edges:
      for name in (edge.query, edge.key):
        if name not in self.towers:
          raise ValueError(f'{edge} names tower {name!r}; towers are {sorted(self.towers)}')
      if edge.query == edge.key or edge.interval < 1 or (edge.query, edge.key) in seen:
        raise ValueError(f'{edge}: an edge joins two different towers, once, with interval >= 1')
      seen.add((edge.query, edge.key))
    clock = self.cross_attention_clock
    if clock is not None and set(clock) != set(self.towers):
      raise ValueError(f'cross_attention_clock={dict(clock)} must give ticks per token for '
                       f'exactly the towers {sorted(self.towers)}')

  def cross_layers(self, name: str) -> list[tuple[int, Edge, int]]:
    """(query block, edge, aligned key block) for every cross-attention into tower `name`."""
    depth = self.towers[name].num_layers
    return [(block, edge, aligned_block(block, depth, self.towers[edge.key].num_layers))
            for edge in self.edges if edge.query == name
            for block in range(edge.interval - 1, depth, edge.interval)]


def aligned_block(block: int, query_depth: int, key_depth: int) -> int:
  """The key tower's block at the same relative depth as the query tower's `block`."""
  return max(0, math.floor((block + 1) * key_depth / query_depth + 0.5) - 1)


def clock(config: ZipperConfig, edge: Edge) -> tuple[float, float] | None:
  if config.cross_attention_clock is None:
    return None
  return config.cross_attention_clock[edge.query], config.cross_attention_clock[edge.key]


def cross_name(edge: Edge, block: int) -> str:
  return f'cross_{edge.query}_from_{edge.key}_{block}'


class InputProjection(nn.Module):
  """Projection after a tower's input embeddings: `paper` ReLU(MLP(e)) or `residual` e + MLP(e).

  The residual form starts as the identity (zero-initialised output layer), so that a zipped
  pre-trained tower initially computes exactly what it computed alone.
  """
  kind: str
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, e):
    dense = lambda axes, name, init=None: Dense(
        e.shape[-1], axes, use_bias=True, kernel_init=init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    hidden = nn.relu(dense(('embed', 'mlp'), 'hidden')(e))
    if self.kind == 'paper':
      return nn.relu(dense(('mlp', 'embed'), 'output')(hidden))
    return e + dense(('mlp', 'embed'), 'output', nn.initializers.zeros)(hidden)


class CrossAttentionBlock(nn.Module):
  """Flamingo-style gated cross-attention and MLP; one module serves every edge and depth.

  h += tanh(g_attn) * XAttn(norm(h), proj(norm(key_states)));  h += tanh(g_mlp) * MLP(norm(h)).
  Gates start at 0, so a fresh block is the identity. With a `clock`, queries and keys are
  rotated by their own tower's positions times its ticks per token (`cross_attention_clock`).
  """
  config: TowerConfig  # of the query tower: width and heads follow it
  clock: tuple[float, float] | None = None  # (query, key) ticks per token; None: no rotary

  @nn.compact
  def __call__(self, h, inputs: TowerInput, key_states=None, key_inputs: TowerInput | None = None,
               cache: KVCache | None = None):
    """Reads the key tower from `key_states` if given, else from `cache`; returns (h, cache)."""
    c = self.config
    attention = Attention(c.embed_dim, c.num_heads, c.kv_heads, c.head_dim,
                          None if self.clock is None else c.rope_theta, c.dtype, c.param_dtype,
                          name='attention')
    on_clock = lambda tower_input, side: (
        None if self.clock is None else tower_input.positions * self.clock[side])
    if key_states is not None:
      normed = RMSNorm(c.norm_epsilon, c.dtype, name='key_norm')(key_states)
      projected = Dense(c.embed_dim, ('key_embed', 'embed'), dtype=c.dtype,
                        param_dtype=c.param_dtype, name='key_projection')(normed)
      keys, values = attention.project_kv(projected, on_clock(key_inputs, 1))
      cache = KVCache.full(keys, values, key_inputs.interleaved_positions,
                           key_inputs.segment_ids)
    mask = attention_mask(inputs.interleaved_positions, inputs.segment_ids, cache.positions,
                          cache.segment_ids, strict=True)
    gate = lambda name: jnp.tanh(self.param(name, partitioned(nn.initializers.zeros, ()), (),
                                            jnp.float32)).astype(c.dtype)
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_attention_norm')(h)
    h = h + gate('attention_gate') * attention.attend(x, cache.keys, cache.values, mask,
                                                      on_clock(inputs, 0))
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_mlp_norm')(h)
    h = h + gate('mlp_gate') * MLP(c.mlp_dim, c.dtype, c.param_dtype, name='mlp')(x)
    return constrain(h, ('batch', 'length', 'embed')), cache


class Zipper(nn.Module):
  """Towers (each parameter subtree named after its tower, exactly as the tower alone) + edges."""
  config: ZipperConfig

  def setup(self):
    c = self.config
    self.towers = {name: Tower(tc, name=name) for name, tc in c.towers.items()}
    if c.input_projection != 'none':
      self.input_projections = {
          name: InputProjection(c.input_projection, tc.dtype, tc.param_dtype,
                                name=f'input_projection_{name}')
          for name, tc in c.towers.items()}
    # Cross-attention blocks are rematerialised as their query tower's blocks are.
    self.cross = {
        cross_name(edge, block): rematerialised(CrossAttentionBlock, c.towers[name].remat)(
            c.towers[name], clock(c, edge), name=cross_name(edge, block))
        for name in c.towers for block, edge, _ in c.cross_layers(name)}

  def __call__(self, inputs: Mapping[str, TowerInput], caches: dict | None = None):
    """Runs the towers present in `inputs` in lockstep.

    Returns ({tower: logits [batch, length, vocab]}, caches). With `caches` (see `init_caches`),
    the towers in `caches['towers']` use and extend their self-attention caches, and their
    cross-attention keys/values are returned in `caches['cross']`; an edge whose key tower is
    absent from `inputs` reads them from there. That makes prefill and each decode step one call.
    """
    c = self.config
    for name in inputs:
      if name not in c.towers:
        raise KeyError(f'input for unknown tower {name!r}; towers are {sorted(c.towers)}')
    cached_towers = {} if caches is None else caches['towers']
    new_caches = {'towers': {n: [] for n in cached_towers}, 'cross': {}}
    h = {}
    for name, x in inputs.items():
      h[name] = self.towers[name].embed(x.tokens)
      if c.input_projection != 'none':
        h[name] = self.input_projections[name](h[name])

    after_block = {name: {} for name in inputs}  # tower -> block -> states (keys for others)
    next_block = {name: 0 for name in inputs}
    unfinished = lambda: [n for n in inputs if next_block[n] < c.towers[n].num_layers]
    while pending := unfinished():
      progressed = False
      for name in pending:
        block = next_block[name]
        if block not in after_block[name]:
          cache = cached_towers[name][block] if name in cached_towers else None
          h[name], cache = self.towers[name].block(block, h[name], inputs[name], cache)
          after_block[name][block] = h[name]
          if name in cached_towers:
            new_caches['towers'][name].append(cache)
          progressed = True
        edges = [(edge, key_block) for b, edge, key_block in c.cross_layers(name) if b == block]
        if any(e.key in inputs and kb not in after_block[e.key] for e, kb in edges):
          continue  # wait for the other tower to reach the aligned depth
        for edge, key_block in edges:
          layer = cross_name(edge, block)
          if edge.key in inputs:
            h[name], cache = self.cross[layer](h[name], inputs[name],
                                               after_block[edge.key][key_block], inputs[edge.key])
          elif caches is not None and layer in caches['cross']:
            h[name], cache = self.cross[layer](h[name], inputs[name], cache=caches['cross'][layer])
          else:
            raise ValueError(f'{layer}: tower {edge.key!r} is neither in the inputs nor cached')
          if name in cached_towers:
            new_caches['cross'][layer] = cache
        next_block[name] += 1
        progressed = True
      if not progressed:
        raise ValueError(f'edges {c.edges} make towers {pending} wait on each other (a cycle)')

    logits = {name: self.towers[name].logits(h[name]) for name in inputs}
    return logits, (None if caches is None else new_caches)


def init_caches(config: ZipperConfig, tower: str, batch: int, size: int) -> dict:
  """Empty caches for decoding `size` tokens of `tower`; prefill fills its cross-attention ones."""
  return {'towers': {tower: init_tower_caches(config.towers[tower], batch, size)}, 'cross': {}}
