"""The `zipper` command: gin errors before compute, SIGTERM, evaluation of a run."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from conftest import zipper_error
from synthetic_tasks import SPEECH_VOCAB, TEXT_VOCAB, experiment_gin
from zipper_jax import checkpoints, main
from zipper_jax.errors import UserError
from zipper_jax.run_dir import RunDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FSDP = 'Partitioner.mesh_shape = (1, -1, 1)'  # parameters split over all 8 devices
TINY_FROZEN_TEXT = ['--gin_file=gin/models/tiny.gin', '--gin_file=gin/runs/zipper_frozen_text.gin']


def test_misspelt_binding_fails_before_any_compute(capsys):
  error = zipper_error(capsys, ['train', *TINY_FROZEN_TEXT, '--gin.train.batch_sise=3'])
  assert "'train' doesn't have a parameter named 'batch_sise'" in error
  with pytest.raises(UserError, match='batch_sise'):  # --verbose: the exception, traceback and all
    main.main(['train', *TINY_FROZEN_TEXT, '--gin.train.batch_sise=3', '--verbose'])


def test_missing_macro_and_missing_file_are_named(capsys):
  assert 'MODEL_DIR' in zipper_error(capsys, ['train', *TINY_FROZEN_TEXT])
  assert 'gin/runs/no_such_run.gin' in zipper_error(
      capsys, ['train', '--gin_file=gin/runs/no_such_run.gin'])


def test_an_unregistered_task_says_how_to_register_it(tmp_path, capsys):
  error = zipper_error(capsys, [
      'train', *TINY_FROZEN_TEXT, f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.MIXTURE_OR_TASK_NAME='asr_tts_typo'", '--gin.TRAIN_STEPS=1',
      "--gin.TASK_FEATURE_LENGTHS={'speech': 8, 'text': 8}", '--gin.TEXT_VOCAB_SIZE=64'])
  assert "no seqio task or mixture is named 'asr_tts_typo'" in error and 'import' in error
  assert not os.path.exists(tmp_path / 'run')  # nothing written for a run that cannot start


def test_a_users_error_is_one_line_without_start_up_noise(tmp_path):
  """As a terminal shows it: one line on stderr, exit 2, no TensorFlow or absl banner."""
  done = subprocess.run([sys.executable, '-m', 'zipper_jax.main', 'train', *TINY_FROZEN_TEXT,
                         '--gin.train.batch_sise=3'], cwd=REPO, capture_output=True, text=True,
                        env={k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'})
  assert done.returncode == 2 and done.stdout == ''
  assert done.stderr.startswith('zipper: error: ') and done.stderr.count('\n') == 1, done.stderr


def test_help_explains_each_command(capsys):
  def help_text(*command):
    with pytest.raises(SystemExit) as exit:
      main.main([*command, '--help'])
    assert exit.value.code == 0
    return capsys.readouterr().out
  top = help_text()
  assert 'train' in top and 'eval' in top and '--gin.NAME=VALUE' in top
  assert 'resuming from MODEL_DIR' in help_text('train') and '--gin_file' in help_text('train')
  assert 'newest checkpoint' in help_text('eval')


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path, capsys):
  env = dict(os.environ, PYTHONPATH=os.path.join(REPO, 'tests'), JAX_PLATFORMS='cpu')
  process = subprocess.Popen(
      [sys.executable, '-u', '-m', 'zipper_jax.main', 'train',
       f'--gin_file={experiment_gin(tmp_path, 100_000, 8, "train.log_every = 2", FSDP)}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  for line in process.stdout:
    if line.startswith('step') or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output
  steps = os.listdir(tmp_path / 'run' / 'checkpoints')
  assert len(steps) == 1 and int(steps[0]) >= 2
  params = checkpoints.load_params(str(tmp_path / 'run'))
  assert np.all(np.isfinite(params['speech']['blocks']['mlp']['up']['kernel']))

  evaluate = ['eval', f'--model_dir={tmp_path / "run"}', '--gin_file=gin/runs/eval.gin',
              "--gin.EVAL_TASKS=['toy_asr']", '--gin.BATCH_SIZE=8',
              '--gin.evaluate_checkpoint.max_batches=2']
  model_gin = ['--gin_file=gin/models/tiny.gin', '--gin_file=gin/models/zipper.gin',
               f'--gin.TEXT_VOCAB_SIZE={TEXT_VOCAB}', f'--gin.SPEECH_VOCAB_SIZE={SPEECH_VOCAB}']
  # Same parameter shapes, other wiring: refused, not scored wrong.
  clocked = "--gin.ZipperConfig.cross_attention_clock={'text': 5.0, 'speech': 1.0}"
  assert re.search(r'cross_attention_clock is .*5\.0.* here, None in the run',
                   zipper_error(capsys, evaluate + model_gin + [clocked]))
  assert not os.path.exists(tmp_path / 'run' / 'eval')
  scores = []
  for given in (model_gin, []):  # the run's own model gin files, then none: the run's config.gin
    assert main.main(evaluate + given) == 0
    with open(tmp_path / 'run' / 'eval' / 'toy_asr.json') as f:
      scores.append(json.load(f))
  assert scores[0] == scores[1]
  assert 0 < scores[0]['eval/text/loss'] < 10 and scores[0]['eval/text/weight'] == 2 * 8 * 6
  # What `eval` restored: the run's own layout, FSDP over the 8 devices.
  run = RunDir(str(tmp_path / 'run'))
  assert run.partitioner.mesh.shape == {'data': 1, 'fsdp': 8, 'tensor': 1}
  kernel = run.load_params()['speech']['blocks']['mlp']['up']['kernel']
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 128 // 8, 384)}
