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


def prompt_ends(batch: Mapping[str, np.ndarray], output: str) -> np.ndarray:
  """[batch]: how many of `output`'s input columns each row's prompt holds. A prompt ends where
  `output`'s first weighted target is predicted (the start token of an ASR example's text, or a
  Single Decoder's text after its speech); a row with no weighted target is prompted by all of
  it."""
  weighted = np.asarray(batch[f'{output}_loss_weights']) > 0
  valid = np.asarray(batch[f'{output}_segment_ids']) > 0
  return np.where(weighted.any(1), weighted.argmax(1), np.maximum(valid.sum(1) - 1, 0)) + 1


def decoding_prompt(batch: Mapping[str, np.ndarray], towers: Sequence[str], output: str,
                    prompt_towers: Sequence[str] | None = None) -> dict:
  """What decoding tower `output` of an unpacked batch starts from ({tower: TowerInput}).

  `output`'s prompts (`prompt_ends`) are right-aligned, as cached decoding needs them, in a
  width rounded up to a power of two, so that a task compiles a few programs, not one per
  batch; towers outside `prompt_towers` (default: all) are hidden.
  """
  batch = {k: np.asarray(v) for k, v in batch.items()}
  prompt_towers = [t for t in towers if t != output] if prompt_towers is None else prompt_towers
  prompt = {}
  for t in towers:
    if t == output:
      continue
    segment_ids = batch[f'{t}_segment_ids'] * (t in prompt_towers)
    prompt[t] = TowerInput(*(jnp.asarray(x) for x in (
        batch[f'{t}_input_tokens'], batch[f'{t}_positions'], segment_ids,
        batch[f'{t}_interleaved_positions'])))
  ends = prompt_ends(batch, output)
  length = batch[f'{output}_input_tokens'].shape[1]
  width = min(length, 1 << int(ends.max() - 1).bit_length())
  columns = {s: np.zeros((len(ends), width), np.int32)
             for s in ('input_tokens', 'positions', 'segment_ids', 'interleaved_positions')}
  for row, end in enumerate(ends):
    for s, out in columns.items():
      out[row, width - end:] = batch[f'{output}_{s}'][row, :end]
  prompt[output] = TowerInput(*(jnp.asarray(columns[s]) for s in (
      'input_tokens', 'positions', 'segment_ids', 'interleaved_positions')))
  return prompt
