import dataclasses
import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import SPEECH, TEXT, TWO_WAY, asr_inputs, init, open_gates, random_tokens
from zipper_jax import batch, freezing, losses, models, steps, wiring
from zipper_jax.attention import Visibility
from zipper_jax.inputs import TowerInput
from zipper_jax.layers import Attention
from zipper_jax.tower import Tower
from zipper_jax.zipper import Edge, Zipper, ZipperConfig, aligned_block


def towers_alone(params, inputs, configs):
  return {name: Tower(configs[name]).apply({'params': params[name]}, x)[0]
          for name, x in inputs.items()}


@pytest.mark.parametrize('projection', ['none', 'residual'])
def test_fresh_zipper_equals_its_towers_until_gates_open(projection):
  configs = {'text': TEXT, 'speech': SPEECH}
  model = Zipper(ZipperConfig(configs, TWO_WAY, input_projection=projection))
  inputs = asr_inputs()
  params = init(model, inputs)
  alone = towers_alone(params, inputs, configs)
  zipped, _ = model.apply({'params': params}, inputs)
  for name in configs:
    np.testing.assert_allclose(zipped[name], alone[name], atol=1e-6, rtol=0)
  opened, _ = model.apply({'params': open_gates(params)}, inputs)
  assert np.abs(opened['text'] - alone['text']).max() > 1e-2
  assert np.abs(opened['speech'] - alone['speech']).max() > 1e-2


def test_paper_input_projection_changes_the_towers():
  configs = {'text': TEXT, 'speech': SPEECH}
  model = Zipper(ZipperConfig(configs, TWO_WAY, input_projection='paper'))
  inputs = asr_inputs()
  params = init(model, inputs)
  zipped, _ = model.apply({'params': params}, inputs)
  assert np.abs(zipped['text'] - towers_alone(params, inputs, configs)['text']).max() > 1e-2


def changed_at(inputs, tower, column):
  x = inputs[tower]
  return {**inputs, tower: x.replace(tokens=x.tokens.at[:, column].add(1))}


def assert_causal(model, params, inputs, tower, column):
  """Changing `tower`'s token at `column` changes no other tower's logits at earlier-or-equal
  interleaved positions, and does change some later ones (the edge is really there)."""
  before, _ = model.apply({'params': params}, inputs)
  after, _ = model.apply({'params': params}, changed_at(inputs, tower, column))
  p = inputs[tower].interleaved_positions[:, column][:, None]
  for other in inputs:
    if other == tower:
      continue
    position = inputs[other].interleaved_positions
    diff = np.abs(np.asarray(before[other] - after[other])).max(-1)
    assert diff[np.asarray(position <= p)].max(initial=0) == 0, (tower, other)
    assert diff[np.asarray(position > p)].max() > 1e-4, (tower, other)


def test_asr_layout_is_causal(two_way_zipper):
  model, params = two_way_zipper
  inputs = asr_inputs(text_length=6)
  # Changing a speech token reaches text (all later); changing text never reaches speech.
  assert_causal(model, params, inputs, 'speech', 3)
  before, _ = model.apply({'params': params}, inputs)
  after, _ = model.apply({'params': params}, changed_at(inputs, 'text', 0))
  np.testing.assert_array_equal(before['speech'], after['speech'])


@pytest.mark.parametrize('zipper, sees_time', [('two_way_zipper', False),
                                               ('clocked_zipper', True)])
def test_only_a_clock_makes_cross_attention_see_when_a_token_was(request, zipper, sees_time):
  """Delaying all of the speech (its own positions + 5: its self-attention, being relative, is
  unchanged) moves it against the text only on the shared clock."""
  model, params = request.getfixturevalue(zipper)
  inputs = asr_inputs(text_length=6)
  later = {**inputs, 'speech': inputs['speech'].replace(positions=inputs['speech'].positions + 5)}
  before, _ = model.apply({'params': params}, inputs)
  after, _ = model.apply({'params': params}, later)
  np.testing.assert_allclose(before['speech'], after['speech'], atol=1e-5)
  assert (np.abs(before['text'] - after['text']).max() > 1e-3) == sees_time


def test_a_clock_names_every_tower():
  with pytest.raises(ValueError, match='ticks per token for exactly the towers'):
    ZipperConfig({'text': TEXT, 'speech': SPEECH}, TWO_WAY, cross_attention_clock={'text': 3.0})


def test_three_alternating_segments_are_causal(two_way_zipper):
  """speech[0:4] text[0:3] speech[4:8]: interleaved positions 0-3, 4-6, 7-10."""
  model, params = two_way_zipper
  speech_order = jnp.asarray([[0, 1, 2, 3, 7, 8, 9, 10]] * 2)
  text_order = jnp.asarray([[4, 5, 6]] * 2)
  inputs = {
      'speech': TowerInput.from_tokens(random_tokens(0, (2, 8), SPEECH.vocab_size)).replace(
          interleaved_positions=speech_order),
      'text': TowerInput.from_tokens(random_tokens(1, (2, 3), TEXT.vocab_size)).replace(
          interleaved_positions=text_order)}
  for tower, column in [('speech', 2), ('text', 1), ('text', 2)]:
    assert_causal(model, params, inputs, tower, column)


@pytest.mark.parametrize('kernel', ['xla', 'chunked', 'splash'])
def test_query_that_sees_nothing_gets_exact_zero(kernel):
  layer = Attention(embed_dim=16, num_heads=2, num_kv_heads=2, head_dim=8, rope_theta=None,
                    kernel=kernel)
  x = jax.random.normal(jax.random.key(0), (1, 3, 16))
  keys = jax.random.normal(jax.random.key(1), (1, 4, 2, 8))
  # Query 0 precedes every key; query 1 sees key 0; query 2 is padding.
  visibility = Visibility(jnp.asarray([[0, 5, 9]]), jnp.asarray([[1, 1, 0]]),
                          jnp.asarray([[4, 6, 7, 8]]), jnp.asarray([[1, 1, 1, 1]]), strict=True)
  params = layer.init(jax.random.key(2), x, keys, keys, visibility, method=Attention.attend)
  out = layer.apply(params, x, keys, keys, visibility, method=Attention.attend)
  assert np.all(np.asarray(out[0, 0]) == 0) and np.all(np.asarray(out[0, 2]) == 0)
  assert np.abs(out[0, 1]).max() > 0


def test_gradients_stay_finite_where_queries_see_nothing(two_way_zipper):
  model, params = two_way_zipper
  inputs = asr_inputs(speech_lengths=[7, 4])  # padding in speech; speech sees no text at all
  def loss(params):
    logits, _ = model.apply({'params': params}, inputs)
    return sum(jnp.sum(l) for l in logits.values())
  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('interval', [1, 2, 3])
@pytest.mark.parametrize('two_way', [False, True])
def test_towers_of_other_shapes_zip(interval, two_way):
  """A 6-block speech tower (other width and heads, one K/V head) reads a 2-block text tower."""
  deep = dataclasses.replace(SPEECH, num_layers=6, embed_dim=40, num_heads=5, num_kv_heads=1)
  edges = (Edge('speech', 'text', interval),) + ((Edge('text', 'speech', 1),) if two_way else ())
  model = Zipper(ZipperConfig({'text': TEXT, 'speech': deep}, edges))
  inputs = asr_inputs()
  params = init(model, inputs)
  # One stack per edge: a layer after each `interval`-th block, d_text -> d_speech.
  layers = len(range(interval - 1, 6, interval))
  assert params['cross_speech_from_text']['key_projection']['kernel'].shape == (layers, 32, 40)
  assert ('cross_text_from_speech' in params) == two_way
  logits, _ = jax.jit(model.apply)({'params': open_gates(params)}, inputs)
  assert logits['text'].shape == (2, 5, TEXT.padded_vocab_size)
  assert logits['speech'].shape == (2, 7, SPEECH.padded_vocab_size)
  assert all(np.isfinite(np.asarray(l)).all() for l in logits.values())


def test_layers_align_by_relative_depth():
  assert [aligned_block(l, 4, 2) for l in range(4)] == [0, 0, 1, 1]
  assert [aligned_block(l, 2, 4) for l in range(2)] == [1, 3]
  assert [aligned_block(l, 2, 3) for l in range(2)] == [1, 2]  # 1.5 rounds up
  assert [aligned_block(l, 3, 2) for l in range(3)] == [0, 0, 1]
  assert [aligned_block(l, 6, 1) for l in range(6)] == [-1, -1, 0, 0, 0, 0]  # -1: the input


def test_three_towers_zip_and_run():
  image = dataclasses.replace(SPEECH, vocab_size=20, num_layers=2, embed_dim=16, num_heads=2)
  configs = {'text': TEXT, 'speech': SPEECH, 'image': image}
  edges = TWO_WAY + (Edge('text', 'image', 2), Edge('image', 'speech', 1))
  model = Zipper(ZipperConfig(configs, edges))
  inputs = asr_inputs()
  inputs['image'] = TowerInput.from_tokens(random_tokens(9, (2, 4), 20), offset=100)
  params = init(model, inputs)
  zipped, _ = model.apply({'params': params}, inputs)
  alone = towers_alone(params, inputs, configs)
  for name in configs:
    np.testing.assert_allclose(zipped[name], alone[name], atol=1e-6, rtol=0)
  opened, _ = model.apply({'params': open_gates(params)}, inputs)
  assert np.abs(opened['image'] - alone['image']).max() > 1e-2  # image reads speech
  # image tokens come last: they never reach speech or text
  changed, _ = model.apply({'params': open_gates(params)}, changed_at(inputs, 'image', 0))
  np.testing.assert_array_equal(changed['text'], opened['text'])
  assert np.abs(changed['image'] - opened['image']).max() > 0


@pytest.mark.parametrize('edges, message', [
    ((Edge('text', 'video'),), 'video'),
    ((Edge('text', 'text'),), 'two different towers'),
    ((Edge('text', 'speech'), Edge('text', 'speech', 2)), 'once'),
    ((Edge('text', 'speech', 0),), 'interval'),
])
def test_bad_edges_are_named(edges, message):
  with pytest.raises(ValueError, match=message):
    ZipperConfig({'text': TEXT, 'speech': SPEECH}, edges)


def test_unknown_input_projection_is_named():
  with pytest.raises(ValueError, match='input_projection'):
    ZipperConfig({'text': TEXT, 'speech': SPEECH}, TWO_WAY, input_projection='mlp')


def loss_inputs():
  """Logits, targets and weights of two towers; only three text tokens weighted."""
  rng = np.random.default_rng(0)
  logits = {'text': jnp.asarray(rng.normal(size=(2, 3, 5))),
            'speech': jnp.asarray(rng.normal(size=(2, 4, 7)))}
  targets = {'text': jnp.asarray(rng.integers(0, 5, (2, 3))),
             'speech': jnp.asarray(rng.integers(0, 7, (2, 4)))}
  weights = {'text': jnp.asarray([[1, 1, 0], [1, 0, 0]]), 'speech': jnp.zeros((2, 4))}
  return logits, targets, weights


def test_per_tower_losses_follow_token_weights():
  logits, targets, weights = loss_inputs()
  total, metrics = losses.zipper_loss(logits, targets, weights)
  log_probs = jax.nn.log_softmax(logits['text'])
  picked = -np.take_along_axis(np.asarray(log_probs), np.asarray(targets['text'])[..., None], -1)
  expected = (picked[0, 0] + picked[0, 1] + picked[1, 0]).item() / 3
  np.testing.assert_allclose(metrics['text/loss'], expected, rtol=1e-5)
  np.testing.assert_allclose(total, 3 * expected, rtol=1e-5)
  assert float(metrics['speech/weight']) == 0 and float(metrics['speech/loss']) == 0


def test_accuracy_counts_weighted_targets_with_the_largest_logit():
  logits, targets, weights = loss_inputs()
  _, metrics = losses.zipper_loss(logits, targets, weights)
  hits = np.argmax(logits['text'], axis=-1) == targets['text']
  expected = (hits * weights['text']).sum() / weights['text'].sum()
  np.testing.assert_allclose(metrics['text/accuracy'], expected, rtol=1e-6)
  # Each target made the argmax: every weighted token is a hit.
  hit_all = {**targets, 'text': jnp.argmax(logits['text'], axis=-1)}
  assert float(losses.zipper_loss(logits, hit_all, weights)[1]['text/accuracy']) == 1


def test_label_smoothing_changes_the_objective_not_the_reported_loss():
  logits, targets, weights = loss_inputs()
  total, metrics = losses.zipper_loss(logits, targets, weights, label_smoothing=0.1)
  plain_total, plain_metrics = losses.zipper_loss(logits, targets, weights)
  smoothed = optax.softmax_cross_entropy(
      logits['text'], optax.smooth_labels(jax.nn.one_hot(targets['text'], 5), 0.1))
  np.testing.assert_allclose(total, (smoothed * weights['text']).sum(), rtol=1e-5)
  assert abs(float(total) - float(plain_total)) > 1e-3
  jax.tree.map(np.testing.assert_array_equal, metrics, plain_metrics)
  # A padded vocabulary (padded ids at the lowest float, as `Tower.logits` leaves them) smooths
  # over the real ids only.
  lowest = jnp.finfo(jnp.float32).min
  padded = {name: jnp.concatenate([x, jnp.full((*x.shape[:-1], 3), lowest)], axis=-1)
            for name, x in logits.items()}
  padded_total, _ = losses.zipper_loss(padded, targets, weights, label_smoothing=0.1,
                                       vocab_sizes={'text': 5, 'speech': 7})
  np.testing.assert_allclose(padded_total, total, rtol=1e-5)


@pytest.mark.parametrize('dropped', ['text', 'speech'])
def test_dropout_follows_each_tower_and_needs_a_dropout_rng(two_way_zipper, dropped):
  """Dropout in one tower and the cross-attention it queries acts only with a 'dropout' rng
  (not in evaluation or decoding), and only where that tower's states reach: ASR's speech comes
  first, so the text's dropout leaves it exactly as it was, while the text reads the speech."""
  _, params = two_way_zipper
  inputs = asr_inputs()
  config = lambda rate: ZipperConfig(
      {'text': TEXT, 'speech': SPEECH} | {dropped: dataclasses.replace(
          {'text': TEXT, 'speech': SPEECH}[dropped], dropout_rate=rate)}, TWO_WAY)
  run = lambda rate, seed=None: Zipper(config(rate)).apply(
      {'params': params}, inputs,
      rngs=None if seed is None else {'dropout': jax.random.key(seed)})[0]
  reference = run(0.0)
  jax.tree.map(np.testing.assert_array_equal, run(0.5), reference)
  jax.tree.map(np.testing.assert_array_equal, run(0.0, seed=0), reference)
  masked, again, other = run(0.5, seed=0), run(0.5, seed=0), run(0.5, seed=1)
  jax.tree.map(np.testing.assert_array_equal, again, masked)
  assert not np.allclose(masked[dropped], other[dropped])
  assert not np.allclose(masked['text'], reference['text'])
  if dropped == 'text':
    np.testing.assert_array_equal(masked['speech'], reference['speech'])
  else:
    assert not np.allclose(masked['speech'], reference['speech'])


@pytest.mark.parametrize('interval', [1, 2])
def test_scanned_stages_equal_the_unrolled_zipper(interval):
  """Towers of 4 and 6 blocks, zipped both ways, run in 2 scanned stages of 2 + 3 blocks: the
  same logits and gradients as the same parameters unrolled."""
  text = dataclasses.replace(TEXT, num_layers=4)
  speech = dataclasses.replace(SPEECH, num_layers=6)
  edges = (Edge('text', 'speech', interval), Edge('speech', 'text', 1))
  scanned = ZipperConfig({'text': text, 'speech': speech}, edges)
  unrolled = ZipperConfig({name: dataclasses.replace(tower, scan_layers=False)
                           for name, tower in scanned.towers.items()}, edges)
  assert scanned.schedule.stages == 2 and scanned.schedule.blocks == {'text': 2, 'speech': 3}
  inputs = asr_inputs()
  params = open_gates(init(Zipper(scanned), inputs))
  loss = lambda config: jax.jit(jax.value_and_grad(lambda p: sum(
      jnp.sin(l).sum() for l in Zipper(config).apply({'params': p}, inputs)[0].values())))(params)
  (value, grads), (reference, reference_grads) = loss(scanned), loss(unrolled)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, reference_grads)



def test_stages_carry_what_the_next_stage_reads_from_before_its_first_block(monkeypatch):
  """10 text blocks zipped both ways with 4 speech blocks run in 2 stages of 5 + 2. Text block 0
  reads the speech input (block -1, less than half a block deep), so text block 5, the second
  stage's first, reads speech block 1, the first stage's last: carried across the scan, right
  after that block and before speech's own cross-attention. The same as one stage of all
  blocks, where every layer reads its key block directly."""
  towers = {'text': dataclasses.replace(TEXT, num_layers=10),
            'speech': dataclasses.replace(SPEECH, num_layers=4)}
  config = ZipperConfig(towers, TWO_WAY)
  assert config.schedule.stages == 2 and config.schedule.blocks == {'text': 5, 'speech': 2}
  assert [l.key_block for l in config.cross_layers(TWO_WAY[0])][:6] == [-1, 0, 0, 1, 1, 1]
  inputs = asr_inputs()
  params = open_gates(init(Zipper(config), inputs))
  loss = lambda p: sum(jnp.sin(l).sum()
                       for l in Zipper(config).apply({'params': p}, inputs)[0].values())
  value, grads = jax.jit(jax.value_and_grad(loss))(params)

  def one_stage(config):
    layers = {edge: config.cross_layers(edge) for edge in config.edges}
    return wiring.Schedule(1, config.depths, {edge: len(l) for edge, l in layers.items()},
                           wiring._order(config.depths, layers))  # pylint: disable=protected-access
  monkeypatch.setattr(ZipperConfig, 'schedule', property(one_stage))
  reference, reference_grads = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, reference_grads)


def test_the_schedule_repeats_as_often_as_the_wiring_does(caplog):
  depths = lambda text, speech: (('text', text), ('speech', speech))
  two_way = (Edge('text', 'speech', 1), Edge('speech', 'text', 1))
  # zipper_l: 24 text blocks, 12 speech blocks; each stage runs 2 + 1 and 3 cross-attention layers.
  stage = wiring.schedule(depths(24, 12), two_way)
  assert (stage.stages, stage.blocks) == (12, {'text': 2, 'speech': 1})
  assert sum(isinstance(step, wiring.CrossLayer) for step in stage.steps) == 3
  # SmolLM2-135M's 30 blocks with zipper_s's 12: 6 stages of 5 + 2 (text block 0 reads the input).
  assert wiring.schedule(depths(30, 12), two_way).blocks == {'text': 5, 'speech': 2}
  assert wiring.schedule(depths(4, 6), (Edge('speech', 'text', 4),)).stages == 1
  said = lambda: sum('does not repeat' in r.getMessage() for r in caplog.records)
  with caplog.at_level(logging.INFO):
    assert wiring.schedule(depths(5, 7), two_way).stages == 1
    assert said()
    caplog.clear()
    assert wiring.schedule(depths(5, 7), two_way).stages == 1
    assert not said()  # once per wiring


def test_towers_waiting_on_each_other_are_refused():
  """The alignment rule cannot wire a cycle (no wiring of up to 6 blocks does), so the check is
  fed one by hand: each tower's first cross-attention reads the other's second block."""
  a, b = Edge('a', 'b'), Edge('b', 'a')
  layers = {a: [wiring.CrossLayer(a, 0, 0, 1)], b: [wiring.CrossLayer(b, 0, 0, 1)]}
  with pytest.raises(ValueError, match=r"make towers \['a', 'b'\] wait on each other"):
    wiring._order({'a': 2, 'b': 2}, layers)  # pylint: disable=protected-access



def test_an_unrolled_schedule_keeps_its_train_step_temporaries_flat_in_depth():
  """A wiring that does not repeat (coprime depths) runs as one stage of every block. The train
  step's temporaries must grow with the parameters, not faster: a slice per layer adds a
  stack-sized padded copy of each layer's gradient (21 GB for the SmolLM2 Zipper at batch 1 when
  it ran unrolled)."""
  wide = dict(embed_dim=64, num_heads=2, head_dim=32, num_kv_heads=None, mlp_dim=256,
              vocab_size=256)
  lengths = {'speech': 32, 'text': 8}
  tx = optax.adamw(1e-3)

  def temporaries_per_argument_byte(text_layers, speech_layers):
    towers = {'text': dataclasses.replace(TEXT, num_layers=text_layers, **wide),
              'speech': dataclasses.replace(SPEECH, num_layers=speech_layers, **wide)}
    model = models.ZipperModel(ZipperConfig(towers, TWO_WAY))
    assert model.config.schedule.stages == 1
    example = batch.dummy_batch(model.towers, lengths, 2)
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), example)))
    trainable, frozen = freezing.partition(params, freezing.trainable_mask(params, ('text',)))
    state = steps.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, frozen,
                             jax.eval_shape(tx.init, trainable))
    step = jax.jit(functools.partial(steps.train_step, model=model, optimizer=tx),
                   donate_argnums=0)  # as the trainer does
    memory = step.lower(state, example).compile().memory_analysis()
    return memory.temp_size_in_bytes / memory.argument_size_in_bytes

  shallow, deep = temporaries_per_argument_byte(5, 2), temporaries_per_argument_byte(12, 5)
  assert deep < 1.15 * shallow, (shallow, deep)
