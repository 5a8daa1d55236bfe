"""Preemption of a multi-process run (two processes of four devices each, as two hosts): every
process stops at one agreed step, saves once together and exits 0, whether SIGTERM reaches all of
them or one; resumed by a new pair of processes, the run equals one process that was never
stopped."""
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from synthetic_tasks import experiment_gin
from zipper_jax import checkpoints, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, DEVICES_PER_PROCESS = 2, 4


def experiment(directory, steps):
  return experiment_gin(directory, steps, 16, 'learning_rate_schedule.total_steps = 10',
                        'learning_rate_schedule.warmup_steps = 2', 'train.log_every = 1',
                        "train.host_sharding = 'global_batch'", 'train.checkpoint_every = 1000')


def launch(directory, steps):
  """Two processes of four devices each, training the experiment in `directory`."""
  env = dict(os.environ, PYTHONPATH=os.path.join(REPO, 'tests'))
  return subprocess.Popen(
      [sys.executable, '-u', 'launch/local.py', f'--num_processes={PROCESSES}',
       f'--devices_per_process={DEVICES_PER_PROCESS}', '--', '-u', '-m', 'zipper_jax.main', 'train',
       f'--gin_file={experiment(directory, steps)}'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def preempt(launcher, signal_all: bool) -> str:
  """Waits for the run's second step, sends SIGTERM (to every process through the launcher, or
  to one process alone); returns the output once every process has exited. A process left
  waiting in a collective or a barrier would hang here until the timeout fails the test."""
  output = []
  for line in launcher.stdout:
    output.append(line)
    if line.startswith('step      2'):
      break
  else:
    pytest.fail(''.join(output[-40:]))
  if signal_all:
    launcher.send_signal(signal.SIGTERM)
  else:
    children = subprocess.check_output(['pgrep', '-P', str(launcher.pid)], text=True).split()
    os.kill(int(children[-1]), signal.SIGTERM)
  rest, _ = launcher.communicate(timeout=120)
  return ''.join(output) + rest


@pytest.mark.slow
def test_preempted_processes_save_one_agreed_step_and_resume_like_one_run(tmp_path):
  stopped = {}
  for signal_all in (True, False):
    directory = tmp_path / ('all' if signal_all else 'one')
    launcher = launch(directory, 100_000)
    output = preempt(launcher, signal_all)
    assert launcher.returncode == 0, output[-3000:]
    saved = os.listdir(directory / 'run' / 'checkpoints')
    assert len(saved) == 1 and int(saved[0]) >= 2, saved  # one save, of a step all reached
    assert re.search(rf'preempted: every process saves step {saved[0]}\b', output)
    stopped[signal_all] = int(saved[0])

  # Resumed past where it stopped, the run equals one that was never stopped.
  target = stopped[False] + 2
  resumed = launch(tmp_path / 'one', target)
  output, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, output[-3000:]
  main.main(['train', f'--gin_file={experiment(tmp_path / "straight", target)}',
             f'--gin.Partitioner.num_devices={PROCESSES * DEVICES_PER_PROCESS}'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               checkpoints.load_params(str(tmp_path / 'one' / 'run')),
               checkpoints.load_params(str(tmp_path / 'straight' / 'run')))
