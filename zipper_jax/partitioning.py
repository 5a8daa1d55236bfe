"""Everything about sharding, in one place: the mesh, logical axis rules, placed parameters.

Layers name the logical axes of every parameter and large activation (`embed`, `mlp`, `heads`,
`kv_heads`, `kv`, `vocab`, `key_embed`, `batch`, `length`); the rules below map those names onto
mesh axes. An axis mapped to a mesh axis already used by an earlier axis of the same array stays
unsharded (flax's rule resolution), so `embed` shards parameters over `fsdp` while activations,
whose `batch` took `fsdp` first, keep `embed` whole.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ('data', 'fsdp', 'tensor')

# Data parallel over `data`, FSDP over `fsdp` (parameters and optimizer state split along
# `embed`), tensor parallel over `tensor` (heads, MLP hidden units, vocabulary).
DEFAULT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('embed', 'fsdp'),
    ('key_embed', None),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('kv', None),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axis_names: Sequence[str] = MESH_AXES,
              devices=None) -> Mesh:
  """A device mesh; one -1 in `shape` takes all the devices the others leave."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {shape}: at most one axis may be -1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = devices.size // known
  if int(np.prod(shape)) != devices.size:
    raise ValueError(f'mesh shape {tuple(shape)} over axes {tuple(axis_names)} does not use '
                     f'exactly the {devices.size} devices')
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices.ravel().tolist())


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules=DEFAULT_RULES):
  """Inside it, the layers' logical constraints shard activations over `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def init_sharded(model: nn.Module, rng, *inputs, mesh: Mesh, rules=DEFAULT_RULES):
  """Initialises `model` directly into its sharded layout; returns (params, their shardings).

  Parameters never exist whole on one device, which is what lets a model larger than one
  device's memory start at all. The output shardings alone place them: no mesh context is
  entered, because flax's `DenseGeneral` unboxes multi-axis kernels at their flattened shape,
  where a constraint of the kernel's rank would not apply.
  """
  init = lambda rng: model.init(rng, *inputs)['params']
  boxed = jax.eval_shape(init, rng)
  shardings = logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
  params = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(rng)
  return params, shardings
