"""The speech-text corpus: text, plan, synthesis, tokenizer, resynthesiser, judge, resumable build.

A micro corpus (a few dozen utterances, real synthesis, a real 1024-unit tokenizer: conftest's
`micro_corpus`) is built once per test session; the tiny corpus's own figures come from
`zipper corpus stats`.
"""
import dataclasses
import json
import operator
import os
import shutil
import subprocess
import sys

import jiwer
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from conftest import MICRO_CORPUS, MICRO_SEED
from zipper_jax.speech import (audio, corpus, corpus_text, corpus_tfds, flite, judge, parallel,
                               resynthesis, synthesis, text_normalization, unit_tokenizer)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
import unit_purity  # noqa: E402

SENTENCES = [('fortunes', f'sentence number {text_normalization.spoken_form(str(i))} is '
              'spoken here') for i in range(200)]


def test_normalizer_speaks_numbers_and_drops_punctuation():
  assert corpus_text.normalize('In 1984, 12,000 men\u2014and 3.5 sheep\u2014came!') == (
      'in one thousand nine hundred and eighty four twelve thousand men and three point five '
      'sheep came')
  assert corpus_text.normalize("Don't stop 'em now.") == "don't stop em now"
  assert corpus_text.normalize('Too short.') is None
  assert corpus_text.normalize('See <H0430> the markup here') is None
  assert corpus_text.normalize(' '.join(['word'] * 31)) is None
  assert text_normalization.normalize_transcript('Hello, <unk> World!') == 'hello unk world'


def test_workers_start_once_for_every_map_and_keep_the_order():
  # Jobs of builtins: a worker imports nothing else (a test module would bring JAX and TF).
  with parallel.Workers(2) as workers:
    assert workers.map(abs, list(range(-20, 0)), 'in order') == list(range(20, 0, -1))
    processes = {pid for _ in range(3) for pid in workers.map(operator.call, [os.getpid] * 4,
                                                              'which processes')}
    alone = workers.map(operator.call, [os.getpid], 'alone')
  # Three maps, one pair of processes (a pool a map would show at least three).
  assert len(processes) <= 2 and os.getpid() not in processes
  assert alone == [os.getpid()]  # one job: no process started for it


def test_workers_run_one_blas_thread_each():
  before = os.environ.get('OPENBLAS_NUM_THREADS')
  with parallel.Workers(2) as workers:
    assert workers.map(os.getenv, ['OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS'] * 2,
                       'threads') == ['1'] * 4
  assert os.environ.get('OPENBLAS_NUM_THREADS') == before


@pytest.mark.parametrize('voice', flite.VOICES)
def test_flite_in_process_speaks_as_the_flite_command_does(voice, tmp_path):
  text = 'the quick brown fox jumps over seven lazy dogs'
  for rate in (1.0, 0.85):
    subprocess.run(['flite', '-voice', voice, '--setf', f'duration_stretch={1 / rate:.4f}',
                    '-t', text, '-o', str(tmp_path / 'command.wav')], check=True)
    command, command_rate = soundfile.read(tmp_path / 'command.wav', dtype='int16')
    for _ in range(2):  # the engine's noise is reseeded: the same audio every time
      samples, sample_rate = flite.synthesize(text, voice, rate)
      assert sample_rate == command_rate and np.array_equal(samples, command)
  with pytest.raises(ValueError, match='unknown flite voice'):
    flite.synthesize(text, 'kal')


def test_plan_is_disjoint_seeded_and_keeps_test_other_voices_unseen():
  utterances = corpus.plan(SENTENCES, MICRO_CORPUS, seed=0)
  assert utterances == corpus.plan(SENTENCES, MICRO_CORPUS, seed=0)
  assert utterances != corpus.plan(SENTENCES, MICRO_CORPUS, seed=1)
  texts = {split: {u.text for u in utterances if u.split == split} for split in corpus.SPLITS}
  assert {split: len(t) for split, t in texts.items()} == MICRO_CORPUS
  assert len(set.union(*texts.values())) == sum(MICRO_CORPUS.values())
  train_voices = {u.voice for u in utterances if u.split in ('speech_only', 'aligned')}
  assert {u.voice for u in utterances if u.split == 'test_clean'} <= train_voices
  other = [u for u in utterances if u.split == 'test_other']
  assert not {u.voice for u in other} & train_voices
  assert all(u.snr_db == corpus.TEST_OTHER_SNR_DB and u.rate != 1 for u in other)
  with pytest.raises(ValueError, match='needs 201 sentences; the sources give 200'):
    spoken = sum(MICRO_CORPUS.values()) - MICRO_CORPUS['text_only']
    corpus.plan(SENTENCES, {**MICRO_CORPUS, 'text_only': len(SENTENCES) + 1 - spoken}, seed=0)


def test_evaluation_splits_stay_when_training_splits_change_size():
  def evaluation(splits):
    return [u for u in corpus.plan(SENTENCES, splits, seed=0)
            if u.split in corpus.EVALUATION_SPLITS]
  resized = {**MICRO_CORPUS, 'text_only': MICRO_CORPUS['text_only'] + 7,
             'aligned': MICRO_CORPUS['aligned'] - 3}
  assert evaluation(resized) == evaluation(MICRO_CORPUS)
  assert evaluation({**MICRO_CORPUS, 'test_clean': MICRO_CORPUS['test_clean'] + 1}) != (
      evaluation(MICRO_CORPUS))


def test_every_noisy_utterance_gets_its_own_noise():
  # test_other ids share their first bytes: a seed of those alone would be one noise for all.
  seeds = [corpus.noise_seed(MICRO_SEED, f'test_other-{i:06d}') for i in range(1000)]
  assert len(set(seeds)) == 1000 and all(0 <= s < 2**31 for s in seeds)
  assert corpus.noise_seed(0, 'test_other-000001') != corpus.noise_seed(1, 'test_other-000001')
  assert corpus.noise_seed(0, 'test_other-000001') == corpus.noise_seed(0, 'test_other-000001')


def test_a_size_chooses_voices_rates_and_sentence_length():
  size = corpus.CorpusSize({'text_only': 20, 'speech_only': 20, 'aligned': 20, 'validation': 5,
                            'test_clean': 5, 'test_other': 5}, voices=('flite/slt',),
                           rates=(1.0,), max_words=6)
  varied = [('fortunes', ' '.join(['word'] * (3 + i % 6)) + f' {i}') for i in range(200)]
  utterances = corpus.plan(varied, size, seed=0)
  assert all(len(u.text.split()) <= 6 for u in utterances)
  spoken = [u for u in utterances if u.split not in ('text_only', 'test_other')]
  assert {(u.voice, u.rate) for u in spoken} == {('flite/slt', 1.0)}
  fitting = sum(len(text.split()) <= 6 for _, text in varied)
  too_many = {**size.splits, 'text_only': fitting + 1 - len(utterances) + 20}
  with pytest.raises(ValueError, match=f'the sources give {fitting} of at most 6 words'):
    corpus.plan(varied, dataclasses.replace(size, splits=too_many), seed=0)


def test_build_writes_disjoint_splits_readable_by_tfds(micro_corpus):
  manifests = {split: corpus.read_manifest(micro_corpus, split) for split in corpus.SPLITS}
  texts = [line['text'] for lines in manifests.values() for line in lines]
  assert len(texts) == len(set(texts)) == sum(MICRO_CORPUS.values())
  for split, lines in manifests.items():
    for line in lines:
      assert ('units' in line) == (split != 'text_only')
      if 'units' in line:
        assert 0 <= min(line['units']) and max(line['units']) < 1024
        assert abs(len(line['units']) / line['duration'] - 25) < 1
        assert os.path.exists(os.path.join(micro_corpus, line['audio']))
  loaded = tfds.load(corpus_tfds.NAME, data_dir=micro_corpus, split='aligned')
  by_id = {line['id']: line for line in manifests['aligned']}
  for example in tfds.as_numpy(loaded):
    line = by_id[example['id'].decode()]
    assert example['text'].decode() == line['text']
    assert example['units'].tolist() == line['units']
  with open(os.path.join(micro_corpus, 'metadata.json')) as f:
    metadata = json.load(f)
  assert set(metadata['sources']) == {s.name for s in corpus_text.SOURCES}
  assert all(s['licence'] for s in metadata['sources'].values())


def test_same_seed_rebuilds_the_same_units(micro_corpus, tmp_path):
  corpus.build(str(tmp_path), MICRO_CORPUS, seed=MICRO_SEED, workers=2)
  for split in corpus.SPLITS:
    assert corpus.read_manifest(str(tmp_path), split) == corpus.read_manifest(micro_corpus, split)
  with open(tmp_path / 'metadata.json') as f:
    built = json.load(f)
  # `zipper corpus prepare` over a built corpus keeps how it was built.
  assert corpus.prepare(str(tmp_path), seed=MICRO_SEED, workers=2) == built
  assert 'sources' in built and 'test_other' in built


def test_stats_describe_each_split(micro_corpus):
  table = corpus.stats(micro_corpus, judged_utterances=0)
  assert table['text_only'] == {'utterances': MICRO_CORPUS['text_only']}
  aligned = table['aligned']
  assert aligned['utterances'] == MICRO_CORPUS['aligned'] and aligned['hours'] > 0
  assert 24 < aligned['units_per_second'] < 26  # 25 Hz, give or take the last frame
  assert 2 < aligned['units_per_token'] < 12


def test_a_folder_keeps_the_request_it_was_built_for(micro_corpus):
  with pytest.raises(ValueError, match='holds a corpus built with'):
    corpus.build(micro_corpus, MICRO_CORPUS, seed=4)


def test_a_folder_built_for_another_meaning_of_a_size_name_is_refused(tmp_path):
  (tmp_path / 'request.json').write_text(json.dumps({'size': 'tiny', 'seed': 0}))
  with pytest.raises(ValueError, match='holds a corpus built with'):
    corpus.check_request(str(tmp_path), 'tiny', seed=0)


def test_interrupted_build_resumes_without_redoing_finished_work(micro_corpus, tmp_path,
                                                                 monkeypatch):
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(micro_corpus, resumed)
  expected = corpus.read_manifest(resumed, 'aligned')
  lost = expected[:3]
  for line in lost:
    os.remove(os.path.join(resumed, line['audio']))
  for stale in ('metadata.json', 'manifest/aligned.jsonl'):
    os.remove(os.path.join(resumed, stale))
  spoken = []
  synthesize = synthesis.synthesize
  monkeypatch.setattr(synthesis, 'synthesize',
                      lambda text, *a: spoken.append(text) or synthesize(text, *a))
  corpus.build(resumed, MICRO_CORPUS, seed=MICRO_SEED, workers=1)
  assert sorted(spoken) == sorted(line['text'] for line in lost)
  assert corpus.read_manifest(resumed, 'aligned') == expected
  assert os.path.exists(os.path.join(resumed, 'metadata.json'))


def test_flite_speaks_only_in_processes_that_have_not_loaded_piper(micro_corpus, tmp_path,
                                                                     monkeypatch):
  # onnxruntime's thread calls libc's rand(), flite's noise source: once a process has spoken
  # with Piper, flite's audio there may change at random.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(micro_corpus, resumed)
  lost = [corpus.read_manifest(resumed, split)[0] for split in ('test_other', 'aligned')]
  for line in lost:
    os.remove(os.path.join(resumed, line['audio']))
  maps = []
  parallel_map = parallel.parallel_map
  monkeypatch.setattr(parallel, 'parallel_map', lambda function, jobs, *args: maps.append(
      {synthesis.engine(job[1]) for job in jobs}) or parallel_map(function, jobs, *args))
  corpus.build(resumed, MICRO_CORPUS, seed=MICRO_SEED, workers=2)
  assert maps == [{'flite'}, {'piper'}]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
  def crash(path, *args, **kwargs):
    with open(path, 'wb') as f:
      f.write(b'RIFF half a header')
    raise KeyboardInterrupt

  monkeypatch.setattr(soundfile, 'write', crash)
  with pytest.raises(KeyboardInterrupt):
    audio.write_audio(str(tmp_path / 'a.flac'), np.zeros(160, np.float32))
  assert os.listdir(tmp_path) == []


def test_tokenizer_round_trips_and_encodes_stored_audio_to_the_manifest(micro_corpus, tmp_path):
  tokenizer = unit_tokenizer.SpeechTokenizer.load(os.path.join(micro_corpus, 'speech_tokenizer'))
  assert tokenizer.num_units == 1024 and tokenizer.config.unit_rate == 25
  line = corpus.read_manifest(micro_corpus, 'aligned')[0]
  path = os.path.join(micro_corpus, line['audio'])
  assert tokenizer.encode_file(path).tolist() == line['units']
  tokenizer.save(str(tmp_path / 'copy'))
  copy = unit_tokenizer.SpeechTokenizer.load(str(tmp_path / 'copy'))
  assert copy.encode_file(path).tolist() == line['units']


def test_encoding_edge_cases(micro_corpus, tmp_path):
  """Silence: one unit per 40 ms like any audio. 0.1 s: 3 units (frames are centred, so 1600
  samples give 6 frames). 44.1 kHz stereo: resampled on reading, so it encodes like the 16 kHz
  mono original up to resampling error."""
  tokenizer = unit_tokenizer.SpeechTokenizer.load(os.path.join(micro_corpus, 'speech_tokenizer'))
  silence = tokenizer.encode(np.zeros(audio.SAMPLE_RATE, np.float32))
  assert len(silence) == 26 and silence.min() >= 0 and silence.max() < 1024
  assert len(tokenizer.encode(np.random.default_rng(0).uniform(-.1, .1, 1600))) == 3
  line = corpus.read_manifest(micro_corpus, 'aligned')[0]
  original = audio.read_audio(os.path.join(micro_corpus, line['audio']))
  stereo = np.stack([original, original], axis=1)
  soundfile.write(tmp_path / 'stereo.wav', audio.resample(stereo, 16_000, 44_100), 44_100)
  units = tokenizer.encode_file(str(tmp_path / 'stereo.wav'))
  assert abs(len(units) - len(line['units'])) <= 1
  assert np.mean(units[:len(line['units'])] == line['units'][:len(units)]) > 0.5


def test_unusable_audio_is_named(tmp_path):
  (tmp_path / 'corrupt.wav').write_bytes(b'RIFF\x00\x00garbage' * 10)
  with pytest.raises(audio.AudioError, match='corrupt.wav: not a readable audio file'):
    audio.read_audio(str(tmp_path / 'corrupt.wav'))
  soundfile.write(tmp_path / 'empty.wav', np.zeros(0, np.float32), 16_000)
  with pytest.raises(audio.AudioError, match='empty.wav: the file holds no audio samples'):
    audio.read_audio(str(tmp_path / 'empty.wav'))
  with pytest.raises(audio.AudioError, match='missing.wav: no such audio file'):
    audio.read_audio(str(tmp_path / 'missing.wav'))


def test_resynthesizer_renders_every_unit_and_round_trips(micro_corpus, tmp_path):
  resynthesizer = resynthesis.Resynthesizer.load(os.path.join(micro_corpus, 'resynthesizer.npz'))
  units = np.asarray(corpus.read_manifest(micro_corpus, 'aligned')[0]['units'])
  wav = resynthesizer.audio(units)
  assert wav.dtype == np.float32 and abs(len(wav) - len(units) * 640) <= 640
  assert np.array_equal(wav, resynthesizer.audio(units))  # Griffin-Lim from a fixed phase
  resynthesizer.save(str(tmp_path / 'r.npz'))
  assert np.array_equal(resynthesis.Resynthesizer.load(str(tmp_path / 'r.npz')).audio(units),
                        wav)


def test_judge_understands_the_corpus_audio(micro_corpus):
  """The judge's WER on original flite audio; the tiny corpus measures about 0.25 (docs/data.md)."""
  lines = corpus.read_manifest(micro_corpus, 'aligned')
  hypotheses = [judge.transcribe(audio.read_audio(os.path.join(micro_corpus, line['audio'])))
                for line in lines]
  assert jiwer.wer([line['text'] for line in lines], hypotheses) < 0.5


def test_the_judge_hears_each_utterance_as_a_fresh_decoder_would(micro_corpus):
  """Transcripts do not depend on what the judge transcribed before (pocketsphinx adapts its
  front end across utterances): noisy speech judged forwards, then backwards, then alone."""
  lines = [line for line in corpus.read_manifest(micro_corpus, 'test_other') if 'audio' in line]
  wavs = [audio.read_audio(os.path.join(micro_corpus, line['audio'])) for line in lines]
  forwards = [judge.transcribe(wav) for wav in wavs]
  assert [judge.transcribe(wav) for wav in reversed(wavs)][::-1] == forwards
  judge._decoder.cache_clear()
  assert judge.transcribe(wavs[-1]) == forwards[-1]


def test_prepare_takes_your_own_audio_and_units(micro_corpus, tmp_path):
  """LibriSpeech-style input: absolute audio paths, upper-case text, some speech pre-tokenised."""
  own = str(tmp_path / 'own')
  for split in corpus.SPLITS:
    lines = []
    for line in corpus.read_manifest(micro_corpus, split):
      mine = {'id': line['id'], 'text': line['text'].upper()}
      if split == 'aligned':
        mine['units'] = line['units']
      elif 'audio' in line:
        mine['audio'] = os.path.join(micro_corpus, line['audio'])
      lines.append(mine)
    corpus._write_jsonl(os.path.join(own, 'utterances', f'{split}.jsonl'), lines)
  corpus.prepare(own, seed=MICRO_SEED, workers=2)
  for split in corpus.SPLITS:
    prepared, built = corpus.read_manifest(own, split), corpus.read_manifest(micro_corpus, split)
    assert [line['text'] for line in prepared] == [line['text'] for line in built]
    assert [line.get('units') for line in prepared] == [line.get('units') for line in built]
  assert len(tfds.load(corpus_tfds.NAME, data_dir=own, split='aligned')) == MICRO_CORPUS['aligned']


def test_unit_purity_reads_the_phones_flite_spoke_under_the_units(micro_corpus):
  # Units that name their phone carry all of its information; shuffled ones, little.
  phones = np.random.default_rng(0).integers(0, 40, 50_000)
  assert unit_purity.pnmi(phones, phones) == pytest.approx(1.0)
  assert unit_purity.pnmi(phones, np.random.default_rng(1).integers(0, 40, 50_000)) < 0.01
  # The micro corpus, spoken again: the units of every voice but the diphone one span flite's
  # timings.
  result = unit_purity.main([f'--corpus={micro_corpus}', '--splits=aligned,test_clean'])
  voices = {line['id']: line['voice'] for split in ('aligned', 'test_clean')
            for line in corpus.read_manifest(micro_corpus, split)}
  assert {voices[uid] for uid in result['left_out']} <= {'flite/kal16'}
  assert result['utterances'] + len(result['left_out']) == len(voices)
  assert result['pnmi_shuffled'] < result['pnmi'] < 1 and result['phones'] > 20
  assert 1 / result['phones'] < result['heldout_accuracy'] < 1
