"""Peak host memory of restoring a 71 MB tower onto 8 fake devices, sharded (`--sharded`, as
INIT_CHECKPOINTS does) or replicated: run as a script in a fresh process; prints one JSON line.

glibc gives each thread its own malloc arena and keeps what is freed in it, so that the resident
set counts memory long dead; the test runs this with MALLOC_ARENA_MAX=1, where it tracks what is
live. The restore code path is first run on a tiny tower, so that what is paid once per process
(libraries, thread pools) is not counted.
"""
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'

import gc  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402

from zipper_jax import checkpoints, models, partitioning  # noqa: E402
from zipper_jax.tower import Tower, TowerConfig, example_input  # noqa: E402
from zipper_jax.zipper import Edge, ZipperConfig  # noqa: E402

TEXT = TowerConfig(vocab_size=1024, num_layers=4, embed_dim=512, num_heads=8, head_dim=64,
                   mlp_dim=2048)
SMALL = TowerConfig(vocab_size=128, num_layers=1, embed_dim=64, num_heads=2, head_dim=32,
                    mlp_dim=128)
SPEECH = TowerConfig(vocab_size=256, num_layers=2, embed_dim=64, num_heads=2, head_dim=32,
                     mlp_dim=128)


def memory(key: str) -> int:
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def saved_tower(config: TowerConfig, directory: str) -> list[int]:
  """Saves a fresh tower; the bytes of each of its arrays."""
  params = jax.jit(lambda: nn.unbox(Tower(config).init(jax.random.key(0), example_input()))
                   ['params'], out_shardings=jax.sharding.SingleDeviceSharding(jax.devices()[0]))()
  checkpoints.save_params(directory, params, {'step': 0})
  return [x.nbytes for x in jax.tree.leaves(params)]


def restore(config: TowerConfig, directory: str, partitioner, sharded: bool):
  model = models.ZipperModel(ZipperConfig({'text': config, 'speech': SPEECH},
                                          (Edge('speech', 'text', 1),)))
  if sharded:
    return checkpoints.load_params(directory, partitioner.abstract(model.pretrained_shapes('text')))
  return checkpoints.load_params(directory, sharding=partitioner.sharding(()))


def main(sharded: bool) -> None:
  partitioner = partitioning.Partitioner((1, 8, 1))
  with tempfile.TemporaryDirectory() as scratch:
    small, text = os.path.join(scratch, 'small'), os.path.join(scratch, 'text')
    saved_tower(SMALL, small)
    sizes = saved_tower(TEXT, text)
    restore(SMALL, small, partitioner, sharded)
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # the peak (VmHWM) starts again from here
    before = memory('VmRSS')
    params = jax.block_until_ready(restore(TEXT, text, partitioner, sharded))
    peak = memory('VmHWM') - before
  gate = params['blocks']['mlp']['gate']['kernel']
  print(json.dumps({'tower_bytes': sum(sizes), 'largest_tensor_bytes': max(sizes),
                    'peak_bytes': peak, 'gate_shape': gate.shape,
                    'gate_shard_shapes': sorted({s.data.shape for s in gate.addressable_shards})}))


if __name__ == '__main__':
  main('--sharded' in sys.argv)
