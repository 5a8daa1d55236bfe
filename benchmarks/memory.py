"""Peak memory of a Zipper training step against sequence length and batch, with and without
rematerialisation: XLA's own accounting of the compiled step (arguments, outputs, temporaries),
so nothing has to run.

  python benchmarks/memory.py            # prints JSON
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from zipper_jax import batch as batch_lib, freezing, models, steps
from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import ZipperConfig

TOWER = TowerConfig(vocab_size=1027, num_layers=4, embed_dim=256, num_heads=4, head_dim=64,
                    mlp_dim=768)


def step_memory(remat: str, speech_length: int, batch_size: int) -> dict:
  tower = dataclasses.replace(TOWER, remat=remat)
  model = models.ZipperModel(ZipperConfig({'text': tower, 'speech': tower},
                                          (('text', 'speech', 1), ('speech', 'text', 1))))
  lengths = {'speech': speech_length, 'text': speech_length // 4}
  batch = batch_lib.dummy_batch(model.towers, lengths, batch_size)
  params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), batch)))
  trainable, frozen = freezing.partition(params, freezing.trainable_mask(params, ['text']))
  tx = optax.adamw(1e-4)
  state = steps.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, frozen,
                           jax.eval_shape(tx.init, trainable))
  compiled = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx),
                     donate_argnums=0).lower(state, batch).compile()
  memory = compiled.memory_analysis()
  peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + \
      memory.temp_size_in_bytes - memory.alias_size_in_bytes
  return {'remat': remat, 'speech_length': speech_length, 'batch': batch_size,
          'temp_bytes': memory.temp_size_in_bytes, 'peak_bytes': peak}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--lengths', default='128,256,512,1024')
  parser.add_argument('--batches', default='1,4,16')
  args = parser.parse_args(argv)
  rows = []
  for remat in ('none', 'full'):
    rows += [step_memory(remat, length, 4) for length in map(int, args.lengths.split(','))]
    rows += [step_memory(remat, 256, batch) for batch in map(int, args.batches.split(','))]
  results = {'text tower frozen, text length = speech length / 4': rows}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
