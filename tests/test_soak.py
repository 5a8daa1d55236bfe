"""Soak (`make soak`; left out of `make test` for its minutes): three local processes killed
with SIGKILL at seeded random points, the whole job restarted each time as a scheduler would,
then preempted with SIGTERM; the run ends with parameters bit-identical to one never stopped.
Then the newest checkpoint is damaged: the three processes agree to restore the one before."""
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from synthetic_tasks import experiment_gin
from zipper_jax import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 14


def launch(directory, steps=STEPS):
  experiment = experiment_gin(directory, steps, 12, 'learning_rate_schedule.total_steps = 10',
                              'learning_rate_schedule.warmup_steps = 2', 'train.log_every = 1',
                              "train.host_sharding = 'global_batch'", 'train.checkpoint_every = 2')
  return subprocess.Popen(
      [sys.executable, '-u', 'launch/local.py', '--num_processes=3', '--devices_per_process=1',
       '--', '-u', '-m', 'zipper_jax.main', 'train', f'--gin_file={experiment}'],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=os.path.join(REPO, 'tests')),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_until(launcher, step: int) -> str:
  """Reads the job's output until process 0 reports `step` or a later one."""
  output = []
  for line in launcher.stdout:
    output.append(line)
    if line.startswith('step ') and int(line.split()[1]) >= step:
      return ''.join(output)
  pytest.fail('the job ended before step %d:\n%s' % (step, ''.join(output[-40:])))


@pytest.mark.soak
def test_killed_and_restarted_processes_end_where_an_uninterrupted_run_ends(tmp_path):
  rng = np.random.default_rng(0)
  reached = 0
  for _ in range(3):  # SIGKILL one process at a random step, then the job is torn down
    launcher = launch(tmp_path / 'soaked')
    reached = int(rng.integers(reached + 1, reached + 4))
    run_until(launcher, reached)
    children = subprocess.check_output(['pgrep', '-P', str(launcher.pid)], text=True).split()
    os.kill(int(rng.choice(children)), signal.SIGKILL)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=60)
  launcher = launch(tmp_path / 'soaked')  # then a preemption: every process saves and exits 0
  run_until(launcher, reached + 1)
  launcher.send_signal(signal.SIGTERM)
  output, _ = launcher.communicate(timeout=120)
  assert launcher.returncode == 0, output[-3000:]
  launcher = launch(tmp_path / 'soaked')  # and to the end
  output, _ = launcher.communicate(timeout=600)
  assert launcher.returncode == 0, output[-3000:]

  straight = launch(tmp_path / 'straight')
  output, _ = straight.communicate(timeout=600)
  assert straight.returncode == 0, output[-3000:]
  assert checkpoints.latest_step(str(tmp_path / 'soaked' / 'run')) == STEPS
  jax.tree.map(np.testing.assert_array_equal,
               checkpoints.load_params(str(tmp_path / 'soaked' / 'run')),
               checkpoints.load_params(str(tmp_path / 'straight' / 'run')))

  # The newest step damaged: all three processes restore the step before it, together.
  for manifest in (tmp_path / 'straight' / 'run' / 'checkpoints' / str(STEPS)).rglob(
      'manifest.ocdbt'):
    manifest.write_bytes(b'garbage')
  resumed = launch(tmp_path / 'straight', STEPS + 2)
  output, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, output[-3000:]
  assert f'checkpoint step {STEPS} ' in output and 'damaged' in output
  first = next(line for line in output.splitlines() if line.startswith('step '))
  assert int(first.split()[1]) == STEPS - 1  # every process went on from step STEPS - 2
  assert checkpoints.latest_step(str(tmp_path / 'straight' / 'run')) == STEPS + 2
