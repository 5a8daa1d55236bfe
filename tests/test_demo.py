"""The README's main job, shortened: every stage runs and leaves its artifacts."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'ZIPPER_CORPUS_DIR'}
  out = subprocess.run([sys.executable, '-m', 'zipper_jax.demo', f'--workdir={tmp_path}',
                        '--steps=20', '--pretrain_steps=10'], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=600).stdout
  assert 'ASR WER on 64 validation utterances' in out
  for stage in ('text', 'speech', 'zipper'):
    assert os.listdir(tmp_path / stage / 'checkpoints')
    assert os.path.exists(tmp_path / stage / 'vocabularies' / 'index.json')
  assert os.path.exists(tmp_path / 'corpus' / 'zipper_speech_text' / '1.0.0' / 'dataset_info.json')
