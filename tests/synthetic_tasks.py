"""In-memory seqio tasks for trainer tests: a learnable toy ASR task and unimodal LM tasks.

Speech is random units; its "transcript" is a fixed function of it (every other unit, mapped
into the text vocabulary), so a Zipper can learn to read text off speech.
"""
import numpy as np
import seqio
import tensorflow as tf

from zipper_jax.feature_converter import sequential_layout

TEXT_VOCAB, SPEECH_VOCAB = 64, 48
SPEECH_LENGTH, TEXT_LENGTH = 12, 6
LENGTHS = {'speech': SPEECH_LENGTH, 'text': TEXT_LENGTH, 'single': SPEECH_LENGTH + TEXT_LENGTH}


def experiment_gin(directory, steps, batch_size, *bindings):
  """Writes a tiny experiment gin file on `toy_asr`, as a user would write one; returns its path.
  The run's MODEL_DIR is `directory/run`."""
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f'experiment_{steps}.gin'
  lines = ['import synthetic_tasks', "include 'gin/models/tiny.gin'",
           "include 'gin/runs/zipper_frozen_text.gin'", f'TEXT_VOCAB_SIZE = {TEXT_VOCAB}',
           f'SPEECH_VOCAB_SIZE = {SPEECH_VOCAB}', f"MODEL_DIR = '{directory / 'run'}'",
           "MIXTURE_OR_TASK_NAME = 'toy_asr'",
           f"TASK_FEATURE_LENGTHS = {{'speech': {SPEECH_LENGTH}, 'text': {TEXT_LENGTH}}}",
           f'TRAIN_STEPS = {steps}', f'BATCH_SIZE = {batch_size}', 'train.peak_flops = 1e12',
           *bindings]
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def _examples(split, count=512):
  rng = np.random.default_rng({'train': 0, 'validation': 1}[split])
  speech = rng.integers(1, SPEECH_VOCAB, (count, SPEECH_LENGTH), dtype=np.int32)
  text = (speech[:, ::2] * 7) % (TEXT_VOCAB - 1) + 1
  return {'speech': speech, 'text': text.astype(np.int32)}


def _source():
  return seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
          _examples(split)), splits=('train', 'validation'))


def _features(*names):
  vocabularies = {'speech': SPEECH_VOCAB, 'text': TEXT_VOCAB,
                  'single': TEXT_VOCAB + SPEECH_VOCAB}
  return {name: seqio.Feature(seqio.PassThroughVocabulary(vocabularies[name]), add_eos=False)
          for name in names}


@seqio.map_over_dataset
def _single_decoder_asr(ex):
  """[speech; text] in the Single Decoder's vocabulary (speech ids after the text ones)."""
  speech, text = ex['speech'] + TEXT_VOCAB, ex['text']
  return {'single': tf.concat([speech, text], 0),
          'single_weights': tf.concat([tf.zeros_like(speech, tf.float32),
                                       tf.ones_like(text, tf.float32)], 0)}


def _shift(name, by):
  """Ids moved out of their vocabulary: what a task built for another tower would hold."""
  return seqio.map_over_dataset(lambda ex: {**ex, name: ex[name] + by})


def _drop(*names):
  return seqio.map_over_dataset(lambda ex: {k: v for k, v in ex.items() if k not in names})


for _name, _preprocessors, _features_of in (
    ('toy_asr', [sequential_layout(['speech', 'text'], loss_on=['text'])], ('speech', 'text')),
    ('toy_text_lm', [_drop('speech')], ('text',)),
    ('toy_speech_lm', [_drop('text')], ('speech',)),
    ('toy_asr_single', [_single_decoder_asr], ('single',)),
    ('toy_asr_ids_too_large', [_shift('text', TEXT_VOCAB),
                               sequential_layout(['speech', 'text'], loss_on=['text'])],
     ('speech', 'text')),
    ('toy_asr_ids_negative', [_shift('speech', -SPEECH_VOCAB),
                              sequential_layout(['speech', 'text'], loss_on=['text'])],
     ('speech', 'text')),
):
  if _name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(_name, source=_source(), preprocessors=_preprocessors,
                           output_features=_features(*_features_of))
