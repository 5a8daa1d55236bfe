"""LibriSpeech (TFDS's `librispeech`: 960 hours of read English audiobooks) as ASR and TTS tasks
of the speech-text Zipper and Single Decoder, registered on import.

Examples are put into the embedded corpus's vocabularies (`tasks.speech_text`: its SentencePiece
text model, its speech unit tokenizer), so a run zips towers pre-trained on that corpus:
LibriSpeech's 16 kHz audio is turned into units as it is read, and its transcripts, upper case
without punctuation, are lower-cased. The data must be prepared first (`tfds build librispeech`,
which needs apache-beam and ~60 GB; `--data_dir` or $TFDS_DATA_DIR).

Tasks: `librispeech_asr`, `librispeech_tts` and their `single_` twins; mixtures
`librispeech_asr_tts` and `single_librispeech_asr_tts` (rates from `mixture_rates`). Splits:
`train` (train_clean100 + train_clean360 + train_other500), `validation` (dev_clean),
`test_clean`, `test_other`.
"""
from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from tasks import speech_text

SPLITS = {'train': 'train_clean100+train_clean360+train_other500', 'validation': 'dev_clean',
          'test_clean': 'test_clean', 'test_other': 'test_other'}
SOURCE = seqio.TfdsDataSource(tfds_name='librispeech:2.1.1', splits=SPLITS)
# (name, modalities present, interleaved order, loss on), as the corpus's aligned tasks.
TASKS = (('librispeech_asr', ('speech', 'text'), ('speech', 'text'), ('text',)),
         ('librispeech_tts', ('text', 'speech'), ('text', 'speech'), ('speech',)))


@functools.cache
def _tokenizer():
  return speech_text.SPEECH_VOCABULARY.tokenizer()


def _units(pcm: np.ndarray) -> np.ndarray:
  """16-bit PCM at 16 kHz -> the corpus tokenizer's units."""
  return _tokenizer().encode(pcm.astype(np.float32) / np.iinfo(np.int16).max).astype(np.int32)


@seqio.map_over_dataset
def to_text_and_units(example):
  units = tf.numpy_function(_units, [example['speech']], tf.int32, stateful=False)
  units.set_shape([None])
  return {'text': tf.strings.lower(example['text']), 'speech': units}


for _name, _present, _order, _loss_on in TASKS:
  speech_text.register(_name, SOURCE, to_text_and_units, _present, _order, _loss_on)
for _prefix in ('', 'single_'):
  seqio.MixtureRegistry.add(f'{_prefix}librispeech_asr_tts', [
      (f'{_prefix}librispeech_{kind}', functools.partial(speech_text.rate, kind))
      for kind in ('asr', 'tts')])
