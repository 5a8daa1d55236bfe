"""Small pure functions of a `tf.data.Dataset`, shared by every task family.

Each task names the modalities an example carries (`present`); the others are written as empty
sequences, so that every task of a model has the same features and any of them can be mixed.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from zipper_jax.feature_converter import sequential_layout

__all__ = ['encode', 'check_tokens', 'layout_features', 'sequential_layout',
           'single_decoder_sequence']


def encode(task: str, vocabularies: Mapping[str, seqio.Vocabulary], present: Sequence[str]):
  """Strings and unit lists -> token ids ending in their vocabulary's end token, for every
  modality in `vocabularies`; those not `present` in the task become empty. A feature the
  source lacks is named with its task."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    missing = [name for name in present if name not in dataset.element_spec]
    if missing:
      raise ValueError(f'task {task!r}: examples lack feature(s) {missing}; they have '
                       f'{sorted(dataset.element_spec)}')

    def encode_example(example):
      out = {}
      for name, vocabulary in vocabularies.items():
        if name in present:
          ids = tf.cast(vocabulary.encode_tf(example[name]), tf.int32)
          out[name] = tf.concat([ids, [vocabulary.eos_id]], 0)
        else:
          out[name] = tf.zeros([0], tf.int32)
      return out

    return dataset.map(encode_example, num_parallel_calls=tf.data.AUTOTUNE)

  return preprocess


def check_tokens(task: str, vocabularies: Mapping[str, seqio.Vocabulary],
                 present: Sequence[str]):
  """Stops at the first example whose ids fall outside their vocabulary or whose `present`
  modality is empty, naming the task and the feature. Vocabularies encode what they cannot
  represent as 0, the padding id, which is never valid inside an example. (Names go unquoted:
  TF escapes quotes in assertion messages.)"""

  @seqio.map_over_dataset
  def check(example):
    checks = []
    for name, vocabulary in vocabularies.items():
      if name not in example:
        raise ValueError(f'task {task!r}: examples lack feature {name!r}')
      ids, size = example[name], vocabulary.vocab_size
      checks.append(tf.debugging.assert_equal(
          tf.reduce_all((ids >= 1) & (ids < size)), True,
          message=f'task {task}, feature {name}: a token id outside [1, {size}) (an input '
                  'out of the range of its vocabulary, or padding inside an example)'))
      if name in present:
        checks.append(tf.debugging.assert_greater(
            tf.size(ids), 1, message=f'task {task}, feature {name}: an empty sequence'))
    with tf.control_dependencies(checks):
      return {k: tf.identity(v) for k, v in example.items()}

  return check


def single_decoder_sequence(order: Sequence[str], loss_on: Sequence[str],
                            text_vocabulary: seqio.Vocabulary, feature: str = 'single'):
  """The Single Decoder's one sequence: the modalities in `order`, every non-text id moved past
  the text vocabulary, loss weight 1 on the modalities in `loss_on`."""

  @seqio.map_over_dataset
  def concatenate(example):
    offset = text_vocabulary.vocab_size
    parts = [example[name] + (0 if name == 'text' else offset) for name in order]
    weights = [tf.fill(tf.shape(example[name]), 1.0 if name in loss_on else 0.0)
               for name in order]
    return {feature: tf.concat(parts, 0), f'{feature}_weights': tf.concat(weights, 0)}

  return concatenate


def layout_features(modalities: Sequence[str]) -> dict[str, seqio.Feature]:
  """Output features for the layout that `sequential_layout` and `single_decoder_sequence`
  write; declared so that mixtures, which keep only output features, keep them too."""
  layout = lambda dtype: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                       dtype=dtype)
  features = {}
  for m in modalities:
    features[f'{m}_interleaved'] = layout(tf.int32)
    features[f'{m}_weights'] = layout(tf.float32)
  return features
