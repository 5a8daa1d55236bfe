import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from conftest import SPEECH, TEXT
from zipper_jax.batch import tower_inputs
from zipper_jax.feature_converter import ZipperFeatureConverter, sequential_layout

EXAMPLES = [{'speech': [5, 6, 7, 2], 'text': [9, 8, 1]},
            {'speech': [4, 2], 'text': [3, 3, 3, 1]},
            {'speech': [11, 12, 13], 'text': [7, 1]}]


def asr_dataset(examples=EXAMPLES):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={name: tf.TensorSpec([None], tf.int32)
                                                for name in ('speech', 'text')})
  return sequential_layout(['speech', 'text'], loss_on=['text'])(ds)


def convert(pack, lengths=None, **kwargs):
  converter = ZipperFeatureConverter(['speech', 'text'], pack=pack, **kwargs)
  return list(converter(asr_dataset(), lengths or {'speech': 8, 'text': 8}).as_numpy_iterator())


def test_padded_asr_example_layout():
  first = convert(pack=False)[0]
  np.testing.assert_array_equal(first['speech_target_tokens'], [5, 6, 7, 2, 0, 0, 0, 0])
  np.testing.assert_array_equal(first['speech_input_tokens'][:4], [0, 5, 6, 7])
  np.testing.assert_array_equal(first['speech_loss_weights'], np.zeros(8))
  np.testing.assert_array_equal(first['text_input_tokens'][:3], [0, 9, 8])
  np.testing.assert_array_equal(first['text_loss_weights'], [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(first['text_segment_ids'], [1, 1, 1, 0, 0, 0, 0, 0])
  # Text follows all four speech slots in the interleaved order.
  np.testing.assert_array_equal(first['text_interleaved_positions'][:3], [4, 5, 6])
  np.testing.assert_array_equal(first['speech_interleaved_positions'][:4], [0, 1, 2, 3])


def test_packed_examples_share_segment_ids_across_towers():
  row = convert(pack=True, lengths={'speech': 10, 'text': 10})[0]
  speech_segments, text_segments = row['speech_segment_ids'], row['text_segment_ids']
  np.testing.assert_array_equal(speech_segments, [1, 1, 1, 1, 2, 2, 3, 3, 3, 0])
  np.testing.assert_array_equal(text_segments, [1, 1, 1, 2, 2, 2, 2, 3, 3, 0])
  np.testing.assert_array_equal(row['text_interleaved_positions'][:9],
                                [4, 5, 6, 2, 3, 4, 5, 3, 4])
  np.testing.assert_array_equal(row['text_input_tokens'][:9], [0, 9, 8, 0, 3, 3, 3, 0, 7])


def test_too_long_an_example_is_named_unless_truncated():
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"speech\W+has length not less"):
    convert(pack=False, lengths={'speech': 3, 'text': 8})
  rows = convert(pack=False, lengths={'speech': 3, 'text': 8}, truncate=True)
  np.testing.assert_array_equal(rows[0]['speech_target_tokens'], [5, 6, 7])


@pytest.mark.parametrize('pack', [False, True])
def test_every_output_feature_has_its_length_in_its_static_shape(pack):
  converter = ZipperFeatureConverter(['speech', 'text'], pack=pack)
  spec = converter(asr_dataset(), {'speech': 8, 'text': 6}).element_spec
  assert {name: s.shape.as_list() for name, s in spec.items()} == {
      f'{tower}_{suffix}': [length] for tower, length in (('speech', 8), ('text', 6))
      for suffix in ('input_tokens', 'target_tokens', 'loss_weights', 'positions',
                     'segment_ids', 'interleaved_positions')}

  class Unpadded(ZipperFeatureConverter):
    def _convert_features(self, ds, task_feature_lengths):
      return ds.map(self._model_features)

  with pytest.raises(ValueError, match=r"'speech_input_tokens' has shape \(None,\)"):
    Unpadded(['speech', 'text'])(asr_dataset(), {'speech': 8, 'text': 6})


def test_packed_examples_never_see_each_other(two_way_zipper):
  """Each packed example's logits equal those of the example run on its own."""
  model, params = two_way_zipper
  towers = ('speech', 'text')
  batch = lambda rows: {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  packed = batch(convert(pack=True, lengths={'speech': 10, 'text': 10}))
  alone = batch(convert(pack=False, lengths={'speech': 10, 'text': 10}))
  packed_logits, _ = model.apply({'params': params}, tower_inputs(packed, towers))
  alone_logits, _ = model.apply({'params': params}, tower_inputs(alone, towers))
  for name in towers:
    segments = np.asarray(packed[f'{name}_segment_ids'][0])
    for example in range(3):
      where = segments == example + 1
      np.testing.assert_allclose(packed_logits[name][0][where],
                                 alone_logits[name][example][:where.sum()], atol=1e-5)
  assert SPEECH.vocab_size > 13 and TEXT.vocab_size > 9  # the tokens above are in range
