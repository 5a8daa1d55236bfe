"""Placeholder main job until the end-to-end demo lands: zip two tiny towers and train them.

The task is a synthetic ASR: a "speech" sequence of random units, then its "transcript" (each
unit mapped to a text token). The text tower is frozen; the speech tower, the cross-attention and
the input projections train. The loss on text tokens falls only through cross-attention.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zipper_jax import decoding, freezing, losses
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import Edge, Zipper, ZipperConfig
from zipper_jax.zipping import zip_params

TEXT_VOCAB, SPEECH_VOCAB, BOS = 32, 48, 1


def synthetic_asr_batch(rng: np.random.Generator, batch: int, length: int):
  """Speech units u in [2, SPEECH_VOCAB), transcript BOS + (u % (TEXT_VOCAB - 2) + 2)."""
  speech = rng.integers(2, SPEECH_VOCAB, (batch, length))
  text = np.concatenate([np.full((batch, 1), BOS), speech % (TEXT_VOCAB - 2) + 2], axis=1)
  inputs = {'speech': TowerInput.from_tokens(speech),
            'text': TowerInput.from_tokens(text[:, :-1], offset=length)}
  targets = {'speech': jnp.asarray(speech), 'text': jnp.asarray(text[:, 1:])}
  weights = {'speech': jnp.zeros(speech.shape), 'text': jnp.ones(speech.shape)}
  return inputs, targets, weights


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--length', type=int, default=8)
  args = parser.parse_args(argv)

  tower = lambda vocab: TowerConfig(vocab_size=vocab, num_layers=2, embed_dim=64, num_heads=4,
                                    head_dim=16, mlp_dim=128)
  config = ZipperConfig({'text': tower(TEXT_VOCAB), 'speech': tower(SPEECH_VOCAB)},
                        (Edge('text', 'speech', 1), Edge('speech', 'text', 1)))
  model = Zipper(config)
  data_rng = np.random.default_rng(0)
  inputs, _, _ = synthetic_asr_batch(data_rng, args.batch, args.length)
  params = zip_params(model, jax.random.key(0), inputs, {})
  trainable, frozen = freezing.partition(params, freezing.trainable_mask(params, ['text']))
  optimizer = optax.adamw(3e-3)
  opt_state = optimizer.init(trainable)

  @jax.jit
  def train_step(trainable, opt_state, inputs, targets, weights):
    def loss_fn(trainable):
      logits, _ = model.apply({'params': freezing.combine(trainable, frozen)}, inputs)
      return losses.zipper_loss(logits, targets, weights)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, metrics

  start = time.time()
  for step in range(1, args.steps + 1):
    trainable, opt_state, metrics = train_step(
        trainable, opt_state, *synthetic_asr_batch(data_rng, args.batch, args.length))
    if step % 100 == 0 or step == 1:
      print(f'step {step:4d}  text loss {float(metrics["text/loss"]):.3f}  '
            f'({time.time() - start:.1f}s)', flush=True)

  params = freezing.combine(trainable, frozen)
  inputs, targets, _ = synthetic_asr_batch(data_rng, 4, args.length)
  prompt = {'speech': inputs['speech'], 'text': TowerInput.from_tokens(
      jnp.full((4, 1), BOS), offset=args.length)}
  out = decoding.generate(decoding.Decoder.for_zipper(model, 'text'), params, prompt,
                          max_new_tokens=args.length, eos_id=None)
  accuracy = float(jnp.mean(out.tokens == targets['text']))
  print(f'greedy transcripts of 4 new examples: {accuracy:.0%} of tokens right')


if __name__ == '__main__':
  main()
