"""Stacks of identical layers: parameters on a leading `layers` axis, one layer applied per step.

A stack is one parameter tree whose leaves carry a leading `layers` axis (a logical axis like any
other: unsharded by the default rules), and it is run by `lax.scan` over that axis, so a
program holds one copy of the layer however deep the stack is (MaxText's `scan_layers`).
Unrolling the same scan (`TowerConfig.scan_layers=False`) keeps the same parameters, so a
checkpoint serves both. A layer is applied as a pure function of its slice of the stack, which
lets the Zipper run several towers' stacks in one scan, a few layers of each per step.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# Activations named in the layers (`checkpoint_name`), for the policies that save them.
ATTENTION_PROJECTIONS = ('query_proj', 'key_proj', 'value_proj', 'out_proj')
MLP_PROJECTIONS = ('mlp_gate', 'mlp_up', 'mlp_out')

# What the backward pass keeps of a layer's forward pass; the rest is recomputed (as MaxText
# names them). 'none' keeps everything, 'full' only each layer's input.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'save_qkv_proj': jax.checkpoint_policies.save_only_these_names(*ATTENTION_PROJECTIONS[:3]),
    'save_projections': jax.checkpoint_policies.save_only_these_names(
        *ATTENTION_PROJECTIONS, *MLP_PROJECTIONS),
}


def stacked(layer: nn.Module, length: int, *example_args) -> Callable:
  """An initialiser for `Module.param`: `length` independently initialised copies of `layer`'s
  parameters (given `example_args` to call it with), stacked, with logical axes ('layers', ...).

  `layer` must be unbound (`parent=None`).
  """
  def init(rng):
    params = jax.vmap(lambda key: layer.init(key, *example_args)['params'])(
        jax.random.split(rng, length))
    return jax.tree.map(lambda box: box.add_axis(0, {nn.PARTITION_NAME: 'layers'}), params,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return init


def layer_function(layer: nn.Module, remat: str, *, unrolled: bool) -> Callable:
  """`layer` (unbound) as a pure function (params, dropout rng or None, *args) -> outputs, its
  activations kept or recomputed in the backward pass per `REMAT_POLICIES[remat]`."""
  apply = lambda params, rng, *args: layer.apply(
      {'params': params}, *args, rngs=None if rng is None else {'dropout': rng})
  if remat == 'none':
    return apply
  # Inside a scan the loop keeps XLA from merging the recomputation back into the forward pass;
  # unrolled, only the barrier that `prevent_cse` adds does.
  return jax.checkpoint(apply, policy=REMAT_POLICIES[remat], prevent_cse=unrolled)


def layer_rngs(module: nn.Module, rate: float, length: int):
  """One dropout key per layer of a stack of `length` (scanned with it), drawn from `module`'s
  'dropout' rng; None where there is no dropout (rate 0, or no such rng: evaluation)."""
  if rate == 0 or not module.has_rng('dropout'):
    return None
  return jax.random.split(module.make_rng('dropout'), length)


def split_stages(stack, stages: int) -> tuple:
  """A stack of `stages * n` layers as n stacks of `stages` layers: the i-th holds the i-th layer
  of every stage, and a scan over stages hands it to the stage whole.

  A layer's parameters are then an input of the scan's body as they are, not a slice taken in
  it: JAX forwards them to the backward pass instead of stacking a copy of every layer's weights
  as residuals (which cost the `zipper_s` step a quarter of its speed). One `split` cuts all n
  (its gradient is one concatenation), where n slices would each add a stack-sized padded copy
  of their gradient: 21 GB of temporaries for the unrolled SmolLM2 Zipper's step at batch 1.
  """
  leaves, treedef = jax.tree.flatten(stack)
  per_stage = leaves[0].shape[0] // stages if leaves else 0
  split = lambda x: jnp.split(x.reshape((stages, per_stage) + x.shape[1:]), per_stage, axis=1)
  layers = zip(*(split(x) for x in leaves)) if per_stage else ()
  return tuple(jax.tree.unflatten(treedef, [x.squeeze(1) for x in layer]) for layer in layers)


def merge_stages(stack):
  """[stages, n, ...] leaves (a scan's outputs, n layers a stage) -> [stages * n, ...]."""
  return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), stack)
