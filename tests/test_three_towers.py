"""The tutorial of tasks/README.md: a third modality registered, trained, decoded and scored with
no code of its own (gin/experiments/tiny_sensor_captioning.gin, `zipper predict`/`score`)."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

from zipper_jax import batch, decoding, infer, main, partitioning, train
from zipper_jax.run_dir import RunDir

from conftest import built_once

EXPERIMENT = '--gin_file=gin/experiments/tiny_sensor_captioning.gin'


@pytest.fixture(scope='module')
def sensor_run(corpus, tmp_path_factory, worker_id):
  """The tutorial's run, trained as a user would (one device) once per test session; its
  parameters at step 0 and at the end, on that device."""
  import tasks.sensor_captions as sensor_captions  # registered over the toy corpus of `corpus`

  def train(model_dir):
    bindings = [f"--gin.MODEL_DIR='{model_dir}'", '--gin.Partitioner.num_devices=1',
                f"--gin.TEXT_VOCAB_SIZE={sensor_captions.VOCABULARIES['text'].vocab_size}",
                '--gin.train.peak_flops=1e12', '--gin.train.log_every=20']
    assert main.main(['train', EXPERIMENT, *bindings]) == 0

  run = RunDir(built_once(tmp_path_factory, worker_id, 'sensor_run', train))
  fresh = nn.unbox(jax.jit(run.model.init)(
      jax.random.key(0), batch.dummy_batch(run.model.towers, run.task_feature_lengths, 16)))
  return run, fresh, run.load_params(sharding=SingleDeviceSharding(jax.devices()[0]))


def test_three_tower_zipper_learns_sensor_captioning(sensor_run):
  run, fresh, trained = sensor_run
  one_device = partitioning.Partitioner((1, 1, 1), num_devices=1)
  evaluate = lambda params: train.evaluate(run.model, params, 'sensor_captioning',
                                           run.task_feature_lengths, 16, max_batches=2,
                                           partitioner=one_device)
  before, after = evaluate(fresh), evaluate(trained)
  assert after['eval/text/loss'] < before['eval/text/loss'] - 1.0
  assert after['eval/sensor/weight'] == 0 and after['eval/text/weight'] > 0


def test_predict_batch_decodes_any_tower_as_recomputation_does(sensor_run):
  run, _, params = sensor_run
  model, lengths = run.model, run.task_feature_lengths
  examples, rows = next(infer.task_batches(model, 'sensor_captioning', 'validation', lengths, 4))
  assert rows == 4
  prompt = batch.decoding_prompt(examples, model.towers, 'text')
  assert prompt['text'].shape == (4, 1) and np.all(np.asarray(prompt['speech'].segment_ids) == 0)
  cached = model.predict_batch(params, examples, output='text', eos_id=None, max_new_tokens=6)
  recomputed, _ = decoding.greedy_without_cache(model.decoder('text'), params, prompt,
                                                max_new_tokens=6)
  np.testing.assert_array_equal(cached.tokens, recomputed)
  beams = model.predict_batch(params, examples, output='text', eos_id=1, beam_size=3)
  sampled = model.predict_batch(params, examples, output='text', eos_id=1, temperature=1.0,
                                rng=jax.random.key(1))
  assert beams.tokens.shape == sampled.tokens.shape == (4, lengths['text'])
  # At most a power of two >= half a token per token of the longest prompt (codes and start).
  longest = sum(np.count_nonzero(x.segment_ids, axis=1) for x in prompt.values()).max()
  capped = model.predict_batch(params, examples, output='text', eos_id=None,
                               max_length_ratio=0.5)
  cap = 1 << (int(np.ceil(0.5 * longest)) - 1).bit_length()
  assert capped.tokens.shape == (4, min(cap, lengths['text'])) and cap < lengths['text']
  # Any tower from any others: the sensor codes from the text alone.
  codes = model.predict_batch(params, examples, output='sensor', prompt_towers=['text'],
                              eos_id=None, max_new_tokens=3)
  assert codes.tokens.shape == (4, 3)


def test_score_batch_is_the_loss_the_trainer_reports(sensor_run):
  run, fresh, trained = sensor_run
  model, lengths = run.model, run.task_feature_lengths
  one_device = partitioning.Partitioner((1, 1, 1), num_devices=1)
  for params in (fresh, trained):
    scores = infer.score_task(model, params, 'sensor_captioning', 'validation', lengths=lengths,
                              batch_size=16, max_examples=16)
    metrics = train.evaluate(model, params, 'sensor_captioning', lengths, 16, max_batches=1,
                             partitioner=one_device)
    assert len(scores) == 16 and max(scores) < 0
    np.testing.assert_allclose(-sum(scores), metrics['eval/loss'] * metrics['eval/text/weight'],
                               rtol=1e-4)


def test_the_tutorial_run_is_decoded_and_scored_from_the_command_line(sensor_run, capsys):
  run, _, _ = sensor_run
  common = ['--model_dir', run.path, '--module', 'tasks.sensor_captions', '--task',
            'sensor_captioning', '--split', 'validation', '--examples', '3']
  capsys.readouterr()
  assert main.main(['predict', *common, '--output', 'text', '--beam_size', '2']) == 0
  predictions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(predictions) == 3
  for example in predictions:
    assert set(example['prompt']) == {'sensor'} and example['target'].split()
    assert isinstance(example['prediction'], str)
  assert main.main(['score', *common]) == 0
  scores = [json.loads(line)['log_likelihood'] for line in capsys.readouterr().out.splitlines()]
  assert len(scores) == 3 and all(s < 0 for s in scores)
