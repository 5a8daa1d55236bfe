"""Everything about sharding, in one place: the mesh, logical axis rules, placed parameters.

Layers name the logical axes of every parameter and large activation (`layers`, `embed`, `mlp`,
`heads`, `kv_heads`, `kv`, `vocab`, `key_embed`, `batch`, `length`); the rules below map those
names onto mesh axes. An axis mapped to a mesh axis already used by an earlier axis of the same
array stays unsharded (flax's rule resolution), so `embed` shards parameters over `fsdp` while
activations, whose `batch` took `fsdp` first, keep `embed` whole.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding

from zipper_jax.errors import UserError


MESH_AXES = ('data', 'fsdp', 'tensor')

# Data parallel over `data`, FSDP over `fsdp` (parameters and optimizer state split along
# `embed`), tensor parallel over `tensor` (heads, MLP hidden units, vocabulary).
DEFAULT_RULES = (
    ('layers', None),  # the stacking axis of scanned layers: each device holds every layer
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
              devices=None, dcn_shape: Sequence[int] | None = None) -> Mesh:
  """A device mesh; one -1 in `shape` takes all the devices the others leave.

  `dcn_shape` (multi-slice TPU, or several GPU hosts) splits each axis further across slices or
  hosts, which talk over the data-centre network: e.g. shape (-1, 8, 1) with dcn_shape
  (4, 1, 1) keeps FSDP inside a slice and data parallelism across 4 slices. `shape` is then the
  per-slice shape.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(shape, devices.size, dcn_shape)
  # Meshes that split a physical axis (e.g. a 4-way tensor axis along a TPU slice's 16-chip
  # dimension) are allowed: the rules, not the torus, decide what talks to what.
  if dcn_shape:
    # Slices are the granules on TPUs; hosts are on GPUs, whose devices carry no slice index.
    by_process = len({getattr(d, 'slice_index', 0) for d in devices.ravel()}) == 1
    grid = mesh_utils.create_hybrid_device_mesh(shape, dcn_shape, devices.ravel().tolist(),
                                                process_is_granule=by_process,
                                                allow_split_physical_axes=True)
  else:
    grid = mesh_utils.create_device_mesh(shape, devices.ravel().tolist(),
                                         allow_split_physical_axes=True)
  return Mesh(grid, tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape))


def resolve_mesh_shape(shape: Sequence[int], num_devices: int,
                       dcn_shape: Sequence[int] | None = None) -> tuple[int, ...]:
  """`shape` with its -1 filled so that it (times `dcn_shape`) covers `num_devices` exactly."""
  granules = int(np.prod(dcn_shape)) if dcn_shape else 1
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f'mesh shape {shape}: at most one axis may be -1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    shape[shape.index(-1)] = num_devices // granules // known
  if int(np.prod(shape)) * granules != num_devices:
    raise ValueError(f'mesh shape {tuple(shape)} (x dcn {tuple(dcn_shape or ())}) does not use '
                     f'exactly the {num_devices} devices')
  return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """The mesh and the logical axis rules of a run (gin: `train.partitioner = @Partitioner()`).

  Parameters, optimizer state and batches get their shardings here, from the logical axis
  names the layers give them; inside `context()` activations and decode caches follow the same
  rules.
  """
  mesh_shape: Sequence[int] = (-1, 1, 1)
  dcn_mesh_shape: Sequence[int] | None = None
  rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
  num_devices: int | None = None  # the first N devices only (e.g. to restore onto fewer)
  devices: Sequence[Any] | None = None  # others than jax.devices(): `zipper compile`'s targets

  @functools.cached_property
  def mesh(self) -> Mesh:
    devices = self.devices or jax.devices()
    return make_mesh(self.mesh_shape, devices=devices[:self.num_devices or len(devices)],
                     dcn_shape=self.dcn_mesh_shape)

  def shardings(self, boxed_tree):
    """NamedShardings for a tree of boxed (logically named) arrays or shapes; a `LayoutError`
    names every dimension that does not divide over its mesh axes."""
    check_divisible(boxed_tree, dict(self.mesh.shape), self.rules)
    return logical_to_sharding(nn.get_partition_spec(boxed_tree), self.mesh, self.rules)

  def abstract(self, boxed_tree):
    """`jax.ShapeDtypeStruct`s with their shardings, for a tree of boxed arrays or shapes: what
    to restore a checkpoint into, or to compile against, with nothing allocated."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                    sharding=sharding),
                        nn.unbox(boxed_tree), self.shardings(boxed_tree))

  def fits(self) -> bool:
    """Whether the devices present can make this mesh."""
    available = len(self.devices or jax.devices())
    if (self.num_devices or 0) > available:
      return False
    try:
      resolve_mesh_shape(self.mesh_shape, self.num_devices or available, self.dcn_mesh_shape)
    except ValueError:
      return False
    return True

  def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(self.mesh, nn.logical_to_mesh_axes(tuple(logical_axes), self.rules))

  @property
  def batch_sharding(self) -> NamedSharding:
    return self.sharding(('batch',))

  def initialize(self, boxed_init, *args, shardings=None):
    """Runs `boxed_init(*args)` (parameters with logical names, e.g. `model.init`) straight into
    their sharded layout, so parameters never exist whole on one device; returns (parameters,
    shardings). Pass `shardings` when they are already known."""
    shardings = shardings or self.shardings(jax.eval_shape(boxed_init, *args))
    init = jax.jit(lambda *a: nn.unbox(boxed_init(*a)), out_shardings=shardings)
    return init(*args), shardings

  def context(self):
    return sharding_context(self.mesh, self.rules)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules=DEFAULT_RULES):
  """Inside it, the layers' logical constraints shard activations over `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


class LayoutError(UserError):
  """A parameter that cannot be split evenly over the mesh axes its logical axes map to."""


def mesh_axes_of(boxed_tree, rules=DEFAULT_RULES):
  """[(path, shape, dtype, logical axes, mesh axes per dimension (a tuple of axis names each))]
  for every leaf of a tree of boxed arrays or shapes."""
  rows = []
  for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(nn.unbox(boxed_tree)),
                                jax.tree.leaves(nn.get_partition_spec(boxed_tree))):
    logical = tuple(spec) + (None,) * (len(leaf.shape) - len(spec))
    mesh_axes = tuple(nn.logical_to_mesh_axes(tuple(spec), rules))
    mesh_axes += (None,) * (len(leaf.shape) - len(mesh_axes))
    rows.append((jax.tree_util.keystr(path, simple=True, separator='/'), tuple(leaf.shape),
                 leaf.dtype, logical,
                 tuple((m,) if isinstance(m, str) else tuple(m or ()) for m in mesh_axes)))
  return rows


def check_divisible(boxed_tree, axis_sizes: Mapping[str, int], rules=DEFAULT_RULES) -> None:
  """Raises a `LayoutError` naming every parameter dimension whose size is not a multiple of the
  devices along the mesh axes it is sharded over (XLA would pad it silently, or refuse it)."""
  problems = []
  for name, shape, _, logical, mesh_axes in mesh_axes_of(boxed_tree, rules):
    for dim, (size, axis, axes) in enumerate(zip(shape, logical, mesh_axes)):
      devices = int(np.prod([axis_sizes[a] for a in axes]))
      if size % devices:
        over = ' x '.join(f'{a}={axis_sizes[a]}' for a in axes)
        problems.append(f'{name} dimension {dim} ({axis!r}) of size {size} does not divide over '
                        f'mesh axes {over} ({devices} devices)')
  if problems:
    raise LayoutError('parameters that cannot be sharded evenly: ' + '; '.join(problems) +
                      '. Change the mesh shape, the logical axis rules or the model\'s sizes')


def describe_layout(boxed_params, partitioner: Partitioner, num_devices: int | None = None) -> str:
  """A table of every parameter: shape, logical axes, mesh axes and bytes per device.

  Computed from shapes alone over `num_devices` (default: those present), so a layout for a pod
  can be checked on a laptop.
  """
  num_devices = num_devices or jax.device_count()
  mesh_shape = resolve_mesh_shape(partitioner.mesh_shape, num_devices, partitioner.dcn_mesh_shape)
  if partitioner.dcn_mesh_shape:
    mesh_shape = tuple(a * b for a, b in zip(mesh_shape, partitioner.dcn_mesh_shape))
  axis_sizes = dict(zip(MESH_AXES, mesh_shape))
  check_divisible(boxed_params, axis_sizes, partitioner.rules)
  rows, total = [], 0
  for name, shape, dtype, logical, mesh_axes in mesh_axes_of(boxed_params, partitioner.rules):
    splits = [int(np.prod([axis_sizes[a] for a in axes])) for axes in mesh_axes]
    per_device = int(np.prod([d // k for d, k in zip(shape, splits)])) * np.dtype(dtype).itemsize
    total += per_device
    rows.append((name, str(shape), str(logical), str(tuple(
        None if not axes else axes[0] if len(axes) == 1 else axes for axes in mesh_axes)),
                 f'{per_device:,}'))
  header = ('parameter', 'shape', 'logical axes', 'mesh axes', 'bytes/device')
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  mesh = ', '.join(f'{k}={v}' for k, v in axis_sizes.items())
  return '\n'.join([f'mesh: {mesh} ({num_devices} devices)', line(header), *map(line, rows),
                    f'parameters per device: {total:,} bytes'])
