import dataclasses
import logging
import os
import re
import shutil
import time
import warnings

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import seqio

import synthetic_tasks  # noqa: F401 -- registers the toy tasks
from conftest import SPEECH, TEXT, TWO_WAY
from synthetic_tasks import LENGTHS, SPEECH_VOCAB, TEXT_VOCAB
from zipper_jax import (batch, checkpoints, data, models, optimizer, partitioning, train,
                        vocabularies)
from zipper_jax.errors import UserError
from zipper_jax.zipper import ZipperConfig

TOWERS = {'text': dataclasses.replace(TEXT, vocab_size=TEXT_VOCAB),
          'speech': dataclasses.replace(SPEECH, vocab_size=SPEECH_VOCAB)}
ZIPPER = models.ZipperModel(ZipperConfig(TOWERS, TWO_WAY))
ONE_DEVICE = partitioning.Partitioner((1, 1, 1), num_devices=1)  # tests of sharding: test_scale_out


def run(model_dir, steps, model=ZIPPER, task='toy_asr', **overrides):
  kwargs = dict(model_dir=str(model_dir), mixture_or_task_name=task,
                task_feature_lengths=LENGTHS, train_steps=steps, batch_size=16,
                optimizer=optimizer.adamw, learning_rate=optax.constant_schedule(3e-3), log_every=5,
                checkpoint_every=5, peak_flops=1e12,
                partitioner=ONE_DEVICE)
  return train.train(model, **(kwargs | overrides))


@pytest.fixture(scope='module')
def ten_steps(tmp_path_factory):
  """A run trained for 10 steps (checkpoints 5 and 10) and its state; tests take copies."""
  model_dir = tmp_path_factory.mktemp('ten_steps')
  return model_dir, run(model_dir, 10)


def copy_of(ten_steps, tmp_path):
  return shutil.copytree(ten_steps[0], tmp_path / 'run')


def fresh_params(model, seed=0):
  example = batch.dummy_batch(model.towers, LENGTHS, 16)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), example))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_training_learns_and_leaves_the_frozen_tower_alone(tmp_path):
  before = train.evaluate(ZIPPER, fresh_params(ZIPPER), 'toy_asr', LENGTHS, 16, max_batches=4,
                          partitioner=ONE_DEVICE)
  state = run(tmp_path, 40, frozen_towers=['text'])
  after = train.evaluate(ZIPPER, state.all_params, 'toy_asr', LENGTHS, 16, max_batches=4,
                         partitioner=ONE_DEVICE)
  assert after['eval/text/loss'] < before['eval/text/loss'] - 0.5
  assert_trees_equal(state.all_params['text'], fresh_params(ZIPPER)['text'])
  assert not jax.tree.leaves(state.params['text'])  # no trainable copy, so no optimizer state
  assert np.any(state.all_params['speech']['blocks']['mlp']['up']['kernel'] !=
                fresh_params(ZIPPER)['speech']['blocks']['mlp']['up']['kernel'])


def test_a_logged_window_includes_waiting_for_its_steps(tmp_path, monkeypatch, capsys):
  """Steps are dispatched ahead of the device; the time their metrics take to arrive (here 2 s
  for steps 3-4) belongs to their window, not the next."""
  check_finite = train._check_finite

  def slow_device(pending, *args):
    if pending and pending[-1][0] == 4:
      time.sleep(2)
    return check_finite(pending, *args)

  monkeypatch.setattr(train, '_check_finite', slow_device)
  run(tmp_path, 6, log_every=2, checkpoint_every=100)
  rates = [float(r) for r in re.findall(r'steps_per_sec (\S+)', capsys.readouterr().out)]
  assert len(rates) == 3
  assert rates[1] < 1 < rates[2]  # two steps in over 2 s; then two unhindered ones


@pytest.mark.parametrize('position', ['saved', 'lost'])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, position, ten_steps):
  _, straight = ten_steps
  run(tmp_path / 'resumed', 5)
  if position == 'lost':  # e.g. saved by another number of processes: read through instead
    shutil.rmtree(tmp_path / 'resumed' / 'data_state')
  reads, read = [], data.DataIterator.__next__
  monkeypatch.setattr(data.DataIterator, '__next__', lambda self: reads.append(1) or read(self))
  resumed = run(tmp_path / 'resumed', 10)
  assert int(resumed.step) == 10
  # Steps 6-10, and the batch that finds the run done; through the first five only if lost.
  assert len(reads) == 6 + 5 * (position == 'lost')
  assert_trees_equal(resumed.all_params, straight.all_params)
  assert_trees_equal(resumed.opt_state, straight.opt_state)


@pytest.mark.parametrize('damage', ['a folder removed', 'a file corrupt'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage,
                                                               ten_steps):
  model_dir = copy_of(ten_steps, tmp_path)
  step = model_dir / 'checkpoints' / '10'
  if damage == 'a folder removed':
    shutil.rmtree(step / 'params')
  else:
    for manifest in (step / 'params').rglob('manifest.ocdbt'):
      manifest.write_bytes(b'garbage')
  with caplog.at_level(logging.WARNING):
    state = run(model_dir, 5)  # nothing left to do once step 5 is restored
  assert int(state.step) == 5
  assert 'checkpoint step 10' in caplog.text and 'damaged' in caplog.text


def test_a_checkpoint_of_other_shapes_stops_the_run_instead_of_starting_over(tmp_path,
                                                                            ten_steps):
  model_dir = copy_of(ten_steps, tmp_path)
  wider = models.ZipperModel(ZipperConfig(
      {**TOWERS, 'speech': dataclasses.replace(TOWERS['speech'], mlp_dim=56)}, TWO_WAY))
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'the params of checkpoint step 10 does not match the model: .*'
                           r'mlp/down/kernel: shape \(3, 48, 24\), model expects \(3, 56, 24\)'):
    run(model_dir, 15, model=wider)
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['10', '5']


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_one_before(tmp_path, monkeypatch):
  save = checkpoints.ocp.JsonCheckpointHandler.async_save
  calls = []

  async def full_disk(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the metadata of the second save, step 10
      raise OSError(28, 'No space left on device')
    return await save(self, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.JsonCheckpointHandler, 'async_save', full_disk)
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'writing checkpoint step 10 .* No space left on device.*\[5\]'):
    run(tmp_path, 15)
  monkeypatch.undo()
  assert checkpoints.latest_step(str(tmp_path)) == 5
  assert int(run(tmp_path, 15).step) == 15  # resumed from step 5 once there is room


@pytest.mark.parametrize('task, feature, id_pattern, size', [
    ('toy_asr_ids_too_large', 'text', r'(6[4-9]|[7-9]\d|1[0-2]\d)', 64),
    ('toy_asr_ids_negative', 'speech', r'-\d+', 48)])
def test_a_token_id_outside_its_vocabulary_stops_the_run_before_any_step(
    tmp_path, task, feature, id_pattern, size):
  with pytest.raises(UserError, match=rf"task '{task}', feature '{feature}': token id "
                                      rf"{id_pattern} is outside the {feature} tower's "
                                      rf'vocabulary of {size} ids'):
    run(tmp_path, 5, task=task)
  assert checkpoints.latest_step(str(tmp_path)) is None
  with pytest.raises(UserError, match=rf"task '{task}', feature '{feature}'"):
    train.evaluate(ZIPPER, fresh_params(ZIPPER), task, LENGTHS, 16, partitioner=ONE_DEVICE)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, ten_steps):
  model_dir = copy_of(ten_steps, tmp_path)
  with pytest.raises(FloatingPointError, match=r'at step \d+.*last good checkpoint is step 10'):
    run(model_dir, 30, learning_rate=optax.constant_schedule(1e30))
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['10', '5']


def test_gradient_accumulation_matches_one_batch(tmp_path):
  one = run(tmp_path / 'one', 3, checkpoint_every=100)
  four = run(tmp_path / 'four', 3, checkpoint_every=100, num_microbatches=4)
  # Summation order differs (one pass against four), and Adam scales small gradients up.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-5),
               one.all_params, four.all_params)


def test_zipping_pretrained_tower_checkpoints(tmp_path):
  text = models.TowerModel(TOWERS['text'], 'text')
  speech = models.TowerModel(TOWERS['speech'], 'speech')
  run(tmp_path / 'text', 5, model=text, task='toy_text_lm')
  run(tmp_path / 'speech', 5, model=speech, task='toy_speech_lm', seed=1)
  state = run(tmp_path / 'zipped', 0, init_checkpoints={'text': str(tmp_path / 'text'),
                                                        'speech': str(tmp_path / 'speech')})
  batch = next(data.get_dataset('toy_asr', LENGTHS, ZIPPER.towers, 16).as_numpy_iterator())
  zipped = ZIPPER.apply(state.all_params, ZIPPER.inputs(batch))
  for tower in (text, speech):
    pretrained = checkpoints.load_params(str(tmp_path / tower.name))
    alone = tower.apply(pretrained, ZIPPER.inputs(batch))[tower.name]
    np.testing.assert_allclose(zipped[tower.name], alone, atol=1e-5)
    assert_trees_equal(state.all_params[tower.name], pretrained)


def test_a_mismatched_tower_checkpoint_names_the_parameter(tmp_path):
  wide = models.TowerModel(dataclasses.replace(TOWERS['text'], mlp_dim=80), 'text')
  run(tmp_path / 'text', 5, model=wide, task='toy_text_lm')
  with pytest.raises(ValueError, match=r'blocks/mlp/gate/kernel: shape \(2, 32, 80\)'):
    run(tmp_path / 'zipped', 0, init_checkpoints={'text': str(tmp_path / 'text')})


def test_single_decoder_grows_a_pretrained_text_checkpoint_and_trains(tmp_path):
  # Vocabularies padded to a multiple of 8: the grown one is wider than the text tower's.
  config = dataclasses.replace(TOWERS['text'], vocab_multiple=8)
  text = models.TowerModel(config, 'text')
  single = models.SingleDecoderModel(config, SPEECH_VOCAB)
  run(tmp_path / 'text', 5, model=text, task='toy_text_lm')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    start = run(tmp_path / 'single', 0, model=single, task='toy_asr_single',
                init_checkpoints={'text': str(tmp_path / 'text')})
  # The grown embeddings are new buffers: the pre-trained ones are not offered for reuse.
  assert not [w for w in caught if 'donated buffers' in str(w.message)]
  batch = next(data.get_dataset('toy_text_lm', LENGTHS, ('text',), 16).as_numpy_iterator())
  pretrained = checkpoints.load_params(str(tmp_path / 'text'))
  inputs = text.inputs(batch)
  grown = single.module.apply({'params': start.all_params}, inputs['text'])[0]
  np.testing.assert_allclose(grown[..., :TEXT_VOCAB],
                             text.apply(pretrained, inputs)['text'][..., :TEXT_VOCAB], atol=1e-5)

  calls = []
  hook = lambda step, model, params: calls.append(step) or {'hook/step': step}
  state = run(tmp_path / 'single', 10, model=single, task='toy_asr_single',
              init_checkpoints={'text': str(tmp_path / 'text')}, eval_every=5,
              eval_batches=2, eval_hooks=[hook])
  assert calls == [5, 10]
  assert np.all(np.isfinite(state.all_params['embedder']['embedding']))


def test_a_run_keeps_its_vocabularies(tmp_path):
  run(tmp_path, 0)
  loaded = vocabularies.load_vocabularies(str(tmp_path))
  assert loaded == {'speech': seqio.PassThroughVocabulary(SPEECH_VOCAB),
                    'text': seqio.PassThroughVocabulary(TEXT_VOCAB)}
