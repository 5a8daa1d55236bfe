"""Train-step compile seconds against depth: a tower alone at 4 to 32 blocks, and the `zipper_s`
and `zipper_l` Zippers (text frozen), each with scanned and with unrolled layers. On abstract
shapes: nothing is allocated or run.

  python benchmarks/compile_time.py            # prints JSON
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from abstract_step import compile_train_step  # noqa: E402
from train_step import tower_configs  # noqa: E402
from zipper_jax import models  # noqa: E402
from zipper_jax.zipper import ZipperConfig  # noqa: E402

TWO_WAY = (('text', 'speech', 1), ('speech', 'text', 1))
LENGTHS = {'speech': 256, 'text': 64}


def tower_seconds(depth: int, scan_layers: bool) -> float:
  """A `zipper_s`-wide text tower of `depth` blocks, batch 2 of 256 tokens."""
  tower = dataclasses.replace(tower_configs('zipper_s.gin', 'float32', 'none', scan_layers)['text'],
                              num_layers=depth)
  return compile_train_step(models.TowerModel(tower), {'text': 256}, 2)[1]


def zipper_seconds(shapes_file: str, scan_layers: bool) -> float:
  towers = tower_configs(shapes_file, 'float32', 'none', scan_layers)
  model = models.ZipperModel(ZipperConfig(towers, TWO_WAY))
  return compile_train_step(model, LENGTHS, 2, frozen=('text',))[1]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--depths', default='4,8,16,32')
  parser.add_argument('--zippers', default='zipper_s,zipper_l')
  args = parser.parse_args(argv)
  depths = args.depths.split(',')
  results = {'tower': {d: tower_seconds(int(d), True) for d in depths},
             'tower_unrolled': {d: tower_seconds(int(d), False) for d in depths}}
  for name in args.zippers.split(','):
    results[name] = {'scanned': zipper_seconds(f'{name}.gin', True),
                     'unrolled': zipper_seconds(f'{name}.gin', False)}
  tower = results['tower']
  results['tower_ratio_deepest_to_shallowest'] = tower[depths[-1]] / tower[depths[0]]
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
