"""Which realistic Zippers fit which TPU slices and GPU nodes: `zipper compile` for each
experiment x topology, as a Markdown table (docs/pod.md) and JSON.

  python benchmarks/fit_table.py                         # the pod experiments, every topology
  python benchmarks/fit_table.py --experiments gin/experiments/tiny_zipper_frozen_text.gin \\
      --topologies v5e:2x2,h100:1x2 --markdown /tmp/fit.md --json /tmp/fit.json

Each compile runs in a process of its own (one at a time: a pod-size compile takes minutes and
gigabytes). Nothing is measured on hardware: bytes are XLA's accounting of the compiled program,
step times are the exact FLOPs at the chip's published peak (compute-bound, a lower bound).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import subprocess
import sys

from zipper_jax import topologies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ('gin/experiments/pod_smollm2_zipper_s.gin', 'gin/experiments/pod_zipper_1b.gin',
               'gin/experiments/pod_zipper_8b.gin')
TOPOLOGIES = ('v5e:4x4', 'v5e:16x16', 'v5p:4x4x8', 'v6e:4x4', 'h100:1x8', 'h100:4x8')
# The stretch: a 70B text tower, on the 256-chip slices only; where float32 falls short, with its
# frozen weights in bfloat16, then Adam's first moment too. An experiment is a gin file, then any
# `+binding`.
BF16_TEXT = "+text/TowerConfig.param_dtype='bfloat16'"
STRETCH = {'gin/experiments/pod_zipper_70b.gin': ('v5e:16x16', 'v5p:4x8x8'),
           'gin/experiments/pod_zipper_70b.gin' + BF16_TEXT: ('v5e:16x16',),
           'gin/experiments/pod_zipper_70b.gin' + BF16_TEXT + "+adamw.mu_dtype='bfloat16'":
               ('v5e:16x16',)}


def compile_one(experiment: str, topology: str) -> dict:
  """`zipper compile`'s JSON line, or {'error': its last line} when it could not compile."""
  gin_file, *bindings = experiment.split('+')
  done = subprocess.run([sys.executable, '-c', 'import sys; from zipper_jax import main; '
                         'sys.exit(main.main(sys.argv[1:]))', 'compile', f'--topology={topology}',
                         f'--gin_file={gin_file}', *(f'--gin.{b}' for b in bindings)],
                        cwd=REPO, capture_output=True, text=True,
                        env=topologies.compile_only_environment())
  lines = done.stdout.strip().splitlines()
  if lines and lines[-1].startswith('{'):
    return json.loads(lines[-1])
  errors = [line for line in done.stderr.splitlines() if line.strip()]
  return {'topology': topology, 'error': errors[-1] if errors else f'exit {done.returncode}'}


def gib(n: int) -> str:
  return f'{n / 2**30:.1f}'


def markdown(results: dict[str, list[dict]]) -> str:
  lines = ['| experiment | topology | mesh | batch | fits | GiB per device (params + opt + '
           'temp = total / HBM) | compile s | step at peak s |',
           '|---|---|---|---|---|---|---|---|']
  for experiment, rows in results.items():
    gin_file, *bindings = experiment.split('+')
    name = ' + '.join([os.path.splitext(os.path.basename(gin_file))[0], *bindings])
    for r in rows:
      if 'error' in r:
        lines.append(f'| {name} | {r["topology"]} | | | error | {r["error"]} | | |')
        continue
      b = r['bytes_per_device']
      mesh = ' x '.join(f'{k} {v}' for k, v in r['mesh'].items() if v > 1) or 'one device'
      fits = 'yes' if r['fits'] else f'no ({r["shortfall_bytes"] / 2**30:.2f} GiB short)'
      # Where XLA refused the program, it names only the shortfall of its temporaries.
      temp = gib(b['temp']) if b['temp'] else 'refused'
      lines.append(f'| {name} | {r["topology"]} | {mesh} | {r["batch"]} | {fits} | '
                   f'{gib(b["params"])} + {gib(b["opt_state"])} + {temp} = '
                   f'{gib(b["total"])} / {gib(r["hbm_bytes"])} | {r["compile_seconds"]:.0f} | '
                   f'{r["step_seconds_at_peak"]:.3g} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--experiments', help=f'default: {", ".join(EXPERIMENTS)}, then {STRETCH}')
  parser.add_argument('--topologies', default=','.join(TOPOLOGIES))
  parser.add_argument('--markdown', default=os.path.join(REPO, 'docs', 'fit_table.md'))
  parser.add_argument('--json', default=os.path.join(REPO, 'docs', 'fit_table.json'))
  parser.add_argument('--jobs', type=int, default=1, help='compiles at once (each takes GBs)')
  parser.add_argument('--reuse', help='rows printed by an earlier run (its stdout), not redone')
  args = parser.parse_args(argv)
  experiments = args.experiments.split(',') if args.experiments else EXPERIMENTS
  plan = {experiment: args.topologies.split(',') for experiment in experiments}
  if not args.experiments:
    plan |= STRETCH
  done = {}
  if args.reuse:
    with open(args.reuse) as f:
      rows = [json.loads(line) for line in f if line.startswith('{')]
    done = {(row.pop('experiment'), row['topology']): row for row in rows if 'error' not in row}

  def row(job):
    experiment, topology = job
    result = done.get(job) or compile_one(experiment, topology)
    print(json.dumps({'experiment': experiment, **result}), flush=True)
    return result

  jobs = [(experiment, topology) for experiment, topologies in plan.items()
          for topology in topologies]
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    rows = dict(zip(jobs, pool.map(row, jobs)))
  results = {experiment: [rows[experiment, topology] for topology in topologies]
             for experiment, topologies in plan.items()}
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  header = (f'Produced by `python benchmarks/fit_table.py` at commit {commit} on '
            f'{datetime.date.today()} (XLA ahead of time: libtpu 0.0.42.1, jax-cuda12-plugin '
            '0.10.2, cuDNN 9.28; nothing ran on the hardware; attention as the runs give it: '
            '`auto`, the splash kernel on TPUs and cuDNN\'s on H100s for self-attention, chunked '
            'for cross-attention). Memory is XLA\'s per-device accounting of the '
            'compiled step; on GPUs, JAX takes 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION '
            'says more. Step times are the exact FLOPs at the chip\'s published bf16 peak.\n\n')
  with open(args.markdown, 'w') as f:
    f.write(header + markdown(results))
  with open(args.json, 'w') as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
