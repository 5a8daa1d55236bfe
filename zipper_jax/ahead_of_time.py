"""`zipper compile`: prove that a run fits a TPU pod slice or GPU nodes before booking them.

  zipper compile --topology=v5p:4x4x8 --gin_file=gin/experiments/zipper_8b_speech_1b.gin \\
      [--gin.Partitioner.mesh_shape="(1, -1, 4)"] [--num_slices=2] [--save=step.bin]
  zipper compile --topology=h100:1x8 --gin_file=... --step=decode --decode_batch=64 \\
      --prompt_lengths="{'speech': 2048}" --max_new_tokens=512 --output=text

The run's gin config (its `train.*` bindings: model, lengths, batch, optimizer, frozen towers,
partitioner, microbatches) gives the step; the mesh is its `Partitioner` over the compile-only
devices of TOPOLOGY (`topologies.py`; with `--num_slices`, the slices are the DCN axis, data
parallel unless `Partitioner.dcn_mesh_shape` says otherwise). The step is lowered on abstract
parameters, optimizer state and batch (shapes with shardings: nothing is allocated) and compiled.
It prints a table and, last, one JSON line: per-device bytes of parameters, optimizer state,
batch, temporaries and in total against the chip's HBM; the step's exact FLOPs (`flops.py`:
XLA's own count takes a scan body once); its compute-bound time at the chip's peak; the compile
seconds. A program that does not fit exits 1 with one line naming the shortfall.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import subprocess
import sys
import time
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np

from zipper_jax import batch as batch_lib
from zipper_jax import decoding, partitioning, topologies
from zipper_jax import train as train_lib
from zipper_jax.errors import UserError
from zipper_jax.inputs import TowerInput

# What XLA says when a TPU program needs more HBM than a chip has (two wordings): the bytes
# needed, then the bytes available.
_HBM_EXHAUSTED = (
    re.compile(r'RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT])?\) exceeds available HBM '
               r'\(([\d.]+)([KMGT])?\)', re.S),
    re.compile(r'RESOURCE_EXHAUSTED.*?Used ([\d.]+)([KMGT])? of ([\d.]+)([KMGT])? hbm', re.S))
_UNITS = {None: 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


@dataclasses.dataclass
class Report:
  """What `zipper compile` prints last, as JSON (other tools read these names)."""
  topology: str
  devices: int
  mesh: dict[str, int]
  step: str
  batch: int
  fits: bool
  bytes_per_device: dict[str, int]  # params, opt_state, batch, temp, total
  hbm_bytes: int
  flops_per_step: int
  step_seconds_at_peak: float
  compile_seconds: float
  shortfall_bytes: int = 0

  def table(self) -> str:
    rows = [('topology', f'{self.topology} ({self.devices} devices)'),
            ('mesh', ', '.join(f'{k}={v}' for k, v in self.mesh.items())),
            ('step', f'{self.step}, batch {self.batch}')]
    rows += [(f'{name} per device', f'{n / 2**30:.3f} GiB')
             for name, n in self.bytes_per_device.items()]
    rows += [('HBM per device', f'{self.hbm_bytes / 2**30:.3f} GiB'),
             ('fits', 'yes' if self.fits else f'no: {self.shortfall_bytes / 2**30:.3f} GiB short'),
             ('FLOPs per step', f'{self.flops_per_step:.4g}'),
             ('step at peak', f'{self.step_seconds_at_peak:.4g} s'),
             ('compile', f'{self.compile_seconds:.1f} s')]
    width = max(len(name) for name, _ in rows)
    return '\n'.join(f'{name.ljust(width)}  {value}' for name, value in rows)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of shapes with shardings (the largest shard)."""
  return int(sum(np.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(tree)))


def run_config() -> dict[str, Any]:
  """The parsed gin config's `train` arguments, defaults included."""
  defaults = {name: p.default for name, p in inspect.signature(train_lib.train).parameters.items()
              if p.default is not inspect.Parameter.empty}
  config = defaults | gin.get_bindings(train_lib.train)
  missing = [name for name in ('model', 'task_feature_lengths', 'batch_size', 'optimizer',
                               'learning_rate') if config.get(name, gin.REQUIRED) is gin.REQUIRED]
  if missing:
    raise UserError(f'the gin config does not give train.{", train.".join(missing)}: give a '
                    'model, a run and an experiment gin file')
  return config


def target_partitioner(config: Mapping[str, Any], topology: str,
                       num_slices: int) -> partitioning.Partitioner:
  partitioner = config['partitioner']
  dcn = partitioner.dcn_mesh_shape
  if num_slices > 1 and dcn is None:
    dcn = (num_slices, 1, 1)  # data parallel across slices
  return dataclasses.replace(partitioner, devices=tuple(topologies.devices(topology, num_slices)),
                             dcn_mesh_shape=dcn, num_devices=None)


def compile_program(lower, save: str | None):
  """(compiled, seconds, shortfall bytes): XLA's refusal for want of HBM is a shortfall."""
  start = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:  # noqa: BLE001 -- only HBM exhaustion is an answer; the rest re-raised
    found = next(filter(None, (p.search(str(e)) for p in _HBM_EXHAUSTED)), None)
    if not found:
      raise
    needed = float(found.group(1)) * _UNITS[found.group(2)]
    available = float(found.group(3)) * _UNITS[found.group(4)]
    return None, time.perf_counter() - start, int(needed - available)
  seconds = time.perf_counter() - start
  if save:
    from jax.experimental import serialize_executable  # noqa: PLC0415
    with open(save, 'wb') as f:
      f.write(serialize_executable.serialize(compiled)[0])
  return compiled, seconds, 0


def report(topology: str, partitioner, step: str, batch: int, held: Mapping[str, int],
           lower, flops_per_step: int, save: str | None) -> Report:
  chip = topologies.chip(topology)
  compiled, seconds, shortfall = compile_program(lower, save)
  sizes = dict(held)
  if compiled is not None:
    memory = compiled.memory_analysis()
    sizes['temp'] = int(memory.temp_size_in_bytes)
    sizes['total'] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes -
                         memory.alias_size_in_bytes + memory.temp_size_in_bytes +
                         memory.generated_code_size_in_bytes)
    shortfall = max(0, sizes['total'] - chip.hbm_bytes)
  else:
    sizes['temp'] = 0
    sizes['total'] = chip.hbm_bytes + shortfall
  devices = partitioner.mesh.size
  return Report(topology, devices, dict(partitioner.mesh.shape), step, batch, shortfall == 0,
                sizes, chip.hbm_bytes, flops_per_step,
                flops_per_step / devices / chip.peak_flops, seconds, shortfall)


def compile_train(topology: str, num_slices: int = 1, save: str | None = None) -> Report:
  """The gin run's train step, compiled for `topology`."""
  config = run_config()
  model, lengths, batch_size = (config['model'], config['task_feature_lengths'],
                                config['batch_size'])
  partitioner = target_partitioner(config, topology, num_slices)
  example = batch_lib.dummy_batch(model.towers, lengths, batch_size)
  layout = train_lib.StepLayout.of(
      model, example, jax.random.key(0),
      config['optimizer'](learning_rate=config['learning_rate']), config['frozen_towers'],
      partitioner)
  state = layout.abstract_state()
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=layout.batch_sharding)
           for k, v in example.items()}
  held = {'params': per_device_bytes((state.params, state.frozen)),
          'opt_state': per_device_bytes(state.opt_state), 'batch': per_device_bytes(batch)}
  flops_per_step = batch_size * model.train_flops_per_example(lengths, config['frozen_towers'])

  def lower():
    with partitioner.context():
      return layout.jit_train_step(model, config['num_microbatches']).lower(state, batch)

  return report(topology, partitioner, 'train', batch_size, held, lower, flops_per_step, save)


def compile_decode(topology: str, output: str, decode_batch: int,
                   prompt_lengths: Mapping[str, int], max_new_tokens: int,
                   num_slices: int = 1, save: str | None = None) -> Report:
  """Cached decoding of tower `output` (prefill of `prompt_lengths`, then `max_new_tokens`
  tokens), as `predict`, `transcribe` and `speak` run it, compiled for `topology`."""
  config = run_config()
  model = config['model']
  partitioner = target_partitioner(config, topology, num_slices)
  params = partitioner.abstract(model.param_shapes())
  lengths = {t: prompt_lengths.get(t, 1) for t in model.towers}
  prompt = {t: TowerInput(*(jax.ShapeDtypeStruct((decode_batch, n), jnp.int32,
                                                 sharding=partitioner.batch_sharding)
                            for _ in range(4))) for t, n in lengths.items()}
  # Matmul FLOPs of the prompt and the generated tokens in one pass: what cached decoding
  # computes, up to attention over the cache's padding.
  flops_per_step = decode_batch * model.forward_flops_per_example(
      dict(lengths, **{output: lengths[output] + max_new_tokens}))

  def lower():
    with partitioner.context():
      return decoding.generate.lower(model.decoder(output), params, prompt,
                                     max_new_tokens=max_new_tokens, eos_id=None)

  return report(topology, partitioner, 'decode', decode_batch,
                {'params': per_device_bytes(params), 'opt_state': 0,
                 'batch': per_device_bytes(prompt)}, lower, flops_per_step, save)


def run_compile(args, bindings) -> int:
  """`zipper compile`: in a process of its own that sees the compile-only packages."""
  if topologies.COMPILE_ONLY_PACKAGES not in sys.path:
    return subprocess.run([sys.executable, '-c', 'import sys; from zipper_jax import main; '
                           'sys.exit(main.main(sys.argv[1:]))', *args.argv],
                          env=topologies.compile_only_environment()).returncode
  from zipper_jax import main  # noqa: PLC0415 -- main imports this module
  main.parse_gin(args.gin_file, bindings, finalize=False)
  if args.step == 'train':
    result = compile_train(args.topology, args.num_slices, args.save)
  else:
    result = compile_decode(args.topology, args.output, args.decode_batch,
                            ast.literal_eval(args.prompt_lengths), args.max_new_tokens,
                            args.num_slices, args.save)
  print(result.table())
  if not result.fits:
    print(f'zipper: error: the {result.step} step does not fit {result.topology}: it needs '
          f'{result.bytes_per_device["total"] / 2**30:.2f} GiB per device, '
          f'{result.shortfall_bytes / 2**30:.2f} GiB more than the '
          f'{result.hbm_bytes / 2**30:.2f} GiB of HBM', file=sys.stderr)
  print(json.dumps(dataclasses.asdict(result)))
  return 0 if result.fits else 1


def add_parser(subparsers) -> None:
  command = subparsers.add_parser(
      'compile', help='Compile a run\'s step for a TPU slice or GPU nodes: does it fit?',
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--topology', required=True,
                       help='v5e:4x4, v5e:16x16, v5p:4x4x8, v6e:4x4, h100:NxG, ...')
  command.add_argument('--gin_file', action='append', default=[], required=True)
  command.add_argument('--num_slices', type=int, default=1, help='TPU slices joined by DCN')
  command.add_argument('--step', choices=['train', 'decode'], default='train')
  command.add_argument('--save', help='write the serialised executable here')
  command.add_argument('--output', default='text', help='decode: the tower decoded')
  command.add_argument('--decode_batch', type=int, default=8, help='decode: sequences at once')
  command.add_argument('--prompt_lengths', default='{}',
                       help="decode: tokens of each tower's prompt, e.g. \"{'speech': 2048}\"")
  command.add_argument('--max_new_tokens', type=int, default=128, help='decode: tokens generated')
  command.set_defaults(run=run_compile, takes_bindings=True)
