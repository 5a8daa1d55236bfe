"""Real audio in and out (`zipper transcribe`, `zipper speak`), bad audio, and the TTS protocol,
on a micro corpus with real speech, tokenizer and resynthesiser (conftest's `micro_corpus`)."""
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import seqio
import soundfile
from jax.sharding import PartitionSpec

from zipper_jax import batch, checkpoints, main, vocabularies
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import audio, corpus, inference, metrics, parallel, tts_protocol
from zipper_jax.speech.vocabulary import SpeechVocabulary

LENGTHS = {'zipper': {'speech': 96, 'text': 24}, 'single_decoder': {'single': 120}}


def write_run(model_dir, corpus_dir, model_file):
  """A run as the trainer leaves one (config.gin, a checkpoint, vocabularies), with freshly
  initialised parameters: what inference reads, without the cost of training. It trains with
  FSDP over all devices: inference restores it so."""
  text = seqio.SentencePieceVocabulary(os.path.join(corpus_dir, 'text_vocab.model'))
  speech = SpeechVocabulary(corpus_dir)
  lengths = LENGTHS[model_file]
  main.parse_gin(['gin/models/tiny.gin', f'gin/models/{model_file}.gin'],
                 [f'TEXT_VOCAB_SIZE = {text.vocab_size}', f'TASK_FEATURE_LENGTHS = {lengths}',
                  'train.partitioner = @Partitioner()', 'Partitioner.mesh_shape = (1, -1, 1)'],
                 finalize=False)
  run = RunDir(model_dir)
  run.write_config(gin.config_str(), {'text': text, 'speech': speech} if model_file == 'zipper'
                   else {'single': vocabularies.SingleDecoderVocabulary(text, speech)})
  params = nn.unbox(run.model.init(jax.random.key(0),
                                   batch.dummy_batch(run.model.towers, lengths, 1)))
  checkpoints.save_params(model_dir, params, {'step': 0})
  return model_dir


@pytest.fixture(scope='module', params=['zipper', 'single_decoder'])
def run_dir(request, micro_corpus, tmp_path_factory):
  return write_run(str(tmp_path_factory.mktemp(request.param) / 'run'), micro_corpus,
                   request.param)


def utterance(corpus_dir, index=0):
  line = corpus.read_manifest(corpus_dir, 'test_clean')[index]
  return line, os.path.join(corpus_dir, line['audio'])


def test_a_run_carries_its_speech_tokenizer_and_resynthesiser(run_dir, micro_corpus):
  vocabs = vocabularies.load_vocabularies(run_dir)
  speech = vocabs['speech'] if 'speech' in vocabs else vocabs['single'].speech
  assert speech.assets_dir.startswith(run_dir)  # a copy: the run works without the corpus
  line, path = utterance(micro_corpus)
  np.testing.assert_array_equal(speech.tokenizer().encode_file(path), line['units'])


def test_speak_then_transcribe_end_to_end(run_dir, micro_corpus, tmp_path, capsys):
  out = str(tmp_path / 'out.wav')
  assert main.main(['speak', '--model_dir', run_dir, 'the old man sees a dog', '-o', out]) == 0
  wav = audio.read_audio(out)
  assert wav.size > audio.SAMPLE_RATE // 10 and np.abs(wav).max() > 0.01
  # An untrained model speaks to its length limit, a unit longer once re-encoded than the model
  # reads: its first 3 seconds are transcribed.
  audio.write_audio(out, wav[:3 * audio.SAMPLE_RATE])
  capsys.readouterr()
  _, flac = utterance(micro_corpus)
  assert main.main(['transcribe', '--model_dir', run_dir, out, flac]) == 0
  assert len(capsys.readouterr().out.splitlines()) == 2  # one transcript a file


def test_transcribe_scores_against_a_sphinx_transcription(run_dir, micro_corpus, tmp_path,
                                                          capsys):
  line, flac = utterance(micro_corpus)
  name = os.path.splitext(os.path.basename(flac))[0]
  references = tmp_path / 'transcription'
  references.write_text(f'<s> {line["text"]} </s> ({name})\n')
  capsys.readouterr()
  assert main.main(['transcribe', '--model_dir', run_dir, '--references', str(references),
                    flac]) == 0
  transcript, score = capsys.readouterr().out.splitlines()
  rates = metrics.error_rates([line['text']], [transcript])
  assert score.startswith(f"WER {rates['wer']:.1%}, CER {rates['cer']:.1%} (1 utterances")
  references.write_text('<s> other words </s> (another-file)\n')
  assert main.main(['transcribe', '--model_dir', run_dir, '--references', str(references),
                    flac]) == 2
  assert f'has no reference for {flac}' in capsys.readouterr().err


def test_a_run_trained_with_fsdp_is_restored_sharded(run_dir):
  params = inference.SpeechText.from_run(run_dir).params
  kernel = params.get('text', params)['blocks']['mlp']['gate']['kernel']  # [layers, embed, mlp]
  assert kernel.sharding.spec == PartitionSpec(None, 'fsdp', 'tensor')
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 128 // 8, 384)}


def test_audio_at_another_rate_is_resampled(run_dir, micro_corpus, tmp_path):
  line, path = utterance(micro_corpus)
  wav = audio.read_audio(path)
  stereo_8k = str(tmp_path / 'stereo_8k.wav')
  soundfile.write(stereo_8k, np.stack([wav, wav], 1)[::2], 8000)
  system = inference.SpeechText.from_run(run_dir, batch_size=1)
  units = system.speech.tokenizer().encode(audio.read_audio(stereo_8k))
  assert abs(len(units) - len(line['units'])) <= 1  # the same duration, in 25 Hz units
  assert isinstance(system.transcribe([audio.read_audio(stereo_8k)])[0], str)


@pytest.mark.parametrize('make, message', [
    (lambda path: None, 'no such audio file'),
    (lambda path: open(path, 'w').write('not audio at all'), 'not a readable audio file'),
    (lambda path: soundfile.write(path, np.zeros(0, np.float32), 16000),
     'holds no audio samples'),
    (lambda path: soundfile.write(path, np.zeros(40, np.float32), 16000), 'too short'),
])
def test_bad_audio_fails_with_a_clear_message(run_dir, tmp_path, capsys, make, message):
  path = str(tmp_path / 'bad.wav')
  make(path)
  assert main.main(['transcribe', '--model_dir', run_dir, path]) == 2
  error = capsys.readouterr().err
  assert path in error and message in error and 'Traceback' not in error


def test_speech_or_text_longer_than_the_model_reads_is_refused(run_dir, micro_corpus, tmp_path,
                                                              capsys):
  _, path = utterance(micro_corpus)
  long = str(tmp_path / 'long.wav')
  audio.write_audio(long, np.tile(audio.read_audio(path), 8))  # beyond 120 units, 4.8 s
  assert main.main(['transcribe', '--model_dir', run_dir, path, long]) == 2
  error = capsys.readouterr().err
  assert long in error and 'more than the' in error and 'this model reads' in error
  assert path not in error
  text = ' '.join(['the old man sees a dog'] * 30)
  assert main.main(['speak', '--model_dir', run_dir, text, '-o', str(tmp_path / 'o.wav')]) == 2
  assert 'text tokens, more than the' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'o.wav')


def test_tts_protocol_on_ground_truth_units_gives_the_ceiling(micro_corpus):
  lines = corpus.read_manifest(micro_corpus, 'test_clean')[:2]
  texts, units = [l['text'] for l in lines], [l['units'] for l in lines]
  resynthesizer = os.path.join(micro_corpus, 'resynthesizer.npz')
  with parallel.Workers(2) as judges:
    figures = tts_protocol.reference_figures(
        texts, units, resynthesizer, judges,
        [os.path.join(micro_corpus, l['audio']) for l in lines])
    # A "model" that outputs the ground-truth units scores exactly the ceiling.
    as_model = metrics.error_rates(texts, tts_protocol.judge_units(resynthesizer, units, judges))
  assert as_model['wer'] == figures['ceiling_wer']
  assert 0 <= figures['floor_wer'] < 1 and 0 <= figures['ceiling_wer'] <= 1.5
