"""What the trainer and inference need of a model, for the three kinds it trains.

`ZipperModel` (towers fused by cross-attention), `TowerModel` (one tower alone: unimodal
pre-training) and `SingleDecoderModel` (the baseline: a text tower with a grown vocabulary) share
one interface, t5x's: apply the module to a converted batch and compute the loss; build
parameters from pre-trained towers' parameter trees (`INIT_CHECKPOINTS`); `predict_batch`
(decode any tower of a batch's examples from the others) and `score_batch` (each example's
log-likelihood), so that any registered task is decoded and scored with no code of its own.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from zipper_jax import baseline, checkpoints, decoding, flops, zipping
from zipper_jax.batch import (decoding_prompt, dummy_batch, prompt_ends, tower_inputs,
                              tower_targets)
from zipper_jax.inputs import TowerInput
from zipper_jax.losses import token_log_likelihoods, zipper_loss
from zipper_jax.tower import Tower, TowerConfig
from zipper_jax.zipper import Zipper, ZipperConfig


class Model:
  """Base: subclasses set `module`, `towers` (the batch's tower names) and `tower_configs`;
  `label_smoothing` is the training objective's (`losses.zipper_loss`).

  Models built from equal arguments are equal (`_arguments`): the compiled steps and decoders
  cached per model serve every such instance, e.g. each run of one shape that a driver evaluates.
  """
  module: nn.Module
  towers: tuple[str, ...]
  tower_configs: Mapping[str, TowerConfig]
  label_smoothing: float = 0.0

  def _arguments(self) -> tuple:
    raise NotImplementedError

  def __eq__(self, other):
    return type(self) is type(other) and self._arguments() == other._arguments()

  def __hash__(self):
    return hash((type(self), self._arguments()))

  def apply(self, params, inputs: Mapping, dropout_rng=None) -> dict:
    """{tower: logits}; dropout (`TowerConfig.dropout_rate`) acts only given `dropout_rng`."""
    raise NotImplementedError

  def inputs(self, batch) -> dict:
    return tower_inputs(batch, self.towers)

  @property
  def vocab_sizes(self) -> dict[str, int]:
    return {name: config.vocab_size for name, config in self.tower_configs.items()}

  def init(self, rng, batch):
    """Parameters with their logical axis metadata (boxed), for `partitioning`."""
    return self.module.init(rng, *self._module_inputs(self.inputs(batch)))['params']

  def param_shapes(self):
    """`init`'s shapes, boxed, with nothing allocated (they do not depend on the batch)."""
    return jax.eval_shape(self.init, jax.random.key(0),
                          dummy_batch(self.towers, {t: 1 for t in self.towers}, 1))

  def loss(self, params, batch, dropout_rng=None):
    """(the objective summed over all towers' weighted tokens, per-tower metrics); with a
    `dropout_rng`, that of a training step."""
    logits = self.apply(params, self.inputs(batch), dropout_rng)
    targets, weights = tower_targets(batch, self.towers)
    return zipper_loss(logits, targets, weights, label_smoothing=self.label_smoothing,
                       vocab_sizes=self.vocab_sizes)

  def score_batch(self, params, batch) -> jnp.ndarray:
    """[batch]: each row's log-likelihood of its weighted targets, over all towers (rows of an
    unpacked batch are examples)."""
    logits = self.apply(params, self.inputs(batch))
    targets, weights = tower_targets(batch, self.towers)
    return sum(token_log_likelihoods(logits[t], targets[t], weights[t]).sum(-1)
               for t in self.towers)

  def predict_batch(self, params, batch, *, output: str, eos_id: int | None,
                    prompt_towers: Sequence[str] | None = None,
                    max_new_tokens: int | None = None, max_length_ratio: float | None = None,
                    **decode) -> decoding.Generated:
    """Decodes tower `output` of each example of an unpacked batch (numpy, host-local).

    The prompt is what precedes `output`'s first weighted target: the `prompt_towers` (default:
    every other tower; the rest are hidden) and `output`'s own tokens before it (a Single
    Decoder's speech before its text; `batch.decoding_prompt`). By default as many tokens are
    generated as `output`'s length leaves after the shortest prompt; `max_length_ratio` caps
    them at that many per token of the batch's longest prompt (ESPnet's `maxlenratio`: an output
    that never ends stops there), rounded up to a power of two (few programs to compile).
    `decode`: beam_size, temperature, top_k, top_p, rng (`predict`).
    """
    prompt = decoding_prompt(batch, self.towers, output, prompt_towers)
    if max_new_tokens is None:
      max_new_tokens = (batch[f'{output}_target_tokens'].shape[1] + 1 -
                        int(prompt_ends(batch, output).min()))
    if max_length_ratio is not None:
      longest = int(max(sum(jnp.count_nonzero(x.segment_ids, axis=1) for x in prompt.values())))
      max_new_tokens = min(max_new_tokens, 1 << (math.ceil(max_length_ratio * longest) -
                                                 1).bit_length())
    return self.predict(params, prompt, output=output, eos_id=eos_id,
                        max_new_tokens=max_new_tokens, **decode)

  def predict(self, params, prompt: Mapping[str, TowerInput], *, output: str,
              eos_id: int | None, max_new_tokens: int, beam_size: int = 1,
              temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
              rng=None) -> decoding.Generated:
    """Tokens of `output` after `prompt` ({tower: TowerInput}; `output`'s left-aligned): beam
    search (the best beam) with `beam_size` > 1, else greedy or sampled (`temperature`)."""
    decoder = self.decoder(output)
    if beam_size > 1:
      beams = decoding.beam_search(decoder, params, prompt, beam_size=beam_size,
                                   max_new_tokens=max_new_tokens, eos_id=eos_id)
      return decoding.Generated(beams.tokens[:, 0], beams.lengths[:, 0])
    return decoding.generate(decoder, params, prompt, rng, max_new_tokens=max_new_tokens,
                             eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p)

  def decoder(self, output: str) -> decoding.Decoder:
    """One `Decoder` per output tower: decoding compiles once per decoder and shapes."""
    raise NotImplementedError

  def params_from_towers(self, rng, batch, tower_params: Mapping):
    raise NotImplementedError

  def pretrained_tower(self, name: str) -> TowerConfig:
    """The config of the tower whose pre-training run `INIT_CHECKPOINTS` gives for `name`."""
    raise NotImplementedError

  def pretrained_shapes(self, name: str):
    """The boxed parameter shapes (with logical axes) of that tower's run: what to restore."""
    inputs = TowerInput.from_tokens(jnp.zeros((1, 1), jnp.int32))
    return jax.eval_shape(Tower(self.pretrained_tower(name)).init, jax.random.key(0),
                          inputs)['params']

  def train_flops_per_example(self, lengths: Mapping[str, int], frozen=()) -> int:
    """Exact matmul FLOPs of one example's forward and backward pass (`flops.py`)."""
    return flops.towers_train_flops(self.tower_configs, lengths, set(frozen))

  def forward_flops_per_example(self, lengths: Mapping[str, int]) -> int:
    """Exact matmul FLOPs of one example's forward pass."""
    return sum(flops.tower_forward_flops(c, lengths[name])
               for name, c in self.tower_configs.items())

  def _module_inputs(self, inputs):
    return (inputs,)


class ZipperModel(Model):

  def __init__(self, config: ZipperConfig, label_smoothing: float = 0.0):
    self.config, self.label_smoothing = config, label_smoothing
    self.module = Zipper(config)
    self.towers = tuple(config.towers)
    self.tower_configs = dict(config.towers)

  def _arguments(self):
    return self.config, self.label_smoothing

  def apply(self, params, inputs, dropout_rng=None):
    return self.module.apply({'params': params}, inputs, rngs=_rngs(dropout_rng))[0]

  def params_from_towers(self, rng, batch, tower_params):
    return zipping.zip_params(self.module, rng, self.inputs(batch), tower_params)

  def pretrained_tower(self, name):
    if name not in self.tower_configs:
      raise KeyError(f'tower {name!r} is not in the Zipper; towers are {sorted(self.towers)}')
    return self.tower_configs[name]

  @functools.cache
  def decoder(self, output):
    return decoding.Decoder.for_zipper(self.module, output)

  def train_flops_per_example(self, lengths, frozen=()):
    return (super().train_flops_per_example(lengths, frozen) +
            flops.zipping_train_flops(self.config, lengths))

  def forward_flops_per_example(self, lengths):
    return (super().forward_flops_per_example(lengths) +
            flops.zipping_forward_flops(self.config, lengths))


class TowerModel(Model):
  """One tower alone; its batch features are named after it (e.g. `text_target_tokens`)."""

  def __init__(self, config: TowerConfig, name: str = 'text', label_smoothing: float = 0.0):
    self.name, self.label_smoothing = name, label_smoothing
    self.module = Tower(config)
    self.towers = (name,)
    self.tower_configs = {name: config}

  def _arguments(self):
    return self.tower_configs[self.name], self.name, self.label_smoothing

  def apply(self, params, inputs, dropout_rng=None):
    return {self.name: self.module.apply({'params': params}, inputs[self.name],
                                         rngs=_rngs(dropout_rng))[0]}

  def _module_inputs(self, inputs):
    return (inputs[self.name],)

  def params_from_towers(self, rng, batch, tower_params):
    if set(tower_params) != {self.name}:
      raise KeyError(f'a {self.name!r} tower initialises from {self.name!r} only; got '
                     f'{sorted(tower_params)}')
    fresh = jax.eval_shape(lambda: nn.unbox(self.init(rng, batch)))
    checkpoints.check_same_structure(fresh, tower_params[self.name],
                                 f'parameters given for tower {self.name!r}')
    return tower_params[self.name]

  def pretrained_tower(self, name):
    if name != self.name:
      raise KeyError(f'a {self.name!r} tower initialises from {self.name!r} only; got {name!r}')
    return self.tower_configs[name]

  def decoder(self, output=None):
    if output not in (None, self.name):
      raise ValueError(f'a {self.name!r} tower decodes {self.name!r}, not {output!r}')
    return self._decoder()

  @functools.cache
  def _decoder(self):
    return decoding.Decoder.for_tower(self.module, self.name)


class SingleDecoderModel(TowerModel):
  """The paper's baseline, initialised from a pre-trained `text` tower's parameters."""

  def __init__(self, text: TowerConfig, speech_vocab_size: int, name: str = 'single',
               label_smoothing: float = 0.0):
    super().__init__(baseline.single_decoder_config(text, speech_vocab_size), name,
                     label_smoothing)
    self.text_config, self.speech_vocab_size = text, speech_vocab_size

  def _arguments(self):
    return self.text_config, self.speech_vocab_size, self.name, self.label_smoothing

  def params_from_towers(self, rng, batch, tower_params):
    if set(tower_params) != {'text'}:
      raise KeyError(f'the Single Decoder initialises from a text tower only; got '
                     f'{sorted(tower_params)}')
    grown = baseline.single_decoder_params(tower_params['text'], self.text_config,
                                           self.speech_vocab_size, rng)
    return super().params_from_towers(rng, batch, {self.name: grown})

  def pretrained_tower(self, name):
    if name != 'text':
      raise KeyError(f'the Single Decoder initialises from a text tower only; got {name!r}')
    return self.text_config


def _rngs(dropout_rng) -> dict | None:
  return None if dropout_rng is None else {'dropout': dropout_rng}
