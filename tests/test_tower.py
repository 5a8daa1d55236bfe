import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TEXT, init, random_tokens
from zipper_jax import stacks
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower


@pytest.fixture(scope='module')
def tower():
  model = Tower(TEXT)
  return model, init(model, TowerInput.from_tokens(random_tokens(0, (2, 6), TEXT.vocab_size)))


def forward(tower, tokens, **kwargs):
  model, params = tower
  return model.apply({'params': params}, TowerInput.from_tokens(tokens, **kwargs))[0]


def test_parameters_are_llama_shaped(tower):
  _, params = tower
  assert params['embedder']['embedding'].shape == (64, 32)
  # Blocks are one stack, `layers` first.
  assert params['blocks']['attention']['query']['kernel'].shape == (2, 32, 4, 8)
  assert params['blocks']['attention']['key']['kernel'].shape == (2, 32, 2, 8)  # grouped K/V
  assert params['blocks']['mlp']['gate']['kernel'].shape == (2, 32, 64)
  assert params['lm_head']['kernel'].shape == (32, 64)
  assert set(params) == {'embedder', 'blocks', 'final_norm', 'lm_head'}


def test_self_attention_is_causal(tower):
  tokens = random_tokens(1, (2, 8), TEXT.vocab_size)
  changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % TEXT.vocab_size)
  before, after = forward(tower, tokens), forward(tower, changed)
  np.testing.assert_array_equal(before[:, :5], after[:, :5])
  assert np.abs(before[:, 5:] - after[:, 5:]).min() > 0


def test_right_padding_leaves_valid_tokens_alone(tower):
  tokens = random_tokens(2, (1, 5), TEXT.vocab_size)
  padded = jnp.concatenate([tokens, random_tokens(3, (1, 3), TEXT.vocab_size)], axis=1)
  np.testing.assert_allclose(forward(tower, padded, lengths=[5])[:, :5], forward(tower, tokens),
                             atol=1e-5)


def test_packed_segments_do_not_see_each_other(tower):
  model, params = tower
  a, b = random_tokens(4, (1, 3), TEXT.vocab_size), random_tokens(5, (1, 4), TEXT.vocab_size)
  packed = TowerInput(tokens=jnp.concatenate([a, b], 1),
                      positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3]]),
                      segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2]]),
                      interleaved_positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3]]))
  logits, _ = model.apply({'params': params}, packed)
  np.testing.assert_allclose(logits[:, :3], forward(tower, a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 3:], forward(tower, b), atol=1e-5)


def test_tied_embeddings_have_no_head():
  config = dataclasses.replace(TEXT, tie_embeddings=True)
  params = init(Tower(config), TowerInput.from_tokens(jnp.ones((1, 3), jnp.int32)))
  assert 'lm_head' not in params


@pytest.mark.parametrize('bad', [dict(num_heads=4, num_kv_heads=3), dict(head_dim=7)])
def test_bad_shapes_are_named(bad):
  with pytest.raises(ValueError, match='num_kv_heads|head_dim'):
    dataclasses.replace(TEXT, **bad)


def test_bfloat16_compute_keeps_float32_params():
  config = dataclasses.replace(TEXT, dtype=jnp.bfloat16)
  inputs = TowerInput.from_tokens(random_tokens(6, (2, 5), TEXT.vocab_size))
  params = init(Tower(config), inputs)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits, _ = Tower(config).apply({'params': params}, inputs)
  reference, _ = Tower(TEXT).apply({'params': params}, inputs)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.15)


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_scanned_blocks_equal_unrolled_ones(remat):
  """The same parameters, run by one scan or unrolled: the same logits and gradients, and only
  the scanned program loops."""
  inputs = TowerInput.from_tokens(random_tokens(8, (2, 6), TEXT.vocab_size))
  scanned = dataclasses.replace(TEXT, num_layers=3, remat=remat)
  unrolled = dataclasses.replace(scanned, scan_layers=False)
  params = init(Tower(scanned), inputs)
  assert jax.tree.structure(init(Tower(unrolled), inputs)) == jax.tree.structure(params)
  loss = lambda c: jax.value_and_grad(
      lambda p: jnp.sin(Tower(c).apply({'params': p}, inputs)[0]).sum())(params)
  (value, grads), (reference, reference_grads) = loss(scanned), loss(unrolled)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, reference_grads)
  program = lambda c: jax.jit(lambda p: Tower(c).apply({'params': p}, inputs)).lower(
      params).as_text()
  assert program(scanned).count('stablehlo.while') == 1
  assert program(unrolled).count('stablehlo.while') == 0


@pytest.mark.parametrize('policy', sorted(set(stacks.REMAT_POLICIES) - {'none'}))
def test_rematerialisation_keeps_parameters_and_gradients(policy):
  inputs = TowerInput.from_tokens(random_tokens(7, (2, 6), TEXT.vocab_size))
  params = init(Tower(TEXT), inputs)
  remat = Tower(dataclasses.replace(TEXT, remat=policy))
  assert jax.tree.structure(init(remat, inputs)) == jax.tree.structure(params)
  loss = lambda model: jax.grad(lambda p: model.apply({'params': p}, inputs)[0].mean())(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               loss(remat), loss(Tower(TEXT)))
  with pytest.raises(ValueError, match='remat'):
    dataclasses.replace(TEXT, remat='some')
