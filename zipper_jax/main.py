"""The `zipper` command. `train`, `eval`, `layout` and `compile` are configured by gin:

  zipper train --gin_file=gin/experiments/tiny_zipper_frozen_text.gin \\
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000
  zipper eval --model_dir=/tmp/run --gin_file=gin/runs/eval.gin --gin.EVAL_TASKS="['asr']"
  zipper compile --topology=v5p:4x4x8 --gin_file=gin/experiments/zipper_8b_speech_1b.gin

Gin files are looked up relative to the working directory and to the repository root, so
`include 'gin/models/tiny.gin'` works from anywhere. Every binding is checked when the files are
parsed: a misspelt name stops the command before any compute.

A user's error (a misspelt binding, a missing file, an unknown task, bad audio, a run of another
model) is printed as one line, `zipper: error: ...`, with exit status 2; `--verbose` (or
ZIPPER_DEBUG=1) shows its traceback and TensorFlow's start-up messages too.

The other commands take plain flags (`zipper COMMAND --help`): `predict` and `score` here, and
those that products built on the framework add (the speech corpus, transcribe and speak, report;
import and export). A product adds commands through the `zipper.commands` entry point group
(setup.py): each entry is a function `add_parser(subparsers)` that sets `run(args)` (or
`run(args, bindings)` with `takes_bindings=True`, for one that takes `--gin.` bindings).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import sys
from typing import Callable, Mapping, Sequence

VERBOSE_FLAG = '--verbose'


@contextlib.contextmanager
def silenced_stderr(silence: bool):
  """While TensorFlow is imported it writes notices (oneDNN, CPU features, absl's pre-init
  warning) straight to file descriptor 2; they are not for a user's terminal."""
  if not silence:
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


from zipper_jax import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # before JAX or TensorFlow starts a thread

with silenced_stderr(VERBOSE_FLAG not in sys.argv and os.environ.get('ZIPPER_DEBUG') != '1'):
  import tensorflow  # noqa: F401 -- first imported here, where its notices are silenced

import gin  # noqa: E402
import jax  # noqa: E402

from zipper_jax import ahead_of_time, batch, infer, models, partitioning  # noqa: E402
from zipper_jax import train as train_lib  # noqa: E402
from zipper_jax import configurables  # noqa: E402,F401 -- registers what gin can configure
from zipper_jax.errors import UserError  # noqa: E402
from zipper_jax import run_dir  # noqa: E402
from zipper_jax.run_dir import RunDir  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS_GROUP = 'zipper.commands'  # entry points: add_parser(subparsers) of other commands


@gin.configurable
def evaluate_checkpoint(model: models.Model | None = None, *, model_dir: str = gin.REQUIRED,
                        tasks: Sequence[str] = gin.REQUIRED,
                        task_feature_lengths: Mapping[str, int] | None = None,
                        batch_size: int = gin.REQUIRED, split: str = 'validation',
                        max_batches: int | None = None,
                        hooks: Sequence[Callable] = ()) -> dict:
  """Validation loss and per-tower accuracy of the newest checkpoint in `model_dir`, per task,
  written to `model_dir/eval/<task>.json`; then what each of `hooks` measures (the trainer's
  eval hooks: hook(step, model, params) -> {name: value}), under 'hooks'.

  The model and the lengths are the run's own (its config.gin). A `model` given too (model gin
  files) must be that model: one wired otherwise (say, without the cross-attention clock) can
  still load the checkpoint and would be scored silently wrong.
  """
  run = RunDir(model_dir)
  if model is not None:
    run.check_continues(model)
  model = run.model
  lengths = task_feature_lengths or run.task_feature_lengths
  step, params = run.load_step_and_params()
  results = {}
  for task in tasks:
    results[task] = train_lib.evaluate(model, params, task, lengths, batch_size, split=split,
                                       max_batches=max_batches, partitioner=run.partitioner)
    run.write_eval(task, results[task])
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
  logging.disable(logging.ERROR)  # gin logs each search path that lacks a file: not errors
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=finalize)
  except (ValueError, OSError, SyntaxError) as e:  # gin's word for a typo or a missing file
    raise UserError(f'gin: {e}') from e
  finally:
    logging.disable(logging.NOTSET)


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
    if name != 'layout':
      command.add_argument('--model_dir', help="the run's directory (sets MODEL_DIR)")
    command.add_argument('--print_config', action='store_true',
                         help='print the operative gin config when done')
    command.add_argument('--distributed', action='store_true',
                         help='multi-host: join the other processes, topology auto-detected '
                              '(TPU pod slice, SLURM, Kubernetes)')
    command.add_argument('--coordinator_address', help='multi-host: HOST:PORT of process 0')
    command.add_argument('--num_processes', type=int, help='multi-host: number of processes')
    command.add_argument('--process_id', type=int, help='multi-host: this process\'s index')
    command.set_defaults(run=run_gin_command, takes_bindings=True)
  infer.add_parser(commands)
  ahead_of_time.add_parser(commands)
  for entry_point in sorted(importlib.metadata.entry_points(group=COMMANDS_GROUP),
                            key=lambda e: e.name):
    entry_point.load()(commands)
  parser.epilog = 'Gin bindings: --gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=100'
  return parser


def configured_model() -> models.Model | None:
  """The model the parsed gin files describe (%MODEL), None if they describe none."""
  try:
    return gin.query_parameter('%MODEL').scoped_configurable_fn()
  except ValueError:
    return None


def parse_command_gin(args, bindings: Sequence[str]) -> None:
  """Parses the gin config a `train`, `eval` or `layout` command runs with."""
  if getattr(args, 'model_dir', None):
    bindings = [*bindings, f'MODEL_DIR = {args.model_dir!r}']
  # A layout needs shapes only, not the run's directory, data or length.
  parse_gin(args.gin_file, bindings, finalize=args.command != 'layout')


def command_config(argv: Sequence[str]) -> str:
  """The gin config `zipper ARGV` (train, eval or layout) would run with, as a trained run's
  config.gin records it; the caller's own gin config is left as it was."""
  rest, bindings = split_gin_bindings(argv)
  with run_dir.isolated_gin_config():
    parse_command_gin(build_parser().parse_args(rest), bindings)
    return gin.config_str()


def run_gin_command(args, bindings: Sequence[str]) -> int:
  parse_command_gin(args, bindings)
  initialize_distributed(args)
  if args.command == 'train':
    train_lib.train()
  elif args.command == 'layout':
    print_layout()
  else:
    print(json.dumps(evaluate_checkpoint(model=configured_model()), indent=2))
  if args.print_config:
    print(gin.operative_config_str())
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = VERBOSE_FLAG in argv or os.environ.get('ZIPPER_DEBUG') == '1'
  argv = [arg for arg in argv if arg != VERBOSE_FLAG]
  # Imported libraries configure the root logger first (at WARNING): ours replaces theirs.
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      force=True)
  logging.getLogger('absl').setLevel(logging.INFO if verbose else logging.ERROR)
  logging.getLogger('jax').setLevel(logging.INFO if verbose else logging.WARNING)
  rest, bindings = split_gin_bindings(argv)
  args = build_parser().parse_args(rest)
  args.argv = argv  # as given, for a command that runs itself in another process
  takes_bindings = getattr(args, 'takes_bindings', False)
  if not takes_bindings and bindings:
    raise SystemExit(f'zipper {args.command} takes no --gin. bindings: {bindings}')
  try:
    return args.run(args, bindings) if takes_bindings else args.run(args)
  except (UserError, FileNotFoundError) as error:  # a missing file is named, and the user's
    if verbose:
      raise
    print(f'zipper: error: {one_line(error)}', file=sys.stderr)
    return 2


def one_line(error: Exception) -> str:
  """The error's message on one line, without gin's note of the function it was raised in."""
  lines = [line.strip() for line in str(error).splitlines()]
  return ' '.join(line for line in lines if line and not line.startswith('In call to '))


if __name__ == '__main__':
  sys.exit(main())
