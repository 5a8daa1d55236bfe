"""A Zipper's wiring: which cross-attention follows which block, and one order to run them all in.

A directed edge `(query, key, interval)` makes tower `query`, after every `interval`-th of its
blocks, cross-attend to tower `key`'s hidden states at the same relative depth. The schedule is
computed once per wiring, before anything is traced: it cuts the towers into the most `stages`
that repeat exactly (the same blocks of each tower, then the same cross-attention layers, reading
blocks of the same stage or the previous stage's last), so that the Zipper runs one stage under
`lax.scan` and its compile time stays flat in depth. A wiring with no repeating stage is one
stage: unrolled.

Choices where the paper is silent:
  * Keys are the key tower's states right after its aligned block, before that tower's own
    cross-attention at that depth (so two-way edges at equal depths update both towers at once).
  * Block l of a tower of depth L_q reads block round((l + 1) * L_k / L_q) - 1 of a tower of depth
    L_k, rounding halves up; block -1 is the key tower's input (its embeddings), the nearest
    depth for a block less than half a key block deep (SmolLM2's first of 30 against 12).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Edge:
  """`query` cross-attends to `key` after each `interval`-th block of `query`."""
  query: str
  key: str
  interval: int = 1

  @property
  def name(self) -> str:
    """The name of the edge's stack of cross-attention layers in the Zipper's parameters."""
    return f'cross_{self.query}_from_{self.key}'


@dataclasses.dataclass(frozen=True)
class CrossLayer:
  """One cross-attention layer: the `index`-th of its edge's stack, after the query tower's
  `block`, reading the key tower's states after `key_block` (-1: before its first block)."""
  edge: Edge
  index: int
  block: int
  key_block: int


@dataclasses.dataclass(frozen=True)
class Block:
  """Block `index` of `tower` (within a stage)."""
  tower: str
  index: int


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One stage, run `stages` times: each tower's `blocks[tower]` blocks and each edge's
  `crosses[edge]` cross-attention layers, in the order `steps` (indices within the stage)."""
  stages: int
  blocks: Mapping[str, int]
  crosses: Mapping[Edge, int]
  steps: tuple[Block | CrossLayer, ...]


def aligned_block(block: int, query_depth: int, key_depth: int) -> int:
  """The key tower's block at the same relative depth as the query tower's `block` (-1: its
  input)."""
  return math.floor((block + 1) * key_depth / query_depth + 0.5) - 1


def cross_layers(depths: Mapping[str, int], edge: Edge) -> list[CrossLayer]:
  """The cross-attention layers of `edge`, in the order of its stack."""
  blocks = range(edge.interval - 1, depths[edge.query], edge.interval)
  return [CrossLayer(edge, index, block, aligned_block(block, depths[edge.query],
                                                       depths[edge.key]))
          for index, block in enumerate(blocks)]


@functools.cache
def schedule(depths: tuple[tuple[str, int], ...], edges: tuple[Edge, ...]) -> Schedule:
  """The schedule with the most stages for towers of `depths` ((name, blocks) pairs) and `edges`.

  Raises ValueError if the edges make towers wait on each other (a cycle).
  """
  depths = dict(depths)
  layers = {edge: cross_layers(depths, edge) for edge in edges}
  common = math.gcd(*depths.values(), *(len(stack) for stack in layers.values()))
  stages = max(s for s in range(1, common + 1) if common % s == 0 and _repeats(depths, layers, s))
  blocks = {name: depth // stages for name, depth in depths.items()}
  stage_layers = {edge: stack[:len(stack) // stages] for edge, stack in layers.items()}
  steps = _order(blocks, stage_layers)
  if stages == 1 and max(depths.values()) > 1:
    logging.info('Zipper wiring %s over depths %s does not repeat: its schedule is unrolled '
                 '(compile time grows with depth)', [tuple(dataclasses.astuple(e)) for e in edges],
                 depths)
  return Schedule(stages, blocks, {edge: len(stack) for edge, stack in stage_layers.items()},
                  steps)


def _repeats(depths, layers, stages: int) -> bool:
  """Whether every stage holds the same cross-attention layers, relative to its first blocks."""
  per_stage = {name: depth // stages for name, depth in depths.items()}
  for edge, stack in layers.items():
    size = len(stack) // stages
    for layer in stack:
      stage, offset = divmod(layer.index, size)
      first = stack[offset]
      if (layer.block != first.block + stage * per_stage[edge.query] or
          layer.key_block != first.key_block + stage * per_stage[edge.key] or
          first.block >= per_stage[edge.query] or first.key_block >= per_stage[edge.key]):
        return False
  return True


def _order(blocks: Mapping[str, int], layers: Mapping[Edge, list[CrossLayer]]):
  """Blocks and cross-attention layers in lockstep: a tower runs its next block once its previous
  block's cross-attention is done, which waits until the key towers have run the aligned blocks."""
  after = {name: {} for name in blocks}  # tower -> block -> its cross-attention layers
  for stack in layers.values():
    for layer in stack:
      after[layer.edge.query].setdefault(layer.block, []).append(layer)
  ran = {name: 0 for name in blocks}  # blocks run
  crossed = {name: 0 for name in blocks}  # blocks whose cross-attention is done
  steps = []
  while any(crossed[name] < blocks[name] for name in blocks):
    progressed = False
    for name in blocks:
      if ran[name] == crossed[name] < blocks[name]:
        steps.append(Block(name, ran[name]))
        ran[name] += 1
        progressed = True
      pending = after[name].get(crossed[name], [])
      if ran[name] > crossed[name] and all(ran[l.edge.key] > l.key_block for l in pending):
        steps += pending
        crossed[name] += 1
        progressed = True
    if not progressed:
      waiting = sorted(name for name in blocks if crossed[name] < blocks[name])
      raise ValueError(f'edges {sorted({l.edge for s in layers.values() for l in s}, key=str)} '
                       f'make towers {waiting} wait on each other (a cycle)')
  return tuple(steps)
