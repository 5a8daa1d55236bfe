"""What the trainer needs of a model, for the three kinds it trains.

`ZipperModel` (towers fused by cross-attention), `TowerModel` (one tower alone: unimodal
pre-training) and `SingleDecoderModel` (the baseline: a text tower with a grown vocabulary) share
one interface: apply the module to a converted batch, compute the loss, and build parameters from
pre-trained towers' parameter trees (`INIT_CHECKPOINTS`).
"""
from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax

from zipper_jax import baseline, decoding, zipping
from zipper_jax.batch import tower_inputs, tower_targets
from zipper_jax.losses import zipper_loss
from zipper_jax.tower import Tower, TowerConfig
from zipper_jax.zipper import Zipper, ZipperConfig


class Model:
  """Base: subclasses set `module`, `towers` (the batch's tower names) and `tower_configs`."""
  module: nn.Module
  towers: tuple[str, ...]
  tower_configs: Mapping[str, TowerConfig]

  def apply(self, params, inputs: Mapping) -> dict:
    raise NotImplementedError

  def inputs(self, batch) -> dict:
    return tower_inputs(batch, self.towers)

  def init(self, rng, batch):
    """Parameters with their logical axis metadata (boxed), for `partitioning`."""
    return self.module.init(rng, *self._module_inputs(self.inputs(batch)))['params']

  def loss(self, params, batch):
    """(token-weighted loss over all towers, per-tower metrics)."""
    logits = self.apply(params, self.inputs(batch))
    targets, weights = tower_targets(batch, self.towers)
    return zipper_loss(logits, targets, weights)

  def params_from_towers(self, rng, batch, tower_params: Mapping):
    raise NotImplementedError

  def decoder(self, output: str) -> decoding.Decoder:
    raise NotImplementedError

  def _module_inputs(self, inputs):
    return (inputs,)


class ZipperModel(Model):

  def __init__(self, config: ZipperConfig):
    self.config = config
    self.module = Zipper(config)
    self.towers = tuple(config.towers)
    self.tower_configs = dict(config.towers)

  def apply(self, params, inputs):
    return self.module.apply({'params': params}, inputs)[0]

  def params_from_towers(self, rng, batch, tower_params):
    return zipping.zip_params(self.module, rng, self.inputs(batch), tower_params)

  def decoder(self, output):
    return decoding.Decoder.for_zipper(self.module, output)


class TowerModel(Model):
  """One tower alone; its batch features are named after it (e.g. `text_target_tokens`)."""

  def __init__(self, config: TowerConfig, name: str = 'text'):
    self.name = name
    self.module = Tower(config)
    self.towers = (name,)
    self.tower_configs = {name: config}

  def apply(self, params, inputs):
    return {self.name: self.module.apply({'params': params}, inputs[self.name])[0]}

  def _module_inputs(self, inputs):
    return (inputs[self.name],)

  def params_from_towers(self, rng, batch, tower_params):
    if set(tower_params) != {self.name}:
      raise KeyError(f'a {self.name!r} tower initialises from {self.name!r} only; got '
                     f'{sorted(tower_params)}')
    fresh = jax.eval_shape(lambda: nn.unbox(self.init(rng, batch)))
    zipping.check_same_structure(fresh, tower_params[self.name],
                                 f'parameters given for tower {self.name!r}')
    return tower_params[self.name]

  def decoder(self, output=None):
    return decoding.Decoder.for_tower(self.module, self.name)


class SingleDecoderModel(TowerModel):
  """The paper's baseline, initialised from a pre-trained `text` tower's parameters."""

  def __init__(self, text: TowerConfig, speech_vocab_size: int, name: str = 'single'):
    super().__init__(baseline.single_decoder_config(text, speech_vocab_size), name)
    self.text_config, self.speech_vocab_size = text, speech_vocab_size

  def params_from_towers(self, rng, batch, tower_params):
    if set(tower_params) != {'text'}:
      raise KeyError(f'the Single Decoder initialises from a text tower only; got '
                     f'{sorted(tower_params)}')
    grown = baseline.single_decoder_params(tower_params['text'], self.speech_vocab_size, rng)
    return super().params_from_towers(rng, batch, {self.name: grown})
