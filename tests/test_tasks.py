import collections

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks.speech_text as speech_text
from tasks import preprocessors
from zipper_jax.speech.synthetic_corpus import SIZES, units_of
from zipper_jax.vocabularies import UnitVocabulary, load_vocabularies, save_vocabularies

TEXT, SPEECH = speech_text.TEXT_VOCABULARY, speech_text.SPEECH_VOCABULARY


def examples(name, split='train', limit=None, shard=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      None, split=split, shuffle=False, num_epochs=1, shard_info=shard)
  return list(ds.take(limit or -1).as_numpy_iterator())


def text_of(example):
  return TEXT.decode(example['text'].tolist())


@pytest.mark.parametrize('name, present', [
    ('text_lm', {'text'}), ('speech_lm', {'speech'}), ('asr', {'speech', 'text'}),
    ('tts', {'speech', 'text'}), ('asr_10pct', {'speech', 'text'})])
def test_tasks_yield_well_formed_examples(corpus, name, present):
  for split in ('train', 'validation', 'test_clean', 'test_other'):
    for ex in examples(name, split, limit=5):
      for modality, vocabulary in speech_text.VOCABULARIES.items():
        ids = ex[modality]
        assert ids.dtype == np.int32
        assert len(ex[f'{modality}_interleaved']) == len(ids) == len(ex[f'{modality}_weights'])
        if modality in present:
          assert ids[-1] == vocabulary.eos_id and np.all((ids >= 1) & (ids < vocabulary.vocab_size))
        else:
          assert len(ids) == 0


def test_asr_example_is_speech_then_text(corpus):
  ex = examples('asr', limit=1)[0]
  sentence = text_of(ex)
  assert sentence in corpus
  np.testing.assert_array_equal(SPEECH.decode(ex['speech'].tolist()), units_of(sentence))
  speech_length = len(ex['speech'])
  np.testing.assert_array_equal(ex['text_interleaved'],
                                speech_length + np.arange(len(ex['text'])))
  assert ex['text_weights'].min() == 1 and ex['speech_weights'].max() == 0
  tts = examples('tts', limit=1)[0]
  assert tts['speech_interleaved'][0] == len(tts['text']) and tts['speech_weights'].min() == 1


def test_single_decoder_sequence_puts_speech_past_the_text_vocabulary(corpus):
  asr, single = examples('asr', limit=1)[0], examples('single_asr', limit=1)[0]
  np.testing.assert_array_equal(
      single['single'], np.concatenate([asr['speech'] + TEXT.vocab_size, asr['text']]))
  np.testing.assert_array_equal(single['single_weights'] > 0,
                                np.arange(len(single['single'])) >= len(asr['speech']))
  assert seqio.get_mixture_or_task('single_asr').output_features['single'].vocabulary.vocab_size \
      == TEXT.vocab_size + SPEECH.vocab_size


def test_fractions_are_nested(corpus):
  texts = {name: {text_of(ex) for ex in examples(name)}
           for name in ('asr_1pct', 'asr_10pct', 'asr')}
  assert len(texts['asr_1pct']) == 2 and len(texts['asr_10pct']) == 20
  assert len(texts['asr']) == SIZES['aligned']
  assert texts['asr_1pct'] < texts['asr_10pct'] < texts['asr']


def test_speech_lm_trains_on_the_speech_of_both_speech_splits(corpus):
  speech = [tuple(ex['speech']) for ex in examples('speech_lm')]
  assert len(speech) == SIZES['speech_only'] + SIZES['aligned']
  assert {tuple(ex['speech']) for ex in examples('asr')} < set(speech)


def test_hosts_read_disjoint_shards_that_cover_the_data(corpus):
  full = [tuple(ex['text']) for ex in examples('asr')]
  shards = [[tuple(ex['text']) for ex in examples('asr', shard=seqio.ShardInfo(i, 2))]
            for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(full)


def test_mixture_follows_its_rates(corpus):
  gin.parse_config(['mixture_rates.asr = 3.0', 'mixture_rates.tts = 1.0',
                    'mixture_rates.text_lm = 1.0', 'mixture_rates.speech_lm = 0.0'])
  ds = seqio.get_mixture_or_task('asr_tts_unimodal').get_dataset(
      None, split='train', shuffle=True, seed=3, num_epochs=None)
  kinds = collections.Counter()
  for ex in ds.take(2000).as_numpy_iterator():
    if len(ex['speech']) == 0:
      kinds['text_lm'] += 1
    elif len(ex['text']) == 0:
      kinds['speech_lm'] += 1
    else:
      kinds['asr' if ex['text_weights'].max() > 0 else 'tts'] += 1
  assert kinds['speech_lm'] == 0
  assert abs(kinds['asr'] / 2000 - 0.6) < 0.04 and abs(kinds['tts'] / 2000 - 0.2) < 0.04


def _bad_task(name, records, present=('speech', 'text')):
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(records),
      splits=['train'])
  vocabularies = {'speech': UnitVocabulary(), 'text': seqio.PassThroughVocabulary(10, 1)}
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, output_features={
      k: seqio.Feature(v, add_eos=False) for k, v in vocabularies.items()}, preprocessors=[
      preprocessors.encode(name, vocabularies, present),
      preprocessors.check_tokens(name, vocabularies, present)])
  return lambda: examples(name)


def test_bad_data_is_named_with_task_and_feature():
  out_of_range = _bad_task('bad_units', {'speech': [[3, 1024]], 'text': [[2, 3]]})
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"task bad_units, feature speech: a token id outside"):
    out_of_range()
  empty = _bad_task('empty_text', {'speech': [[3, 4]], 'text': np.zeros((1, 0), np.int32)})
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"task empty_text, feature text: an empty sequence"):
    empty()
  missing = _bad_task('missing_text', {'speech': [[3, 4]]})
  with pytest.raises(ValueError,
                     match=r"task 'missing_text': examples lack feature\(s\) \['text'\]"):
    missing()


def test_vocabularies_travel_with_a_run(corpus, tmp_path):
  save_vocabularies(str(tmp_path), speech_text.VOCABULARIES)
  loaded = load_vocabularies(str(tmp_path))
  assert loaded['speech'] == SPEECH
  assert loaded['text'].encode('the red dog') == TEXT.encode('the red dog')
  assert SPEECH.encode([0, 1023]) == [1, 1024]
  assert SPEECH.decode([1025, 1, 1024, 1026, 0]) == [0, 1023]
  with pytest.raises(ValueError, match='outside'):
    SPEECH.encode([1024])
