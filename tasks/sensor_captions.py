"""A toy third modality, end to end: captioning from discrete "sensor" codes.

The walk-through in `tasks/README.md` builds this module. The codes are a fixed function of the
caption's words (two codes a word, from a hash), so a model can learn to caption from them.
Examples carry every modality of the three-tower model: `sensor`, `text` and an empty `speech`.
"""
import seqio
import tensorflow as tf

from tasks import preprocessors, speech_text
from zipper_jax.vocabularies import UnitVocabulary

SENSOR_VOCABULARY = UnitVocabulary(num_units=256)
VOCABULARIES = {**speech_text.VOCABULARIES, 'sensor': SENSOR_VOCABULARY}


@seqio.map_over_dataset
def sensor_codes(example):
  """Two codes per word of the caption."""
  words = tf.strings.split(example['text'])
  first = tf.strings.to_hash_bucket_fast(words, SENSOR_VOCABULARY.num_units)
  second = tf.strings.to_hash_bucket_fast(tf.strings.join([words, '#']),
                                          SENSOR_VOCABULARY.num_units)
  codes = tf.reshape(tf.stack([first, second], axis=1), [-1])
  return {'text': example['text'], 'sensor': tf.cast(codes, tf.int32)}


seqio.TaskRegistry.add(
    'sensor_captioning', source=speech_text.source('aligned'),
    preprocessors=[
        sensor_codes,
        preprocessors.encode('sensor_captioning', VOCABULARIES, present=('sensor', 'text')),
        preprocessors.check_tokens('sensor_captioning', VOCABULARIES, present=('sensor', 'text')),
        preprocessors.sequential_layout(['sensor', 'text'], loss_on=['text'], absent=['speech']),
    ],
    output_features={**{m: seqio.Feature(v, add_eos=False) for m, v in VOCABULARIES.items()},
                     **preprocessors.layout_features(VOCABULARIES)})
