"""The cluster launchers produce the commands and manifests a cluster needs."""
import io
import os
import subprocess
import tarfile
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ARGS = ['--gin_file=gin/models/zipper_s.gin', "--gin.MODEL_DIR='gs://bucket/run'"]


def launcher(script, *args):
  return subprocess.run([sys.executable, f'launch/{script}', *args], cwd=REPO, check=True,
                        capture_output=True, text=True).stdout


def test_tpu_dry_run_prints_every_step_on_every_worker():
  out = launcher('tpu_vm.py', '--name=z', '--zone=us-central2-b', '--accelerator_type=v4-32',
                 '--dry_run', 'all', '--', *TRAIN_ARGS).splitlines()
  assert out[0].startswith('gcloud compute tpus tpu-vm create z --zone=us-central2-b')
  assert '--accelerator-type=v4-32' in out[0]
  # What git tracks, as one tarball: not .venv/ (gigabytes), runs or caches.
  archive = out[1].split()
  assert archive[:2] == ['git', '-C'] and archive[3:5] == ['archive', '--format=tar.gz']
  tarball = archive[5].removeprefix('--output=')
  listed = tarfile.open(fileobj=io.BytesIO(subprocess.run(
      ['git', 'archive', archive[6]], cwd=REPO, check=True, capture_output=True).stdout)).getnames()
  assert 'zipper_jax/train.py' in listed and not any(n.startswith('.venv') for n in listed)
  assert out[2].startswith(f'gcloud compute tpus tpu-vm scp {tarball} z:zipper_jax.tar.gz')
  assert 'tar -xzf zipper_jax.tar.gz -C zipper_jax' in out[3] and 'make install' in out[3]
  train = out[4]
  assert '--worker=all' in train and '.venv/bin/zipper train --distributed' in train
  assert "MODEL_DIR=" in train and 'gs://bucket/run' in train
  assert out[5] == 'gcloud compute tpus tpu-vm delete z --zone=us-central2-b --quiet'


def test_jobset_manifests_for_tpu_and_gpu_pools():
  tpu = yaml.safe_load(launcher('k8s_jobset.py', '--accelerator=tpu', '--hosts=4',
                                '--image=img', '--', *TRAIN_ARGS))
  job = tpu['spec']['replicatedJobs'][0]['template']['spec']
  assert job['parallelism'] == job['completions'] == 4 and job['completionMode'] == 'Indexed'
  container = job['template']['spec']['containers'][0]
  assert container['resources']['limits'] == {'google.com/tpu': 4}
  assert '--distributed' in container['command'][-1]
  gpu = yaml.safe_load(launcher('k8s_jobset.py', '--accelerator=gpu', '--hosts=2',
                                '--chips_per_host=8', '--image=img', '--', *TRAIN_ARGS))
  container = gpu['spec']['replicatedJobs'][0]['template']['spec']['template']['spec'][
      'containers'][0]
  assert container['resources']['limits'] == {'nvidia.com/gpu': 8}
  command = container['command'][-1]
  assert '--coordinator_address=zipper-train-workers-0-0.zipper-train:1234' in command
  assert '--num_processes=2' in command and '--process_id=$(JOB_COMPLETION_INDEX)' in command


def test_slurm_script_is_valid_bash_that_runs_one_task_per_node():
  script = os.path.join(REPO, 'launch', 'slurm.sbatch')
  subprocess.run(['bash', '-n', script], check=True)
  text = open(script).read()
  assert '#SBATCH --ntasks-per-node=1' in text
  assert 'srun --kill-on-bad-exit=1 .venv/bin/zipper train --distributed "$@"' in text
