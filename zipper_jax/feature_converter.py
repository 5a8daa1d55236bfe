"""From task examples to the model's batch: one set of arrays per tower.

A task example holds, for every tower `T` of the model:
  `T`              target tokens of that modality (0 = padding, so an absent modality is empty),
  `T_interleaved`  (optional) each token's position in the one interleaved sequence the example
                   stands for; default 0, 1, 2, ... (right for a single-tower example),
  `T_weights`      (optional) each target's loss weight; default 1 on every token (seqio's
                   packing keeps integers, so packed examples take integer weights).
`sequential_layout` writes the last two for examples whose modalities follow each other (ASR:
speech then text; TTS: text then speech).

The model batch holds, for every tower, `T_input_tokens` (targets shifted right, 0 first),
`T_target_tokens`, `T_loss_weights`, `T_positions`, `T_segment_ids` and
`T_interleaved_positions` (`batch.py`). Packing puts several examples in one row; all
towers of an example share its segment id, so packed examples see each other neither in self-
nor in cross-attention.
"""
from __future__ import annotations

from typing import Sequence

import seqio
import tensorflow as tf

from zipper_jax.batch import SUFFIXES

_LAYOUT = ('interleaved', 'weights')


def sequential_layout(order: Sequence[str], loss_on: Sequence[str], absent: Sequence[str] = ()):
  """A seqio preprocessor: towers' tokens follow each other in `order`; loss on `loss_on` only.

  Towers in `absent` (empty in these examples) get an empty layout, so that tasks with different
  modalities share one structure and can be mixed.
  """

  @seqio.map_over_dataset
  def layout(example):
    example = dict(example)
    offset = tf.constant(0, tf.int32)
    for name in (*order, *absent):
      length = tf.size(example[name], out_type=tf.int32)
      example[f'{name}_interleaved'] = offset + tf.range(length, dtype=tf.int32)
      example[f'{name}_weights'] = tf.fill([length], 1.0 if name in loss_on else 0.0)
      offset += length
    return example

  return layout


class ZipperFeatureConverter(seqio.FeatureConverter):
  """Pads (or packs) each tower's features to its length in `task_feature_lengths`.

  `task_feature_lengths` names the towers, e.g. {'speech': 256, 'text': 64}; for a single tower
  model it names just that tower. An example longer than its length is an error (seqio's, naming
  the feature) unless `truncate` is set.
  """
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, towers: Sequence[str], pack: bool = False, truncate: bool = False,
               **kwargs):
    self.towers = tuple(towers)
    self.TASK_FEATURES = {t: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
                          for t in self.towers}
    self.MODEL_FEATURES = {f'{t}_{s}': seqio.FeatureConverter.FeatureSpec(
        dtype=tf.float32 if s == 'loss_weights' else tf.int32)
        for t in self.towers for s in SUFFIXES}
    super().__init__(pack=pack, apply_length_check=not truncate, **kwargs)

  def _validate_dataset(self, ds, expected_features, expected_lengths, strict, error_label):
    """seqio checks the output's lengths (`strict`) with a traced assertion per feature, the
    costliest part of building a pipeline (about half of an evaluation's). Every feature this
    converter makes is padded or packed to its length, which its static shape already says:
    checked here, once, instead."""
    if not strict:
      return super()._validate_dataset(ds, expected_features, expected_lengths, strict,
                                       error_label)
    ds = super()._validate_dataset(ds, expected_features, {}, strict, error_label)
    for name, length in expected_lengths.items():
      if ds.element_spec[name].shape.as_list() != [length]:
        raise ValueError(f'feature {name!r} has shape {ds.element_spec[name].shape} after '
                         f'{error_label}; expected [{length}]')
    return ds

  def _with_layout(self, example):
    example = dict(example)
    for t in self.towers:
      tokens = tf.convert_to_tensor(example[t])
      length = tf.size(tokens, out_type=tf.int32)
      # seqio's packer reads a feature's length off its non-zero entries, so the layout
      # features travel shifted by one and are shifted back in `_model_features`.
      example[t] = tf.cast(tokens, tf.int32)
      example[f'{t}_interleaved'] = tf.cast(
          example.get(f'{t}_interleaved', tf.range(length)), tf.int32) + 1
      example[f'{t}_weights'] = tf.cast(example.get(f'{t}_weights', tf.ones([length])),
                                        tf.float32) + 1
    return {k: example[k] for t in self.towers for k in (t, *(f'{t}_{s}' for s in _LAYOUT))}

  def _convert_features(self, ds, task_feature_lengths):
    lengths = {f'{t}{s}': task_feature_lengths[t]
               for t in self.towers for s in ('', *(f'_{s}' for s in _LAYOUT))}
    ds = ds.map(self._with_layout, num_parallel_calls=tf.data.AUTOTUNE)
    if self.pack:
      ds = seqio.utils.trim_and_pack_dataset(ds, lengths, self._use_custom_packing_ops)
    else:
      ds = seqio.utils.trim_and_pad_dataset(ds, lengths)
    return ds.map(self._model_features, num_parallel_calls=tf.data.AUTOTUNE)

  def _model_features(self, features):
    out = {}
    for t in self.towers:
      targets = features[t]
      if self.pack:
        segment_ids, positions = features[f'{t}_segment_ids'], features[f'{t}_positions']
      else:
        segment_ids = seqio.non_padding_position(targets)
        positions = tf.range(tf.size(targets)) * segment_ids
      out[f'{t}_input_tokens'] = seqio.utils.make_autoregressive_inputs(
          targets, sequence_id=segment_ids if self.pack else None, bos_id=self.bos_id)
      out[f'{t}_target_tokens'] = targets
      valid = segment_ids > 0
      out[f'{t}_loss_weights'] = tf.where(
          valid, tf.cast(features[f'{t}_weights'], tf.float32) - 1, 0.0)
      out[f'{t}_positions'] = positions
      out[f'{t}_segment_ids'] = segment_ids
      out[f'{t}_interleaved_positions'] = tf.where(valid, features[f'{t}_interleaved'] - 1, 0)
    return out

  def get_model_feature_lengths(self, task_feature_lengths):
    return {f'{t}_{s}': task_feature_lengths[t] for t in self.towers for s in SUFFIXES}
