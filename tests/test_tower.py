import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TEXT, init, random_tokens
from zipper_jax import freezing, models, stacks, steps
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower


@pytest.fixture(scope='module')
def tower():
  model = Tower(TEXT)
  return model, init(model, TowerInput.from_tokens(random_tokens(0, (2, 6), TEXT.vocab_size)))


def forward(tower, tokens, **kwargs):
  """Logits of the real vocabulary (the padded ids' are a constant)."""
  model, params = tower
  logits = model.apply({'params': params}, TowerInput.from_tokens(tokens, **kwargs))[0]
  return logits[..., :TEXT.vocab_size]


def test_parameters_are_llama_shaped(tower):
  _, params = tower
  assert params['embedder']['embedding'].shape == (128, 32)  # vocabulary 64, padded to 128
  # Blocks are one stack, `layers` first.
  assert params['blocks']['attention']['query']['kernel'].shape == (2, 32, 4, 8)
  assert params['blocks']['attention']['key']['kernel'].shape == (2, 32, 2, 8)  # grouped K/V
  assert params['blocks']['mlp']['gate']['kernel'].shape == (2, 32, 64)
  assert params['lm_head']['kernel'].shape == (32, 128)
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
  logits = logits[..., :TEXT.vocab_size]
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
  loss = lambda c: jax.jit(jax.value_and_grad(
      lambda p: jnp.sin(Tower(c).apply({'params': p}, inputs)[0]).sum()))(params)
  (value, grads), (reference, reference_grads) = loss(scanned), loss(unrolled)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  # Two programs, fused differently: float32 round-off apart (gradients up to ~20 differ by up
  # to 2e-5), where a layer out of place would differ by whole units.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grads, reference_grads)
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
  loss = lambda model: jax.jit(jax.grad(
      lambda p: model.apply({'params': p}, inputs)[0].mean()))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               loss(remat), loss(Tower(TEXT)))
  with pytest.raises(ValueError, match='remat'):
    dataclasses.replace(TEXT, remat='some')


def lm_batch(tokens: np.ndarray) -> dict:
  """A text tower's unpacked training batch of `tokens` rows."""
  rows, length = tokens.shape[0], tokens.shape[1] - 1
  return {'text_input_tokens': tokens[:, :-1], 'text_target_tokens': tokens[:, 1:],
          'text_loss_weights': np.ones((rows, length), np.float32),
          'text_positions': np.tile(np.arange(length), (rows, 1)),
          'text_segment_ids': np.ones((rows, length), np.int32),
          'text_interleaved_positions': np.tile(np.arange(length), (rows, 1))}


def train_steps(model: models.Model, params, batch, count: int, tx=optax.adam(1e-2)):
  """(parameters after `count` steps on `batch`, the loss each step reported)."""
  trainable, frozen = freezing.partition(params, freezing.trainable_mask(params, ()))
  state = steps.TrainState(jnp.zeros((), jnp.int32), trainable, frozen, tx.init(trainable))
  step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx))
  reported = []
  for _ in range(count):
    state, metrics = step(state, batch)
    reported.append(float(metrics['loss']))
  return state.all_params, reported


def train_step_metrics(model: models.Model, params, batch, step: int, dropout_seed: int = 0):
  """What one training step at `step` (from `params`) reports."""
  tx = optax.sgd(0.0)
  trainable, frozen = freezing.partition(params, freezing.trainable_mask(params, ()))
  state = steps.TrainState(jnp.asarray(step, jnp.int32), trainable, frozen, tx.init(trainable))
  return steps.train_step(state, batch, model=model, optimizer=tx, dropout_seed=dropout_seed)[1]


def test_dropout_acts_in_training_steps_only():
  """Each step (and seed) draws its own masks, the same ones when redone; evaluation is the
  model without dropout."""
  batch = lm_batch(np.asarray(random_tokens(7, (4, 9), TEXT.vocab_size)))
  plain = models.TowerModel(TEXT)
  dropped = models.TowerModel(dataclasses.replace(TEXT, dropout_rate=0.3))
  params = nn.unbox(plain.init(jax.random.key(0), batch))
  jax.tree.map(np.testing.assert_array_equal, steps.eval_step(params, batch, model=dropped),
               steps.eval_step(params, batch, model=plain))
  loss = lambda model, step, seed=0: float(
      train_step_metrics(model, params, batch, step, seed)['loss'])
  reference = loss(plain, 0)
  assert loss(plain, 1) == reference  # no dropout: nothing random
  draws = [loss(dropped, 0), loss(dropped, 1), loss(dropped, 0, seed=1)]
  assert len(set(draws + [reference])) == 4, draws
  assert loss(dropped, 0) == draws[0]
  with pytest.raises(ValueError, match='dropout_rate'):
    dataclasses.replace(TEXT, dropout_rate=1.0)


def test_recomputed_blocks_drop_what_the_forward_pass_dropped():
  """With `remat`, the backward pass recomputes each block under the forward pass's masks: the
  same gradients as keeping the activations, and not those of another draw or of no dropout."""
  inputs = TowerInput.from_tokens(random_tokens(7, (2, 6), TEXT.vocab_size))
  params = init(Tower(TEXT), inputs)
  grads = lambda remat, rate=0.5, seed=3: jax.jit(jax.grad(lambda p: jnp.sin(
      Tower(dataclasses.replace(TEXT, dropout_rate=rate, remat=remat)).apply(
          {'params': p}, inputs, rngs={'dropout': jax.random.key(seed)})[0][
              ..., :TEXT.vocab_size]).sum()))(params)['blocks']
  kept = grads('none')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads('full'), kept)
  for other in (grads('none', seed=4), grads('none', rate=0.0)):
    assert not np.allclose(other['mlp']['down']['kernel'], kept['mlp']['down']['kernel'])


def test_label_smoothing_changes_the_update_not_the_reported_loss():
  batch = lm_batch(np.asarray(random_tokens(7, (4, 9), TEXT.vocab_size)))
  plain, smoothed = models.TowerModel(TEXT), models.TowerModel(TEXT, label_smoothing=0.1)
  params = nn.unbox(plain.init(jax.random.key(0), batch))
  (plain_params, plain_loss), (params, loss) = (train_steps(plain, params, batch, 1),
                                                train_steps(smoothed, params, batch, 1))
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  assert not np.allclose(params['lm_head']['kernel'], plain_params['lm_head']['kernel'])


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_a_padded_vocabulary_trains_and_decodes_as_the_unpadded_one(label_smoothing):
  """Vocabulary 100 padded to 128 rows: same losses, gradients and updates on the real rows,
  same greedy tokens; sampling hot never emits a padded id."""
  exact = dataclasses.replace(TEXT, vocab_size=100, vocab_multiple=1)
  padded = dataclasses.replace(exact, vocab_multiple=128)
  assert (exact.padded_vocab_size, padded.padded_vocab_size) == (100, 128)
  models_ = {name: models.TowerModel(config, label_smoothing=label_smoothing)
             for name, config in (('exact', exact), ('padded', padded))}
  tokens = np.asarray(random_tokens(7, (4, 9), 100))
  batch = lm_batch(tokens)
  params = {'exact': nn.unbox(models_['exact'].init(jax.random.key(0), batch))}
  # The padded rows hold noise: masking, not zeros, is what keeps them out.
  noise = lambda shape: jax.random.normal(jax.random.key(1), shape)
  params['padded'] = dict(params['exact'],
                          embedder={'embedding': jnp.concatenate(
                              [params['exact']['embedder']['embedding'], noise((28, 32))])},
                          lm_head={'kernel': jnp.concatenate(
                              [params['exact']['lm_head']['kernel'], noise((32, 28))], axis=1)})
  real = lambda p: dict(p, embedder={'embedding': p['embedder']['embedding'][:100]},
                        lm_head={'kernel': p['lm_head']['kernel'][:, :100]})
  losses_ = {}
  for name, model in models_.items():
    params[name], losses_[name] = train_steps(model, params[name], batch, 3)
  np.testing.assert_allclose(losses_['padded'], losses_['exact'], rtol=1e-6)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-4),  # Adam steps are 1e-2
               real(params['padded']), params['exact'])

  prompt = {'text': TowerInput.from_tokens(tokens[:, :3])}
  greedy = {name: model.predict(params[name], prompt, output='text', eos_id=None,
                                max_new_tokens=6).tokens for name, model in models_.items()}
  np.testing.assert_array_equal(greedy['padded'], greedy['exact'])
  sampled = models_['padded'].predict(params['padded'], prompt, output='text', eos_id=None,
                                      max_new_tokens=64, temperature=100.0,
                                      rng=jax.random.key(2)).tokens
  assert int(sampled.max()) < 100 and len(np.unique(np.asarray(sampled))) > 50
