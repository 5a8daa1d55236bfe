"""Attention kernels against sequence length: the compiled train step's temporary bytes
(`memory_analysis()`) and its time, for one tower alone (2 blocks of `zipper_s` width, batch 1)
at each length, and for the Zipper at ASR shape (speech 4x text, the text tower frozen).

  python benchmarks/attention.py                      # this CPU: chunked and xla, run and timed
  python benchmarks/attention.py --topology=v5e:4x4   # splash, compiled for a TPU slice
  python benchmarks/attention.py --topology=h100:1x1  # cuDNN, compiled for an H100 (bfloat16)
  python benchmarks/attention.py --topology=v5e:4x4 --kernels=splash,xla  # beside the reference

Prints JSON: {kernel: {length: {"temp_bytes": n, "step_s": s}}, "zipper_asr": {kernel: {speech
length: {...}}}}. A step whose temporaries exceed --max_run_bytes is compiled, not run (step_s
null). Ahead of time (--topology, through the compile-only packages) nothing runs: per-device
temporaries of a data-parallel step, batch 1 per chip, and `kernel_in_program`, whether the
kernel's own call is in the compiled program (not a fallback to chunked); a step XLA refuses for
want of HBM has temp_bytes null and `refused_needing_bytes` (its whole need, from XLA's message).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import optax  # noqa: E402

from abstract_step import compile_train_step  # noqa: E402
from train_step import measure, random_params, ragged_batch  # noqa: E402
from zipper_jax import ahead_of_time as ahead_of_time_lib  # noqa: E402
from zipper_jax import batch as batch_lib, models, partitioning, topologies, train  # noqa: E402
from zipper_jax.tower import TowerConfig  # noqa: E402
from zipper_jax.zipper import ZipperConfig  # noqa: E402

# `zipper_s` width (gin/models/zipper_s.gin), 2 blocks.
TOWER = TowerConfig(vocab_size=1027, num_layers=2, embed_dim=768, num_heads=12, head_dim=64,
                    mlp_dim=2048)
# What each kernel's call looks like in a compiled program.
KERNEL_CALLS = {'splash': 'tpu_custom_call', 'cudnn': '__cudnn$fmha'}


def tower_model(kernel: str, dtype: str = 'float32') -> models.TowerModel:
  return models.TowerModel(dataclasses.replace(TOWER, attention_kernel=kernel, dtype=dtype))


def zipper_model(kernel: str, dtype: str = 'float32') -> models.ZipperModel:
  tower = dataclasses.replace(TOWER, attention_kernel=kernel, dtype=dtype)
  return models.ZipperModel(ZipperConfig({'text': tower, 'speech': tower},
                                         (('text', 'speech', 1), ('speech', 'text', 1))))


def asr_lengths(speech_length: int) -> dict[str, int]:
  return {'speech': speech_length, 'text': speech_length // 4}


def on_this_machine(model, lengths, frozen, max_run_bytes: int, repeats: int) -> dict:
  compiled, _ = compile_train_step(model, lengths, 1, frozen)
  temp = compiled.memory_analysis().temp_size_in_bytes
  step_s = None
  if temp <= max_run_bytes:
    batch = ragged_batch(model.towers, lengths, 1)
    step_s = measure(model, random_params(model, batch), batch, frozen, repeats)[0]
  return {'temp_bytes': temp, 'step_s': step_s}


def ahead_of_time(model, lengths, frozen, topology: str, kernel: str) -> dict:
  """The trainer's step for `topology` (data parallel over its chips), compiled, not run."""
  partitioner = partitioning.Partitioner(devices=topologies.devices(topology))
  batch_size = partitioner.mesh.size
  example = batch_lib.dummy_batch(model.towers, lengths, batch_size)
  layout = train.StepLayout.of(model, example, jax.random.key(0), optax.adamw(1e-4), frozen,
                               partitioner)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=layout.batch_sharding)
           for k, v in example.items()}
  state = layout.abstract_state()

  def lower():
    with partitioner.context():
      return layout.jit_train_step(model).lower(state, batch)

  compiled, _, shortfall = ahead_of_time_lib.compile_program(lower, None)
  if compiled is None:  # XLA refused it: more than the chip's HBM
    hbm = topologies.chip(topology).hbm_bytes
    return {'temp_bytes': None, 'step_s': None, 'refused_needing_bytes': hbm + shortfall}
  result = {'temp_bytes': compiled.memory_analysis().temp_size_in_bytes, 'step_s': None}
  if kernel in KERNEL_CALLS:
    result['kernel_in_program'] = KERNEL_CALLS[kernel] in compiled.as_text()
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--lengths', default='512,1024,2048,4096,8192')
  parser.add_argument('--asr_lengths', default='1024,4096', help='speech tokens (text: 1/4)')
  parser.add_argument('--kernels', help='default: chunked,xla here; splash or cudnn ahead of time')
  parser.add_argument('--topology', help='compile for it instead: splash on TPUs, cuDNN on H100s')
  parser.add_argument('--max_run_bytes', type=float, default=8e9)
  parser.add_argument('--repeats', type=int, default=1)
  args = parser.parse_args(argv)
  if args.topology and topologies.COMPILE_ONLY_PACKAGES not in sys.path:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])],
                          env=topologies.compile_only_environment(), stdout=subprocess.PIPE,
                          text=True, check=True)
    results = json.loads(done.stdout)
    print(json.dumps(results, indent=2))
    return results
  lengths = [int(n) for n in args.lengths.split(',') if n]
  asr = [int(n) for n in args.asr_lengths.split(',') if n]
  gpu = bool(args.topology) and args.topology.startswith('h100')
  kernels = (args.kernels or ('cudnn' if gpu else 'splash' if args.topology else 'chunked,xla'))
  dtype = 'bfloat16' if gpu else 'float32'  # cuDNN's kernel takes 16-bit floats

  def measure_one(model, shape, frozen, kernel):
    if args.topology:
      return ahead_of_time(model, shape, frozen, args.topology, kernel)
    return on_this_machine(model, shape, frozen, args.max_run_bytes, args.repeats)

  results = {'zipper_asr': {}}
  for kernel in kernels.split(','):
    results[kernel] = {str(n): measure_one(tower_model(kernel, dtype), {'text': n}, (), kernel)
                       for n in lengths}
    results['zipper_asr'][kernel] = {
        str(n): measure_one(zipper_model(kernel, dtype), asr_lengths(n), ('text',), kernel)
        for n in asr}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
