"""The README's main job and the paper's grid, shortened (a micro corpus, a few steps): every
stage runs and leaves its artifacts under one folder, and the paper reuses what the demo did."""
import json
import os
import subprocess
import sys

import jax
import pytest
import sklearn

from conftest import FAST_COMPILE
from zipper_jax import main as zipper_main
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import paper, stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 100 aligned pairs: the paper's 1% is one of them.
MICRO = {'text_only': 60, 'speech_only': 30, 'aligned': 100, 'validation': 4, 'test_clean': 4,
         'test_other': 4}


def run(module, *flags):
  # As a user runs it: its own corpus, one CPU device (not the tests' eight).
  env = {k: v for k, v in os.environ.items() if k not in ('ZIPPER_CORPUS_DIR', 'XLA_FLAGS')}
  env['XLA_FLAGS'] = FAST_COMPILE
  done = subprocess.run([sys.executable, '-m', module, *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


@pytest.mark.slow
def test_demo_runs_every_stage_then_the_paper_reuses_them(tmp_path):
  out = run('zipper_jax.speech.demo', f'--workdir={tmp_path}', f'--corpus_size={json.dumps(MICRO)}',
            '--text_pretrain_steps=3', '--speech_pretrain_steps=3', '--steps=3',
            '--single_steps=3', '--batch_size=4', '--pretrain_batch_size=4', '--tts_utterances=1',
            # An untrained model's output runs to the cap (and the judge's time with speech).
            '--asr_max_length_ratio=0.1', '--tts_max_length_ratio=1')
  assert '| test_clean: ASR WER, greedy |' in out and 'TTS ceiling' in out
  assert os.path.exists(tmp_path / 'corpus' / 'metadata.json')
  for run_dir in ('text', 'speech', 'zipper', 'single_decoder'):
    assert os.listdir(tmp_path / run_dir / 'checkpoints')
    assert os.path.exists(tmp_path / run_dir / 'vocabularies' / 'index.json')
  for run_dir in ('zipper', 'single_decoder'):
    for name in ('test_clean', 'test_other', 'text_perplexity'):
      assert os.path.exists(tmp_path / run_dir / 'eval' / f'{name}.json')
  perplexity = json.loads((tmp_path / 'zipper' / 'eval' / 'text_perplexity.json').read_text())
  assert perplexity['run_text_tower'] == perplexity['tower_alone']  # frozen: bit-identical
  for artifact in ('report.md', 'wer.png', 'training.png'):
    assert os.path.exists(tmp_path / 'report' / artifact)

  # The paper's grid on the same folder: the demo's corpus, towers, runs and evaluations reused.
  recordings = tmp_path / 'recordings'
  recordings.mkdir()
  clip = tmp_path / 'corpus' / json.loads(
      (tmp_path / 'corpus' / 'manifest' / 'test_other.jsonl').read_text().splitlines()[0])['audio']
  (recordings / 'clip-1.flac').write_bytes(clip.read_bytes())
  (recordings / 'transcription').write_text('<s> some words </s> (clip-1)\n')
  out = run('zipper_jax.speech.paper', f'--workdir={tmp_path}', f'--out={tmp_path / "paper"}',
            f'--corpus_size={json.dumps(MICRO)}', '--steps=3', '--batch_size=4',
            '--tts_utterances=0', '--asr_max_length_ratio=0.1', f'--real_speech_dir={recordings}',
            '--aligned_fractions=1,0.01')
  assert out.count(': reused') == 7  # corpus, two towers, two runs, two evaluations
  results = json.loads((tmp_path / 'paper' / 'results.json').read_text())
  assert len(results['runs']) == 6  # three systems on 100% and 1% of the aligned pairs
  for row, result in results['runs'].items():
    assert RunDir(str(tmp_path / row)).latest_step() == 3, row
    assert 'test_clean/asr_beam/wer' in result['figures'], row
  assert [c['claim'] for c in results['claims']] == ['a', 'b', 'c', 'd']
  for claim in results['claims']:
    assert claim['verdict'] in ('reproduced', 'not reproduced', 'inconclusive')
    assert claim['low'] <= claim['estimate'] <= claim['high']
  assert results['claims'][3]['verdict'] == 'reproduced'  # both Zipper kinds freeze the text
  assert results['real_speech']['zipper']['utterances'] == 1
  meta = results['provenance']
  assert meta['commit'] and meta['machine']['cpus'] and meta['machine']['cpu_model']
  assert (meta['libraries']['jax'], meta['libraries']['scikit-learn']) == (jax.__version__,
                                                                           sklearn.__version__)
  table = (tmp_path / 'paper' / 'results.md').read_text()
  assert f"CPUs ({meta['machine']['cpu_model']}, cpu)" in table
  assert '## 1% of the aligned pairs' in table and '| (c) With 1%' in table
  assert '## 10% of the aligned pairs' not in table
  assert os.path.getsize(tmp_path / 'paper' / 'aligned_data.png') > 0


def test_a_run_is_reused_or_resumed_only_with_the_config_it_recorded(tmp_path, monkeypatch):
  trainings = []

  def train(argv):  # records the config as `zipper train` does, and trains no step
    trainings.append(argv)
    RunDir(str(tmp_path / 'text')).write_config(zipper_main.command_config(argv))

  monkeypatch.setattr(stages, '_zipper', train)
  bindings = {'TEXT_VOCAB_SIZE': 64, 'BATCH_SIZE': None, 'TRAIN_STEPS': 3}
  for _ in range(2):  # the second resumes: the run has not reached its last step
    stages.train(str(tmp_path), 'text', 'tiny_text_pretrain', bindings)
  assert len(trainings) == 2
  with pytest.raises(SystemExit, match=r'holds a run of another config \(-TRAIN_STEPS = 3; '
                                       r'\+TRAIN_STEPS = 4\)'):
    stages.train(str(tmp_path), 'text', 'tiny_text_pretrain', bindings | {'TRAIN_STEPS': 4})
  assert len(trainings) == 2


@pytest.mark.parametrize('fractions', ['0.1,0.01', '1', '1,0.5', '1,a'])
def test_a_grid_without_100_and_a_smaller_size_is_refused(fractions, capsys):
  with pytest.raises(SystemExit) as exit:
    paper.main([f'--aligned_fractions={fractions}'])
  assert exit.value.code == 2
  assert 'argument --aligned_fractions:' in capsys.readouterr().err


@pytest.mark.parametrize('files,problem', [
    (None, 'no such folder'),
    ({}, 'holds no audio files'),
    ({'clip-1.flac': ''}, 'has no Sphinx `transcription` file'),
    ({'clip-1.flac': '', 'clip-2.wav': '', 'transcription': '<s> words </s> (clip-1)\n'},
     'has no reference for'),
])
def test_recorded_speech_is_checked_before_any_training(files, problem, tmp_path, capsys):
  recordings = tmp_path / 'recordings'
  if files is not None:
    recordings.mkdir()
    for name, text in files.items():
      (recordings / name).write_text(text)
  with pytest.raises(SystemExit) as exit:
    paper.main([f'--workdir={tmp_path / "runs"}', f'--real_speech_dir={recordings}'])
  assert exit.value.code == 2
  error = capsys.readouterr().err
  assert 'argument --real_speech_dir:' in error and problem in error, error
  assert not (tmp_path / 'runs').exists()
