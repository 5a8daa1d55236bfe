"""Preemption of a multi-process run (two processes of four devices each, as two hosts): every
process stops at one agreed step, saves once together and exits 0, whether SIGTERM reaches all of
them or one; resumed by a new pair of processes (and preempted again), the run equals one
process that was never stopped."""
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


def preempt(launcher, after_step: int, signal_all: bool) -> str:
  """Waits for the run to pass `after_step`, sends SIGTERM (to every process through the
  launcher, or to one process alone); returns the output once every process has exited. A
  process left waiting in a collective or a barrier would hang here until the timeout fails the
  test."""
  output = []
  for line in launcher.stdout:
    output.append(line)
    if line.startswith('step ') and int(line.split()[1]) > after_step:
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
  """SIGTERM to one process, then the run resumed and preempted again with SIGTERM to all."""
  directory, saved = tmp_path / 'preempted', 1
  for signal_all in (False, True):
    launcher = launch(directory, 100_000)
    output = preempt(launcher, saved, signal_all)
    assert launcher.returncode == 0, output[-3000:]
    # One new save, of a step every process reached after the signal.
    steps = sorted(int(step) for step in os.listdir(directory / 'run' / 'checkpoints'))
    assert len(steps) == (2 if signal_all else 1) and steps[-1] > saved, steps
    assert re.search(rf'preempted: every process saves step {steps[-1]}\b', output)
    saved = steps[-1]

  # Twice stopped and resumed, the run equals one that was never stopped.
  main.main(['train', f'--gin_file={experiment(tmp_path / "straight", saved)}',
             f'--gin.Partitioner.num_devices={PROCESSES * DEVICES_PER_PROCESS}'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               checkpoints.load_params(str(directory / 'run')),
               checkpoints.load_params(str(tmp_path / 'straight' / 'run')))
