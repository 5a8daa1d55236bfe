"""The LibriSpeech task family on TFDS mock data: LibriSpeech's examples (int16 audio, upper-case
transcripts) come out as the corpus's aligned tasks do, in its vocabularies."""
import os

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks.librispeech as librispeech
import tasks.speech_text as speech_text
from zipper_jax.speech import audio, corpus
from zipper_jax.speech.unit_tokenizer import SpeechTokenizer


def mock_librispeech(micro_corpus):
  """The micro corpus's test_clean recordings, as LibriSpeech stores them."""
  lines = corpus.read_manifest(micro_corpus, 'test_clean')
  recordings = [{
      'speech': (audio.read_audio(os.path.join(micro_corpus, line['audio'])) *
                 np.iinfo(np.int16).max).astype(np.int16),
      'text': line['text'].upper(), 'speaker_id': 1, 'chapter_id': 2, 'id': f'1-2-{i:04d}'}
      for i, line in enumerate(lines)]

  def as_dataset(self, *args, **kwargs):
    del args, kwargs
    return tf.data.Dataset.from_generator(lambda: iter(recordings),
                                          output_signature=self.info.features.get_tensor_spec())

  return recordings, tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_librispeech_tasks_read_audio_into_the_corpus_units(corpus, micro_corpus, monkeypatch):
  # The tasks' vocabularies are the (toy) `corpus`'s; the micro corpus gives speech and units.
  tokenizer = SpeechTokenizer.load(os.path.join(micro_corpus, 'speech_tokenizer'))
  monkeypatch.setattr(librispeech, '_tokenizer', lambda: tokenizer)
  recordings, mocked = mock_librispeech(micro_corpus)
  text, speech = speech_text.TEXT_VOCABULARY, speech_text.SPEECH_VOCABULARY
  with mocked:
    # (Mock data has no split sizes, which seqio's in-memory cache asks for.)
    get = lambda name, split: list(seqio.get_mixture_or_task(name).get_dataset(
        None, split=split, shuffle=False, num_epochs=1, try_in_mem_cache=False
    ).as_numpy_iterator())
    asr, single_tts = get('librispeech_asr', 'test_clean'), get('single_librispeech_tts', 'train')
    mixed = seqio.get_mixture_or_task('librispeech_asr_tts').get_dataset(
        None, split='validation', shuffle=False, num_epochs=1, try_in_mem_cache=False)
  assert len(asr) == len(single_tts) == len(recordings) and next(iter(mixed))
  for example, recording in zip(asr, recordings):
    units = tokenizer.encode(recording['speech'] / np.iinfo(np.int16).max)
    assert len(units) > 20
    np.testing.assert_array_equal(speech.decode(example['speech'][:-1].tolist()), units)
    assert example['text'][:-1].tolist() == text.encode(recording['text'].lower())
    assert example['text_weights'].min() == 1 and example['speech_weights'].max() == 0
    np.testing.assert_array_equal(example['text_interleaved'],
                                  len(example['speech']) + np.arange(len(example['text'])))
  tts = single_tts[0]
  assert tts['single'].max() >= text.vocab_size  # speech past the text vocabulary, as trained
  assert tts['single_weights'][-1] == 1 and tts['single_weights'][0] == 0
