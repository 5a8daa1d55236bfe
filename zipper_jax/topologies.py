"""Accelerators this machine can compile for without owning them, and their published figures.

A topology is named as users book it: TPU slices as `jax.experimental.topologies` takes them
(`v5e:4x4`, `v5e:16x16`, `v5p:4x4x8`, `v6e:4x4`; `num_slices` for multi-slice), GPU nodes as
`h100:NxG` (N hosts of G H100s). Their devices are compile-only: XLA compiles for them through
libtpu or the CUDA plugin, which `make` installs into `.venv/compile-only`, apart from the
packages every run imports, so that JAX here still picks the CPU. Only a process that starts
with that folder on its path sees them (`compile_only_environment`).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from zipper_jax.errors import UserError

COMPILE_ONLY_PACKAGES = os.path.join(sys.prefix, 'compile-only')
H100_DESCRIPTION = os.path.join(os.path.dirname(__file__), 'h100_sxm.txtpb')
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # per chip
  peak_flops: float  # dense bfloat16 FLOP/s per chip, as the vendor publishes it


# One place for the published figures (vendors' spec sheets).
CHIPS = {
    'v4': Chip('TPU v4', 32 * GIB, 275e12),
    'v5e': Chip('TPU v5e', 16 * GIB, 197e12),
    'v5p': Chip('TPU v5p', 95 * GIB, 459e12),
    'v6e': Chip('TPU v6e', 32 * GIB, 918e12),
    # 79.1 GiB: the memory size in XLA's H100 description (h100_sxm.txtpb). JAX takes 75% of it
    # unless XLA_PYTHON_CLIENT_MEM_FRACTION says more (0.95 is usual for large runs).
    'h100': Chip('NVIDIA H100 SXM', 84_942_979_072, 989e12),
}


class TopologyError(UserError):
  """A topology name this machine cannot compile for."""


def chip(topology: str) -> Chip:
  kind = topology.split(':')[0]
  if kind not in CHIPS:
    raise TopologyError(f'unknown chip {kind!r} in topology {topology!r}; known: '
                        f'{sorted(CHIPS)} (e.g. v5e:4x4, v5p:4x4x8, h100:2x8)')
  return CHIPS[kind]


def compile_only_environment(environ=os.environ) -> dict[str, str]:
  """The environment of a process that compiles for TPUs and GPUs: the compile-only packages
  on its path, the CPU as its own platform, libtpu told that it runs on no TPU host and that
  other processes may load it too (it would hold a machine-wide lock, for a TPU it does not
  drive)."""
  path = [COMPILE_ONLY_PACKAGES] + [p for p in environ.get('PYTHONPATH', '').split(':') if p]
  return dict(environ, PYTHONPATH=':'.join(path), JAX_PLATFORMS='cpu',
              TPU_WORKER_HOSTNAMES='localhost', TPU_SKIP_MDS_QUERY='1',
              ALLOW_MULTIPLE_LIBTPU_LOAD='1')


def devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of `topology` (a `TopologyError` names what is wrong)."""
  from jax.experimental import topologies  # noqa: PLC0415 -- after the path is set
  kind, _, shape = topology.partition(':')
  chip(topology)
  if COMPILE_ONLY_PACKAGES not in sys.path:
    raise TopologyError('compiling for TPUs and GPUs needs the compile-only packages: run `make` '
                        f'(they go to {COMPILE_ONLY_PACKAGES}) and use `zipper compile`')
  try:
    if kind == 'h100':
      hosts, gpus = (int(n) for n in shape.split('x'))
      if num_slices != 1:
        raise TopologyError('GPU nodes have no slices: give h100:HOSTSxGPUS')
      with open(H100_DESCRIPTION) as f:
        return topologies.get_topology_desc(platform='cuda', topology_name='',
                                            topology=f'1x{hosts}x{gpus}',
                                            target_config=f.read()).devices
    return topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                        num_slices=num_slices).devices
  except (ValueError, RuntimeError) as e:
    raise TopologyError(f'topology {topology!r}: {e}') from e
