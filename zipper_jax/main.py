"""The `zipper` command. `train`, `eval` and `layout` are configured by gin:

  zipper train --gin_file=gin/experiments/tiny_zipper_frozen_text.gin \\
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000

Gin files are looked up relative to the working directory and to the repository root, so
`include 'gin/models/tiny.gin'` works from anywhere. Every binding is checked when the files are
parsed: a misspelt name stops the command before any compute. The other commands (data,
import/export, inference) take plain flags; see `zipper COMMAND --help`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Callable, Mapping, Sequence

import gin
import jax

from zipper_jax import batch, checkpoints, corpus, import_export, inference, models, partitioning
from zipper_jax import report
from zipper_jax import train as train_lib
from zipper_jax import configurables  # noqa: F401 -- registers what gin can configure

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Commands with plain flags: each module has `add_parser(subparsers)`, which sets `run(args)`.
PLAIN_COMMANDS = (corpus, import_export, inference, report)


@gin.configurable
def evaluate_checkpoint(model: models.Model = gin.REQUIRED, *, model_dir: str = gin.REQUIRED,
                        tasks: Sequence[str] = gin.REQUIRED,
                        task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                        batch_size: int = gin.REQUIRED, split: str = 'validation',
                        max_batches: int | None = None,
                        hooks: Sequence[Callable] = ()) -> dict:
  """Validation loss and per-tower accuracy of the newest checkpoint in `model_dir`, per task,
  written to `model_dir/eval/<task>.json`; then what each of `hooks` measures (the trainer's
  eval hooks: hook(step, model, params) -> {name: value}), under 'hooks'."""
  step, params = checkpoints.load_step_and_params(model_dir)
  results = {}
  for task in tasks:
    results[task] = train_lib.evaluate(model, params, task, task_feature_lengths, batch_size,
                                       split=split, max_batches=max_batches)
    os.makedirs(os.path.join(model_dir, 'eval'), exist_ok=True)
    with open(os.path.join(model_dir, 'eval', f'{task}.json'), 'w') as f:
      json.dump(results[task], f, indent=2)
  if hooks:
    results['hooks'] = train_lib.run_hooks(hooks, step, model, params)
  return results


@gin.configurable
def print_layout(model: models.Model = gin.REQUIRED, *,
                 task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                 batch_size: int = gin.REQUIRED,
                 partitioner: partitioning.Partitioner = partitioning.Partitioner(),
                 num_devices: int | None = None) -> str:
  """Every parameter's shape, logical axes, mesh sharding and bytes per device over
  `num_devices` (default: those present): a layout to check before paying for a pod. Shapes
  only; nothing is allocated."""
  example = batch.dummy_batch(model.towers, task_feature_lengths, batch_size)
  boxed = jax.eval_shape(model.init, jax.random.key(0), example)
  table = partitioning.describe_layout(boxed, partitioner, num_devices)
  print(table)
  return table


def initialize_distributed(args) -> None:
  """Joins the processes of a multi-host run (TPU pod slice, SLURM, Kubernetes, local launcher).

  With `--coordinator_address` the topology is explicit; with `--distributed` alone JAX detects
  it from the environment the cluster sets.
  """
  if args.coordinator_address:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  elif args.distributed:
    jax.distributed.initialize()


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], finalize: bool = True) -> None:
  """Parses (and checks) the config, replacing any before it; `finalize` also requires every
  `%gin.REQUIRED` macro."""
  gin.clear_config(clear_constants=True)
  for path in (os.getcwd(), REPO_ROOT):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=finalize)


def split_gin_bindings(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`--gin.NAME=VALUE` arguments become gin bindings `NAME=VALUE`; the rest stay."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise SystemExit(f'{arg}: expected --gin.NAME=VALUE')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return rest, bindings


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='zipper', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  for name, help_text in (
      ('train', 'Train the model a gin run file describes (train.*), resuming from MODEL_DIR.'),
      ('eval', 'Evaluate the newest checkpoint in MODEL_DIR (evaluate_checkpoint.*).'),
      ('layout', 'Print every parameter\'s shape, logical axes, mesh sharding and bytes per '
                 'device for a gin config (print_layout.*), without allocating it.')):
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument('--gin_file', action='append', default=[], required=True,
                         help='gin file to parse; repeat to combine (model, run, experiment)')
    command.add_argument('--print_config', action='store_true',
                         help='print the operative gin config when done')
    command.add_argument('--distributed', action='store_true',
                         help='multi-host: join the other processes, topology auto-detected '
                              '(TPU pod slice, SLURM, Kubernetes)')
    command.add_argument('--coordinator_address', help='multi-host: HOST:PORT of process 0')
    command.add_argument('--num_processes', type=int, help='multi-host: number of processes')
    command.add_argument('--process_id', type=int, help='multi-host: this process\'s index')
    command.set_defaults(run=run_gin_command)
  for module in PLAIN_COMMANDS:
    module.add_parser(commands)
  parser.epilog = 'Gin bindings: --gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=100'
  return parser


def require_model_of_run(args, bindings: Sequence[str]) -> None:
  """`zipper eval` builds its model from the gin files it is given. One that differs from the
  model MODEL_DIR was trained with can still load the checkpoint (say, without the cross-attention
  clock) and would be scored silently wrong: refuse it."""
  model_dir = gin.query_parameter('%MODEL_DIR')
  given = gin.query_parameter('%MODEL').scoped_configurable_fn()
  trained, _ = inference.run_model(model_dir)  # replaces the gin config...
  parse_gin(args.gin_file, bindings)  # ...so ours is parsed again
  if type(given) is not type(trained) or set(given.towers) != set(trained.towers):
    found = (f'{type(given).__name__} of towers {given.towers} here, '
             f'{type(trained).__name__} of towers {trained.towers} in the run')
  else:
    found = '; '.join(differences(given.module, trained.module, type(given.module).__name__))
  if found:
    raise SystemExit(f'the model of {args.gin_file} is not the one {model_dir} was trained with '
                     f'(its config.gin): {found}. Give the model gin files of that run.')


def differences(given, trained, path: str) -> list[str]:
  """Where two configurations differ: 'path is <given> here, <trained> in the run' each."""
  if type(given) is type(trained) and dataclasses.is_dataclass(given):
    fields = [f.name for f in dataclasses.fields(given) if f.name not in ('parent', 'name')]
    return [d for f in fields
            for d in differences(getattr(given, f), getattr(trained, f), f'{path}.{f}')]
  if isinstance(given, Mapping) and isinstance(trained, Mapping) and given.keys() == trained.keys():
    return [d for k in given for d in differences(given[k], trained[k], f'{path}[{k!r}]')]
  return [] if given == trained else [f'{path} is {given!r} here, {trained!r} in the run']


def run_gin_command(args, bindings: Sequence[str]) -> int:
  # A layout needs shapes only, not the run's directory, data or length.
  parse_gin(args.gin_file, bindings, finalize=args.command != 'layout')
  initialize_distributed(args)
  if args.command == 'train':
    train_lib.train()
  elif args.command == 'layout':
    print_layout()
  else:
    require_model_of_run(args, bindings)
    results = evaluate_checkpoint()
    print(json.dumps(results, indent=2))
  if args.print_config:
    print(gin.operative_config_str())
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  argv, bindings = split_gin_bindings(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  if args.run is not run_gin_command and bindings:
    raise SystemExit(f'zipper {args.command} takes no --gin. bindings: {bindings}')
  return args.run(args, bindings) if args.run is run_gin_command else args.run(args)


if __name__ == '__main__':
  sys.exit(main())
