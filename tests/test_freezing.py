import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import SPEECH, TEXT, TWO_WAY, asr_inputs, init, open_gates
from zipper_jax import freezing, losses, zipping
from zipper_jax.tower import Tower
from zipper_jax.zipper import Zipper, ZipperConfig

CONFIGS = {'text': TEXT, 'speech': SPEECH}


def asr_loss(model, params, inputs):
  logits, _ = model.apply({'params': params}, inputs)
  targets = {name: jnp.roll(x.tokens, -1, axis=1) for name, x in inputs.items()}
  weights = {'text': jnp.ones_like(targets['text']), 'speech': jnp.zeros_like(targets['speech'])}
  return losses.zipper_loss(logits, targets, weights)[0]


@pytest.fixture(scope='module')
def zipper():
  model = Zipper(ZipperConfig(CONFIGS, TWO_WAY))
  return model, open_gates(init(model, asr_inputs()))


def test_frozen_tower_gets_no_gradient_and_no_update(zipper):
  model, params = zipper
  inputs = asr_inputs()
  mask = freezing.trainable_mask(params, ['text'])
  trainable, frozen = freezing.partition(params, mask)
  loss = lambda t: asr_loss(model, freezing.combine(t, frozen), inputs)

  grads = jax.jit(jax.grad(loss))(trainable)
  assert all(leaf is None for leaf in jax.tree.leaves(grads['text'], is_leaf=lambda x: x is None))
  # Differentiating everything shows the text tower would have had gradients.
  full = jax.jit(jax.grad(lambda p: asr_loss(model, p, inputs)))(params)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(full['text'])) > 0

  optimizer = optax.adamw(1e-2)
  state = optimizer.init(trainable)
  adam_state = state[0]
  assert not jax.tree.leaves(adam_state.mu['text']) and not jax.tree.leaves(adam_state.nu['text'])
  updates, state = optimizer.update(grads, state, trainable)
  new = freezing.combine(optax.apply_updates(trainable, updates), frozen)

  jax.tree.map(np.testing.assert_array_equal, new['text'], params['text'])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new['speech'], params['speech'])
  assert any(jax.tree.leaves(changed))


def test_freezing_an_unknown_tower_is_named(zipper):
  with pytest.raises(KeyError, match='vision'):
    freezing.trainable_mask(zipper[1], ['vision'])


def test_zipping_pretrained_towers_keeps_them_exact():
  inputs = asr_inputs()
  pretrained = {name: init(Tower(config), inputs[name], seed=7 + i)
                for i, (name, config) in enumerate(CONFIGS.items())}
  model = Zipper(ZipperConfig(CONFIGS, TWO_WAY))
  params = zipping.zip_params(model, jax.random.key(0), inputs, pretrained)
  jax.tree.map(np.testing.assert_array_equal, params['text'], pretrained['text'])
  zipped, _ = model.apply({'params': params}, inputs)
  for name, config in CONFIGS.items():
    alone, _ = Tower(config).apply({'params': pretrained[name]}, inputs[name])
    np.testing.assert_allclose(zipped[name], alone, atol=1e-6)


def test_zipping_a_mismatched_tower_names_the_parameter():
  inputs = asr_inputs()
  wider = init(Tower(dataclasses.replace(TEXT, mlp_dim=80)), inputs['text'])
  model = Zipper(ZipperConfig(CONFIGS, TWO_WAY))
  with pytest.raises(ValueError, match=r'blocks/mlp/gate/kernel: shape \(2, 32, 80\), '
                                       r'model expects \(2, 32, 64\)'):
    zipping.zip_params(model, jax.random.key(0), inputs, {'text': wider})
  with pytest.raises(KeyError, match='vision'):
    zipping.zip_params(model, jax.random.key(0), inputs, {'vision': wider})
