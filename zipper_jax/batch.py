"""The model's batch: for every tower `T`, arrays named `T_<suffix>`, [batch, length] each.

`feature_converter.py` makes them from seqio examples; models read them through
`tower_inputs` and `tower_targets`. Nothing here needs TensorFlow.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from zipper_jax.inputs import TowerInput

SUFFIXES = ('input_tokens', 'target_tokens', 'loss_weights', 'positions', 'segment_ids',
            'interleaved_positions')


def tower_inputs(batch: Mapping[str, jnp.ndarray], towers: Sequence[str]) -> dict:
  """The model's inputs (a `TowerInput` per tower)."""
  return {t: TowerInput(batch[f'{t}_input_tokens'], batch[f'{t}_positions'],
                        batch[f'{t}_segment_ids'], batch[f'{t}_interleaved_positions'])
          for t in towers}


def tower_targets(batch: Mapping[str, jnp.ndarray], towers: Sequence[str]):
  """(targets, loss weights), each a mapping from tower name to array."""
  return ({t: batch[f'{t}_target_tokens'] for t in towers},
          {t: batch[f'{t}_loss_weights'] for t in towers})


def dummy_batch(towers: Sequence[str], lengths: Mapping[str, int], batch_size: int) -> dict:
  """A batch of the right shapes and dtypes, for initialisation and compilation."""
  return {f'{t}_{s}': np.zeros((batch_size, lengths[t]),
                               np.float32 if s == 'loss_weights' else np.int32)
          for t in towers for s in SUFFIXES}
