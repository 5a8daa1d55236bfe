"""Train on a Cloud TPU VM pod slice: create it, copy the project to every worker, install,
run the same command on all workers at once (JAX finds the slice's topology itself), delete.

What is copied is what git tracks, as it is in the working tree (`git stash create`, else HEAD),
in one `git archive` tarball: never `.venv/`, runs or caches. Every worker unpacks and installs it.

  python launch/tpu_vm.py --name=zipper --zone=us-central2-b --accelerator_type=v4-32 \
      all -- --gin_file=gin/models/zipper_s.gin --gin_file=gin/runs/zipper_frozen_text.gin ...

Steps: `create`, `setup`, `train`, `delete`, or `all` (create, setup, train, delete). With
`--dry_run` every gcloud command is printed and none is run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

REMOTE_DIR = 'zipper_jax'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_tree() -> str:
  """The commit to ship: the working tree's tracked files (a stash commit, the tree untouched)
  when they differ from HEAD, else HEAD."""
  stash = subprocess.run(['git', 'stash', 'create'], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
  return stash or 'HEAD'


def commands(args, train_args: list[str], tree: str) -> dict[str, list[list[str]]]:
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
  archive = os.path.join(tempfile.gettempdir(), f'{REMOTE_DIR}-{args.name}.tar.gz')
  ssh = lambda command: [*tpu, 'ssh', args.name, *where, '--worker=all', f'--command={command}']
  train = ' '.join(['cd', REMOTE_DIR, '&&', '.venv/bin/zipper', 'train', '--distributed',
                    *map(shlex.quote, train_args)])
  return {
      'create': [[*tpu, 'create', args.name, *where, f'--accelerator-type={args.accelerator_type}',
                  f'--version={args.runtime_version}', *(['--spot'] if args.spot else [])]],
      'setup': [['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={archive}', tree],
                [*tpu, 'scp', archive, f'{args.name}:{REMOTE_DIR}.tar.gz', *where, '--worker=all'],
                ssh(f'rm -rf {REMOTE_DIR} && mkdir {REMOTE_DIR} && '
                    f'tar -xzf {REMOTE_DIR}.tar.gz -C {REMOTE_DIR} && cd {REMOTE_DIR} && '
                    'make install PYTHON=python3 COMPILE_ONLY=0 && '
                    '.venv/bin/pip install --quiet "jax[tpu]==0.10.2"')],
      'train': [ssh(train)],
      'delete': [[*tpu, 'delete', args.name, *where, '--quiet']],
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--name', required=True)
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project')
  parser.add_argument('--accelerator_type', default='v4-32')
  parser.add_argument('--runtime_version', default='tpu-ubuntu2204-base')
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--dry_run', action='store_true', help='print the commands, run none')
  parser.add_argument('step', choices=('create', 'setup', 'train', 'delete', 'all'))
  parser.add_argument('train_args', nargs=argparse.REMAINDER,
                      help='after --: arguments of `zipper train`')
  args = parser.parse_args(argv)
  train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
  plan = commands(args, train_args, tracked_tree())
  steps = ('create', 'setup', 'train', 'delete') if args.step == 'all' else (args.step,)
  run = lambda command: print(shlex.join(command), flush=True) or args.dry_run or \
      subprocess.run(command).returncode == 0
  for step in steps:
    if not all(run(command) for command in plan[step]):
      if args.step == 'all' and step != 'delete':  # never leave a failed slice running
        all(run(command) for command in plan['delete'])
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
