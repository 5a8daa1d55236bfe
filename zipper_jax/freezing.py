"""Which parameters train. Frozen ones are split off before differentiation, so they get no
gradient computation, no optimizer state and no update: they stay bit-identical."""
from __future__ import annotations

from typing import Iterable

import jax


def trainable_mask(params, frozen_towers: Iterable[str]):
  """A tree of bools like `params`: False under each top-level subtree named in `frozen_towers`.

  In a Zipper the top-level names are the towers (and the cross-attention layers, input
  projections), so freezing a tower freezes its embeddings, blocks and head together.
  """
  frozen_towers = set(frozen_towers)
  unknown = frozen_towers - set(params)
  if unknown:
    raise KeyError(f'cannot freeze {sorted(unknown)}: not in the parameters {sorted(params)}')
  return {name: jax.tree.map(lambda _: name not in frozen_towers, subtree)
          for name, subtree in params.items()}


def partition(params, mask):
  """(trainable, frozen): two trees like `params` with None where the other one holds a leaf."""
  # `mask` leads, so a parameter may be any subtree (e.g. boxed with its logical axis names).
  trainable = jax.tree.map(lambda m, p: p if m else None, mask, params)
  frozen = jax.tree.map(lambda m, p: None if m else p, mask, params)
  return trainable, frozen


def combine(trainable, frozen):
  """Inverse of `partition`."""
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                      is_leaf=lambda x: x is None)
