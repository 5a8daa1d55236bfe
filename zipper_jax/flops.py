"""Exact matmul FLOPs of a training step, from the model's configuration.

Counted as XLA computes them on padded batches: every projection, both attention products over
all query-key pairs (masked ones included), the vocabulary head. Elementwise work (norms,
activations, softmax) is left out, as is usual for MFU. A training step costs the forward pass
plus its backward: gradients with respect to activations (1x) everywhere, and with respect to
weights (1x) only where the weights train; so a frozen tower costs 2x its forward, a trainable
one 3x.
"""
from __future__ import annotations

import functools
import time
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp

from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import ZipperConfig


def _attention_flops(c: TowerConfig, queries: int, keys: int, key_width: int) -> tuple[int, int]:
  """(weight matmuls, score/value products) of one attention layer."""
  weights = 2 * queries * c.embed_dim * c.num_heads * c.head_dim * 2  # query and output
  weights += 2 * keys * key_width * c.kv_heads * c.head_dim * 2  # key and value
  products = 2 * 2 * queries * keys * c.num_heads * c.head_dim
  return weights, products


def tower_forward_flops(c: TowerConfig, length: int) -> int:
  """One example of `length` tokens through one tower."""
  weights, products = _attention_flops(c, length, length, c.embed_dim)
  block = weights + products + 3 * 2 * length * c.embed_dim * c.mlp_dim
  return c.num_layers * block + 2 * length * c.embed_dim * c.padded_vocab_size


def cross_attention_forward_flops(query: TowerConfig, key: TowerConfig, query_length: int,
                                  key_length: int) -> int:
  """One cross-attention block (key projection d_B -> d_A, attention, MLP) for one example."""
  weights, products = _attention_flops(query, query_length, key_length, query.embed_dim)
  projection = 2 * key_length * key.embed_dim * query.embed_dim
  return projection + weights + products + 3 * 2 * query_length * query.embed_dim * query.mlp_dim


def towers_train_flops(towers: Mapping[str, TowerConfig], lengths: Mapping[str, int],
                       frozen: Iterable[str] = ()) -> int:
  """Forward + backward FLOPs of one example through `towers`, `frozen` ones without weight
  gradients."""
  return sum(tower_forward_flops(config, lengths[name]) * (2 if name in frozen else 3)
             for name, config in towers.items())


def zipping_forward_flops(zipper: ZipperConfig, lengths: Mapping[str, int]) -> int:
  """Forward FLOPs of one example through what zipping adds to the towers: the cross-attention
  blocks and input projections."""
  total = sum(len(zipper.cross_layers(edge)) * cross_attention_forward_flops(
      zipper.towers[edge.query], zipper.towers[edge.key], lengths[edge.query], lengths[edge.key])
      for edge in zipper.edges)
  if zipper.input_projection != 'none':
    total += sum(2 * 2 * lengths[name] * config.embed_dim ** 2
                 for name, config in zipper.towers.items())
  return total


def zipping_train_flops(zipper: ZipperConfig, lengths: Mapping[str, int]) -> int:
  """Forward + backward of the same: they always train."""
  return 3 * zipping_forward_flops(zipper, lengths)


@functools.cache
def measure_peak_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large jitted matmul on the default device: the practical peak MFU is taken
  against when none is configured (on a CPU, where no datasheet figure applies). Measured once a
  process: the runs a driver trains one after another report MFU against the same peak."""
  x = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    matmul(x).block_until_ready()
  return 2 * size ** 3 * repeats / (time.perf_counter() - start)
