"""The Zipper: independently pre-trained towers fused by gated cross-attention (Zayats et al. 2024).

Edges (`wiring.py`) say which tower cross-attends to which, after which of its blocks; any number
of towers and edges is allowed. Towers run in lockstep, in stages that `wiring.schedule` computes
once from the config: one `lax.scan` step runs a few blocks of each tower and the
cross-attention layers that follow them, so compile time does not grow with depth. No rotary
embedding in cross-attention by default: order between towers is carried by the mask alone;
`cross_attention_clock` puts every tower's positions on one clock instead.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipper_jax import attention, stacks, wiring
from zipper_jax.inputs import TowerInput
from zipper_jax.layers import MLP, Attention, Dense, KVCache, RMSNorm, constrain, partitioned
from zipper_jax.tower import (Tower, TowerConfig, block_function, example_input, init_cache,
                               residual_dropout)
from zipper_jax.wiring import Edge, aligned_block  # noqa: F401  (the config's vocabulary)

INPUT_PROJECTIONS = ('none', 'residual', 'paper')


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
    self.schedule  # pylint: disable=pointless-statement  (rejects cycles now, not when traced)

  def __hash__(self):
    # The mappings hash by their items, as they compare: equal configs share compiled programs.
    clock = self.cross_attention_clock
    return hash((tuple(sorted(self.towers.items())), self.edges, self.input_projection,
                 clock and tuple(sorted(clock.items()))))

  @property
  def depths(self) -> dict[str, int]:
    return {name: tower.num_layers for name, tower in self.towers.items()}

  @property
  def schedule(self) -> wiring.Schedule:
    return wiring.schedule(tuple(self.depths.items()), self.edges)

  @property
  def scan_layers(self) -> bool:
    """Stages run under `lax.scan` unless some tower unrolls its blocks."""
    return all(tower.scan_layers for tower in self.towers.values())

  def cross_layers(self, edge: Edge) -> list[wiring.CrossLayer]:
    return wiring.cross_layers(self.depths, edge)


def clock(config: ZipperConfig, edge: Edge) -> tuple[float, float] | None:
  if config.cross_attention_clock is None:
    return None
  return config.cross_attention_clock[edge.query], config.cross_attention_clock[edge.key]


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
  Dropout is the query tower's, in training only, as in its own blocks.
  """
  config: TowerConfig  # of the query tower: width and heads follow it
  clock: tuple[float, float] | None = None  # (query, key) ticks per token; None: no rotary

  @nn.compact
  def __call__(self, h, inputs: TowerInput, key_states=None, key_inputs: TowerInput | None = None,
               cache: KVCache | None = None):
    """Reads the key tower from `key_states` if given, else from `cache`; returns (h, cache)."""
    c = self.config
    dropout = residual_dropout(self, c)
    cross_attention = Attention(c.embed_dim, c.num_heads, c.kv_heads, c.head_dim,
                                None if self.clock is None else c.rope_theta, c.dtype,
                                c.param_dtype, kernel=c.attention_kernel, name='attention')
    on_clock = lambda tower_input, side: (
        None if self.clock is None else tower_input.positions * self.clock[side])
    if key_states is not None:
      normed = RMSNorm(c.norm_epsilon, c.dtype, name='key_norm')(key_states)
      projected = Dense(c.embed_dim, ('key_embed', 'embed'), dtype=c.dtype,
                        param_dtype=c.param_dtype, name='key_projection')(normed)
      keys, values = cross_attention.project_kv(projected, on_clock(key_inputs, 1))
      cache = KVCache.full(keys, values, key_inputs.interleaved_positions,
                           key_inputs.segment_ids)
    visibility = attention.Visibility(inputs.interleaved_positions, inputs.segment_ids,
                                      cache.positions, cache.segment_ids, strict=True)
    gate = lambda name: jnp.tanh(self.param(name, partitioned(nn.initializers.zeros, ()), (),
                                            jnp.float32)).astype(c.dtype)
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_attention_norm')(h)
    h = h + gate('attention_gate') * dropout(cross_attention.attend(
        x, cache.keys, cache.values, visibility, on_clock(inputs, 0)))
    x = RMSNorm(c.norm_epsilon, c.dtype, name='pre_mlp_norm')(h)
    h = h + gate('mlp_gate') * dropout(MLP(c.mlp_dim, c.dtype, c.param_dtype, name='mlp')(x))
    return constrain(h, ('batch', 'length', 'embed')), cache


class Zipper(nn.Module):
  """Towers (each parameter subtree named after its tower, exactly as the tower alone), input
  projections, and one stack of cross-attention blocks per edge (`cross_<query>_from_<key>`)."""
  config: ZipperConfig

  def setup(self):
    c = self.config
    self.towers = {name: Tower(tc, name=name) for name, tc in c.towers.items()}
    if c.input_projection != 'none':
      self.input_projections = {
          name: InputProjection(c.input_projection, tc.dtype, tc.param_dtype,
                                name=f'input_projection_{name}')
          for name, tc in c.towers.items()}
    self.cross = {edge.name: self.param(edge.name, stacks.stacked(
        self._cross_block(edge), len(c.cross_layers(edge)),
        *example_input(c.towers[edge.query].embed_dim),
        *example_input(c.towers[edge.key].embed_dim))) for edge in c.edges}

  def _cross_block(self, edge: Edge) -> CrossAttentionBlock:
    return CrossAttentionBlock(self.config.towers[edge.query], clock(self.config, edge),
                               parent=None)

  def __call__(self, inputs: Mapping[str, TowerInput], caches: dict | None = None):
    """Runs the towers present in `inputs` in lockstep.

    Returns ({tower: logits [batch, length, vocab]}, caches). With `caches` (see `init_caches`),
    the towers in `caches['towers']` use and extend their self-attention caches, and their
    cross-attention keys/values are returned in `caches['cross']`; an edge whose key tower is
    absent from `inputs` reads them from there. That makes prefill and each decode step one call.
    """
    c, schedule = self.config, self.config.schedule
    for name in inputs:
      if name not in c.towers:
        raise KeyError(f'input for unknown tower {name!r}; towers are {sorted(c.towers)}')
    tower_caches = {name: cache.advance(inputs[name].positions, inputs[name].segment_ids)
                    for name, cache in ({} if caches is None else caches['towers']).items()}
    cross_caches = {} if caches is None else caches['cross']
    edges = [edge for edge in c.edges if edge.query in inputs]
    for edge in edges:
      if edge.key not in inputs and edge.name not in cross_caches:
        raise ValueError(f'{edge.name}: tower {edge.key!r} is neither in the inputs nor cached')
    # What one stage reads: its layers of every stack (and of the caches that follow them, and
    # their dropout keys in training).
    split = lambda stack: stacks.split_stages(stack, schedule.stages)
    rngs = lambda tower, length: stacks.layer_rngs(self, c.towers[tower].dropout_rate, length)
    block_rngs = {name: rngs(name, c.towers[name].num_layers) for name in inputs}
    cross_rngs = {edge.name: rngs(edge.query, len(c.cross_layers(edge))) for edge in edges}
    stage_inputs = {
        'blocks': {name: split(self.towers[name].blocks) for name in inputs},
        'cross': {edge.name: split(self.cross[edge.name]) for edge in edges},
        'block_rngs': {name: split(r) for name, r in block_rngs.items() if r is not None},
        'cross_rngs': {name: split(r) for name, r in cross_rngs.items() if r is not None},
        'tower_kv': {name: split((cache.keys, cache.values))
                     for name, cache in tower_caches.items()},
        'cross_kv': {edge.name: split((cross_caches[edge.name].keys,
                                       cross_caches[edge.name].values))
                     for edge in edges if edge.key not in inputs},
    }
    blocks = {name: block_function(c.towers[name], inputs[name]) for name in inputs}
    cross = {edge: stacks.layer_function(self._cross_block(edge), c.towers[edge.query].remat,
                                         unrolled=not c.scan_layers) for edge in edges}

    def stage(carry, layers):
      h, last = carry
      h, kv = dict(h), {'tower_kv': {}, 'cross_kv': {}}
      after_block = {(name, -1): x for name, x in last.items()}  # the previous stage's last
      rng = lambda group, name, i: (layers[group][name][i] if name in layers[group] else None)
      for step in schedule.steps:
        if isinstance(step, wiring.Block) and step.tower in inputs:
          name, i = step.tower, step.index
          cache = None
          if name in tower_caches:
            cache = tower_caches[name].layer(*layers['tower_kv'][name][i])
          h[name], cache = blocks[name](layers['blocks'][name][i], h[name], cache,
                                        rng('block_rngs', name, i))
          after_block[name, i] = h[name]
          if cache is not None:
            kv['tower_kv'].setdefault(name, []).append((cache.keys, cache.values))
        elif isinstance(step, wiring.CrossLayer) and step.edge.query in inputs:
          edge, i = step.edge, step.index
          params, key = layers['cross'][edge.name][i], rng('cross_rngs', edge.name, i)
          if edge.key in inputs:
            h[edge.query], cache = cross[edge](params, key, h[edge.query], inputs[edge.query],
                                               after_block[edge.key, step.key_block],
                                               inputs[edge.key])
            if edge.query in tower_caches:
              kv['cross_kv'].setdefault(edge.name, []).append((cache.keys, cache.values))
          else:
            cache = cross_caches[edge.name].layer(*layers['cross_kv'][edge.name][i])
            h[edge.query], _ = cross[edge](params, key, h[edge.query], inputs[edge.query], None,
                                           None, cache)
      stack = lambda per_layer: jax.tree.map(lambda *x: jnp.stack(x), *per_layer)
      last = {name: after_block[name, schedule.blocks[name] - 1] for name in last}
      return (h, last), jax.tree.map(stack, kv, is_leaf=lambda x: isinstance(x, list))

    h = {}
    for name, x in inputs.items():
      h[name] = self.towers[name].embed(x.tokens)
      if c.input_projection != 'none':
        h[name] = self.input_projections[name](h[name])
    # Towers whose states before a stage's first block some cross-attention reads: the input
    # in the first stage, the previous stage's last block in the others; carried across stages.
    read_before = {step.edge.key for step in schedule.steps if isinstance(step, wiring.CrossLayer)
                   and step.key_block < 0 and {step.edge.query, step.edge.key} <= inputs.keys()}
    (h, _), kv = jax.lax.scan(stage, (h, {name: h[name] for name in read_before}), stage_inputs,
                              unroll=not c.scan_layers)
    logits = {name: self.towers[name].logits(h[name]) for name in inputs}
    if caches is None:
      return logits, None
    kv = stacks.merge_stages(kv)
    new_caches = {'towers': {name: cache.replace(keys=kv['tower_kv'][name][0],
                                                 values=kv['tower_kv'][name][1])
                             for name, cache in tower_caches.items()},
                  'cross': {}}
    for edge in edges:
      if edge.query not in tower_caches:
        continue
      if edge.key in inputs:
        key_inputs = inputs[edge.key]
        new_caches['cross'][edge.name] = KVCache.full(
            *kv['cross_kv'][edge.name], key_inputs.interleaved_positions, key_inputs.segment_ids)
      else:
        new_caches['cross'][edge.name] = cross_caches[edge.name]
    return logits, new_caches


def init_caches(config: ZipperConfig, tower: str, batch: int, size: int) -> dict:
  """Empty caches for decoding `size` tokens of `tower`; prefill fills its cross-attention ones."""
  return {'towers': {tower: init_cache(config.towers[tower], batch, size)}, 'cross': {}}
