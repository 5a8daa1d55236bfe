"""The README's main job, shortened (a micro corpus, a few steps): every stage runs and leaves its
artifacts under one folder, and a second run reuses them."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FAST_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = {'text_only': 60, 'speech_only': 30, 'aligned': 16, 'validation': 4, 'test_clean': 4,
         'test_other': 4}


def demo(workdir):
  # As a user runs it: its own corpus, one CPU device (not the tests' eight).
  env = {k: v for k, v in os.environ.items() if k not in ('ZIPPER_CORPUS_DIR', 'XLA_FLAGS')}
  env['XLA_FLAGS'] = FAST_COMPILE
  done = subprocess.run(
      [sys.executable, '-m', 'zipper_jax.speech.demo', f'--workdir={workdir}',
       f'--corpus_size={json.dumps(MICRO)}', '--text_pretrain_steps=3',
       '--speech_pretrain_steps=3', '--steps=3', '--single_steps=3', '--batch_size=4',
       '--pretrain_batch_size=4', '--tts_utterances=1'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


@pytest.mark.slow
def test_demo_runs_every_stage_then_reuses_them(tmp_path):
  out = demo(tmp_path)
  assert '| test_clean: ASR WER, greedy |' in out and 'TTS ceiling' in out
  assert os.path.exists(tmp_path / 'corpus' / 'metadata.json')
  for run in ('text', 'speech', 'zipper', 'single_decoder'):
    assert os.listdir(tmp_path / run / 'checkpoints')
    assert os.path.exists(tmp_path / run / 'vocabularies' / 'index.json')
  for run in ('zipper', 'single_decoder'):
    for name in ('test_clean', 'test_other', 'text_perplexity'):
      assert os.path.exists(tmp_path / run / 'eval' / f'{name}.json')
  perplexity = json.loads((tmp_path / 'zipper' / 'eval' / 'text_perplexity.json').read_text())
  assert perplexity['run_text_tower'] == perplexity['tower_alone']  # frozen: bit-identical
  for artifact in ('report.md', 'wer.png', 'training.png'):
    assert os.path.exists(tmp_path / 'report' / artifact)
  again = demo(tmp_path)
  assert again.count('reused') == 7  # corpus, four runs, two evaluations
