import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import SPEECH, TEXT, TWO_WAY, asr_inputs, open_gates
from zipper_jax import partitioning
from zipper_jax.zipper import Zipper, ZipperConfig


def test_mesh_fills_the_minus_one_axis():
  mesh = partitioning.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  with pytest.raises(ValueError, match='does not use exactly the 8 devices'):
    partitioning.make_mesh((3, 1, 1))
  with pytest.raises(ValueError, match='at most one axis'):
    partitioning.make_mesh((-1, -1, 1))


def test_zipper_shards_as_the_rules_say():
  partitioner = partitioning.Partitioner((1, 2, 4))  # fsdp x tensor over 8 fake devices
  # Head counts divisible by the 4-way tensor axis.
  towers = {'text': dataclasses.replace(TEXT, num_kv_heads=4),
            'speech': dataclasses.replace(SPEECH, num_heads=4, head_dim=6)}
  model = Zipper(ZipperConfig(towers, TWO_WAY))
  inputs = asr_inputs(batch=4)
  params, _ = partitioner.initialize(model.init, jax.random.key(0), inputs)
  params = params['params']

  text = params['text']
  assert text['embedder']['embedding'].sharding.spec == P('tensor', 'fsdp')
  blocks = text['blocks']  # stacked: `layers` first, unsharded
  assert blocks['mlp']['gate']['kernel'].sharding.spec == P(None, 'fsdp', 'tensor')
  assert blocks['attention']['query']['kernel'].sharding.spec == P(None, 'fsdp', 'tensor', None)
  assert text['lm_head']['kernel'].sharding.spec == P('fsdp', 'tensor')
  # A [2, 32, 64] kernel split 1 x 2 x 4 leaves a [2, 16, 16] block on each device.
  gate = blocks['mlp']['gate']['kernel']
  assert {shard.data.shape for shard in gate.addressable_shards} == {(2, 16, 16)}

  params = open_gates(params)
  with partitioner.context():
    sharded, _ = jax.jit(model.apply)({'params': params}, inputs)
  single, _ = jax.jit(model.apply)({'params': jax.device_get(params)}, inputs)
  for name in sharded:
    np.testing.assert_allclose(sharded[name], single[name], atol=1e-5)
