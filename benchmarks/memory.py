"""Peak memory of a Zipper training step against sequence length and batch, under each
rematerialisation policy: XLA's own accounting of the compiled step (arguments, outputs,
temporaries), so nothing has to run; and each policy's step time at one shape, where it does run.

  python benchmarks/memory.py            # prints JSON
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from abstract_step import compile_train_step  # noqa: E402
from train_step import measure, random_params, ragged_batch  # noqa: E402
from zipper_jax import models, stacks  # noqa: E402
from zipper_jax.tower import TowerConfig  # noqa: E402
from zipper_jax.zipper import ZipperConfig  # noqa: E402

TOWER = TowerConfig(vocab_size=1027, num_layers=4, embed_dim=256, num_heads=4, head_dim=64,
                    mlp_dim=768)


def zipper(remat: str) -> models.ZipperModel:
  tower = dataclasses.replace(TOWER, remat=remat)
  return models.ZipperModel(ZipperConfig({'text': tower, 'speech': tower},
                                         (('text', 'speech', 1), ('speech', 'text', 1))))


def lengths(speech_length: int) -> dict[str, int]:
  return {'speech': speech_length, 'text': speech_length // 4}


def step_memory(remat: str, speech_length: int, batch_size: int) -> dict:
  compiled, _ = compile_train_step(zipper(remat), lengths(speech_length), batch_size, ('text',))
  memory = compiled.memory_analysis()
  peak = memory.argument_size_in_bytes + memory.output_size_in_bytes + \
      memory.temp_size_in_bytes - memory.alias_size_in_bytes
  return {'remat': remat, 'speech_length': speech_length, 'batch': batch_size,
          'temp_bytes': memory.temp_size_in_bytes, 'peak_bytes': peak}


def step_seconds(remat: str, speech_length: int, batch_size: int, repeats: int) -> float:
  model = zipper(remat)
  batch = ragged_batch(model.towers, lengths(speech_length), batch_size)
  return measure(model, random_params(model, batch), batch, ('text',), repeats)[0]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--lengths', default='128,256,512,1024')
  parser.add_argument('--batches', default='1,4,16')
  parser.add_argument('--policies', default=','.join(stacks.REMAT_POLICIES))
  parser.add_argument('--repeats', type=int, default=3, help='timed steps per policy')
  args = parser.parse_args(argv)
  rows, timed = [], {}
  for remat in args.policies.split(','):
    rows += [step_memory(remat, length, 4) for length in map(int, args.lengths.split(','))]
    rows += [step_memory(remat, 256, batch) for batch in map(int, args.batches.split(','))]
    timed[remat] = step_seconds(remat, 256, 4, args.repeats)
  results = {'text tower frozen, text length = speech length / 4': rows,
             'step seconds, speech length 256, batch 4': timed}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
