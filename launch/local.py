"""Runs one command as K processes on this machine, joined by JAX's distributed runtime.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      -m zipper_jax.main train --gin_file=...

Each process gets `--coordinator_address/--num_processes/--process_id` appended and sees
`devices_per_process` CPU devices; collectives between them go over localhost. This is how the
tests exercise multi-host code paths without a cluster. SIGTERM is passed on to every process;
the exit status is the first non-zero one, else 0.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(command: list[str], num_processes: int, devices_per_process: int) -> int:
  address = f'127.0.0.1:{free_port()}'
  # The caller's other XLA flags (dumps, optimisation level) carry over; the device count is ours.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=' '.join(
      flags + [f'--xla_force_host_platform_device_count={devices_per_process}']))
  processes = [subprocess.Popen(
      [sys.executable, *command, f'--coordinator_address={address}',
       f'--num_processes={num_processes}', f'--process_id={i}'], env=env)
      for i in range(num_processes)]
  signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in processes])
  codes = [p.wait() for p in processes]
  return next((c for c in codes if c), 0)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=4)
  parser.add_argument('command', nargs=argparse.REMAINDER,
                      help='python arguments, after --, e.g. -m zipper_jax.main train ...')
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  return launch(command, args.num_processes, args.devices_per_process)


if __name__ == '__main__':
  sys.exit(main())
