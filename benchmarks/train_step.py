"""Steady-state training step time, tokens/s and MFU, side by side, in one process.

  python benchmarks/train_step.py --config=cpu            # prints JSON
  python benchmarks/train_step.py --config=zipper_s --dtype=bfloat16 --batch=16
  python benchmarks/train_step.py --config=smollm2_s --dtype=bfloat16 --batch=16  # SmolLM2-135M

Variants: the text and speech towers alone, the Zipper with the text tower frozen, both towers
trainable and both frozen, and the Single Decoder, all on the same ASR-shaped batch. MFU is taken
against the peak measured here, a large jitted matmul of the same dtype, and the exact FLOPs of
`zipper_jax/flops.py` are printed beside XLA's own count of the compiled step.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zipper_jax import attention, batch as batch_lib, configurables, flops, freezing  # noqa: E402
from zipper_jax import host_memory, models, steps  # noqa: E402
from zipper_jax.tower import TowerConfig  # noqa: E402
from zipper_jax.zipper import ZipperConfig  # noqa: E402

host_memory.keep_freed_memory()  # the trainer's allocator, as the `zipper` command sets it

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (gin shapes file, speech length, text length, default batch)
CONFIGS = {'cpu': ('tiny.gin', 128, 32, 8), 'zipper_s': ('zipper_s.gin', 256, 64, 2),
           'zipper_l': ('zipper_l.gin', 512, 128, 8),
           'smollm2_s': ('zipper_smollm2_s.gin', 256, 64, 2)}


def tower_configs(shapes_file: str, dtype: str, remat: str, scan_layers: bool = True,
                  attention_kernel: str = 'auto') -> dict[str, TowerConfig]:
  gin.clear_config(clear_constants=True)
  gin.add_config_file_search_path(REPO)
  gin.parse_config_file(os.path.join(REPO, 'gin', 'models', shapes_file))
  towers = {}
  for name in ('text', 'speech'):
    with gin.config_scope(name):
      towers[name] = dataclasses.replace(configurables.CONFIGURED['TowerConfig'](), dtype=dtype,
                                         remat=remat, scan_layers=scan_layers,
                                         attention_kernel=attention_kernel)
  return towers


def ragged_batch(towers, lengths, batch_size, seed=0):
  """ASR-shaped: speech of random length (at least half), then text; weights on text."""
  rng = np.random.default_rng(seed)
  out = batch_lib.dummy_batch(towers, lengths, batch_size)
  for name in towers:
    length = lengths[name]
    valid = rng.integers(length // 2, length + 1, batch_size)
    mask = np.arange(length)[None] < valid[:, None]
    tokens = rng.integers(1, 32, (batch_size, length)) * mask
    out[f'{name}_input_tokens'] = tokens.astype(np.int32)
    out[f'{name}_target_tokens'] = np.roll(tokens, -1, axis=1).astype(np.int32)
    out[f'{name}_segment_ids'] = mask.astype(np.int32)
    out[f'{name}_positions'] = (np.arange(length)[None] * mask).astype(np.int32)
    out[f'{name}_interleaved_positions'] = out[f'{name}_positions'] + (
        lengths.get('speech', 0) if name == 'text' else 0)
    out[f'{name}_loss_weights'] = (mask * (name != 'speech')).astype(np.float32)
  return out


def random_params(model, batch, seed: int = 0):
  """Parameters of `model`'s shapes drawn on the host. A step's time does not depend on their
  values, and the model's jitted initialisation (a threefry program for every tensor) compiles
  for longer than its train step: 37 s against 18 s for the `zipper_s` Zipper on this CPU."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32), s.dtype), shapes)


def measure(model, params, batch, frozen, repeats):
  """(seconds per step: median of `repeats`, XLA's FLOP count, seconds to lower and compile)."""
  params = jax.tree.map(jnp.copy, params)  # the step donates its state; the caller keeps these
  mask = freezing.trainable_mask(params, frozen)
  trainable, frozen_params = freezing.partition(params, mask)
  tx = optax.adamw(1e-4)
  state = steps.TrainState(jnp.zeros((), jnp.int32), trainable, frozen_params,
                           tx.init(trainable))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx),
                 donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, list) else cost).get('flops', float('nan'))
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times), xla_flops, compile_seconds


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', choices=sorted(CONFIGS), default='cpu')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--batch', type=int)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--remat', default='none')
  parser.add_argument('--unrolled', action='store_true', help='unroll the layers (no scan)')
  parser.add_argument('--attention_kernel', default='auto', choices=attention.KERNELS)
  parser.add_argument('--variants', default='all', help='comma-separated subset')
  parser.add_argument('--peak_size', type=int, help='matmul size for the peak (default by device)')
  parser.add_argument('--speech_length', type=int, help='default by --config')
  parser.add_argument('--text_length', type=int, help='default by --config')
  args = parser.parse_args(argv)

  shapes_file, speech_length, text_length, default_batch = CONFIGS[args.config]
  speech_length = args.speech_length or speech_length
  text_length = args.text_length or text_length
  batch_size = args.batch or default_batch
  towers = tower_configs(shapes_file, args.dtype, args.remat, not args.unrolled,
                         args.attention_kernel)
  lengths = {'speech': speech_length, 'text': text_length,
             'single': speech_length + text_length}
  zipper = models.ZipperModel(ZipperConfig(towers, (('text', 'speech', 1),
                                                    ('speech', 'text', 1))))
  variants = {
      'text_tower': (models.TowerModel(towers['text'], 'text'), ()),
      'speech_tower': (models.TowerModel(towers['speech'], 'speech'), ()),
      'zipper_all_trainable': (zipper, ()),
      'zipper_text_frozen': (zipper, ('text',)),
      'zipper_both_frozen': (zipper, ('text', 'speech')),
      'single_decoder': (models.SingleDecoderModel(towers['text'], towers['speech'].vocab_size),
                         ()),
  }
  if args.variants != 'all':
    variants = {k: variants[k] for k in args.variants.split(',')}
  platform = jax.devices()[0].platform
  peak = flops.measure_peak_flops(args.peak_size or (8192 if platform == 'gpu' else 2048),
                                  jnp.dtype(args.dtype))
  results = {'config': args.config, 'dtype': args.dtype, 'batch': batch_size,
             'lengths': {'speech': speech_length, 'text': text_length}, 'remat': args.remat,
             'scan_layers': not args.unrolled,
             'attention_kernel': attention.resolve(args.attention_kernel),
             'device': jax.devices()[0].device_kind, 'peak_flops_measured': peak, 'variants': {}}
  params = {}  # model -> params: the Zipper's variants share them
  for name, (model, frozen) in variants.items():
    batch = ragged_batch(model.towers, lengths, batch_size)
    if model not in params:
      params[model] = random_params(model, batch)
    seconds, xla, compile_seconds = measure(model, params[model], batch, frozen, args.repeats)
    exact = batch_size * model.train_flops_per_example(lengths, frozen)
    tokens = batch_size * sum(lengths[t] for t in model.towers)
    results['variants'][name] = {
        'step_seconds': seconds, 'tokens_per_second': tokens / seconds,
        'flops_per_step': exact, 'xla_flops_per_step': xla,
        'flops_ratio_xla_over_exact': xla / exact, 'achieved_flops_per_second': exact / seconds,
        'mfu': exact / seconds / peak, 'compile_seconds': compile_seconds}
    print(json.dumps({name: results['variants'][name]}), file=sys.stderr, flush=True)

  v = results['variants']
  if {'zipper_text_frozen', 'zipper_all_trainable'} <= v.keys():
    results['frozen_text_over_all_trainable'] = (v['zipper_text_frozen']['step_seconds'] /
                                                 v['zipper_all_trainable']['step_seconds'])
    # What freezing can save at this shape: the frozen tower's weight gradients, no more.
    results['frozen_text_over_all_trainable_flops'] = (
        v['zipper_text_frozen']['flops_per_step'] / v['zipper_all_trainable']['flops_per_step'])
  if {'zipper_all_trainable', 'text_tower', 'speech_tower'} <= v.keys():
    towers_seconds = v['text_tower']['step_seconds'] + v['speech_tower']['step_seconds']
    rate = ((v['text_tower']['flops_per_step'] + v['speech_tower']['flops_per_step']) /
            towers_seconds)
    cross = v['zipper_all_trainable']['flops_per_step'] - (
        v['text_tower']['flops_per_step'] + v['speech_tower']['flops_per_step'])
    results['zipper_over_towers_plus_cross'] = (
        v['zipper_all_trainable']['step_seconds'] / (towers_seconds + cross / rate))
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
