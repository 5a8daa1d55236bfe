"""A Kubernetes JobSet manifest that trains on a TPU or GPU node pool, one pod per host.

  python launch/k8s_jobset.py --accelerator=tpu --tpu_type=tpu-v5-lite-podslice \
      --tpu_topology=4x4 --hosts=4 --image=REGISTRY/zipper_jax:latest \
      -- --gin_file=gin/models/zipper_s.gin ... > jobset.yaml && kubectl apply -f jobset.yaml

On TPU node pools JAX reads the slice's topology from the environment GKE sets (`--distributed`).
On GPU node pools the pods find process 0 through the JobSet's headless service and take their
index from `JOB_COMPLETION_INDEX`.
"""
from __future__ import annotations

import argparse
import sys

import yaml

COORDINATOR_PORT = 1234


def manifest(args, train_args: list[str]) -> dict:
  zipper = ['.venv/bin/zipper', 'train', *train_args]
  if args.accelerator == 'tpu':
    command = zipper + ['--distributed']
    resources = {'google.com/tpu': args.chips_per_host}
    node_selector = {'cloud.google.com/gke-tpu-accelerator': args.tpu_type,
                     'cloud.google.com/gke-tpu-topology': args.tpu_topology}
  else:
    coordinator = f'{args.name}-workers-0-0.{args.name}:{COORDINATOR_PORT}'
    command = zipper + [f'--coordinator_address={coordinator}',
                        f'--num_processes={args.hosts}', '--process_id=$(JOB_COMPLETION_INDEX)']
    resources = {'nvidia.com/gpu': args.chips_per_host}
    node_selector = {'cloud.google.com/gke-accelerator': args.gpu_type}
  container = {
      'name': 'zipper', 'image': args.image, 'workingDir': '/app',
      'command': ['bash', '-c', ' '.join(command)],
      'ports': [{'containerPort': COORDINATOR_PORT}],
      'resources': {'limits': resources},
      'env': [{'name': 'JOB_COMPLETION_INDEX', 'valueFrom': {'fieldRef': {
          'fieldPath': "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}],
  }
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2', 'kind': 'JobSet',
      'metadata': {'name': args.name},
      'spec': {
          'network': {'enableDNSHostnames': True},
          # A preempted pod gets SIGTERM: the trainer checkpoints, and the restarted JobSet
          # resumes from that checkpoint.
          'failurePolicy': {'maxRestarts': args.max_restarts},
          'replicatedJobs': [{'name': 'workers', 'replicas': 1, 'template': {'spec': {
              'parallelism': args.hosts, 'completions': args.hosts, 'backoffLimit': 0,
              'completionMode': 'Indexed',
              'template': {'spec': {'restartPolicy': 'Never', 'nodeSelector': node_selector,
                                    'containers': [container]}}}}}],
      },
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--name', default='zipper-train')
  parser.add_argument('--accelerator', choices=('tpu', 'gpu'), required=True)
  parser.add_argument('--hosts', type=int, required=True)
  parser.add_argument('--chips_per_host', type=int, default=4)
  parser.add_argument('--image', required=True)
  parser.add_argument('--tpu_type', default='tpu-v5-lite-podslice')
  parser.add_argument('--tpu_topology', default='4x4')
  parser.add_argument('--gpu_type', default='nvidia-h100-80gb')
  parser.add_argument('--max_restarts', type=int, default=3)
  parser.add_argument('train_args', nargs=argparse.REMAINDER,
                      help='after --: arguments of `zipper train`')
  args = parser.parse_args(argv)
  train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
  yaml.safe_dump(manifest(args, train_args), sys.stdout, sort_keys=False)
  return 0


if __name__ == '__main__':
  sys.exit(main())
