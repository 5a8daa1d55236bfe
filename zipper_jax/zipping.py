"""A Zipper's parameters from its towers' own pre-trained parameter trees."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipper_jax import checkpoints
from zipper_jax.inputs import TowerInput
from zipper_jax.zipper import Zipper


def zip_params(zipper: Zipper, rng, inputs: Mapping[str, TowerInput],
               tower_params: Mapping[str, Any]):
  """Fresh Zipper parameters in which each tower named in `tower_params` is the given tree.

  Cross-attention, projections, gates and input projections are freshly initialised; with gates
  at zero and `residual`/`none` input projections, the zipped towers compute exactly what they
  computed alone.
  """
  fresh = nn.unbox(jax.jit(zipper.init)(rng, inputs))['params']
  params = dict(fresh)
  for name, tree in tower_params.items():
    if name not in fresh:
      raise KeyError(f'tower {name!r} is not in the Zipper; towers are '
                     f'{sorted(zipper.config.towers)}')
    checkpoints.check_same_structure(fresh[name], tree, f'parameters given for tower {name!r}')
    params[name] = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), tree, fresh[name])
  return params
