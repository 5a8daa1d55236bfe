"""The tutorial of tasks/README.md: a third modality registered and trained, end to end."""
import flax.linen as nn
import jax
import optax

from zipper_jax import batch, models, optimizer, partitioning, train
from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import Edge, ZipperConfig

LENGTHS = {'text': 24, 'speech': 4, 'sensor': 20}


def tower(vocab_size):
  return TowerConfig(vocab_size=vocab_size, num_layers=2, embed_dim=32, num_heads=4, head_dim=8,
                     mlp_dim=64)


def test_three_tower_zipper_learns_sensor_captioning(corpus, tmp_path):
  import tasks.sensor_captions as sensor_captions
  sizes = {name: v.vocab_size for name, v in sensor_captions.VOCABULARIES.items()}
  model = models.ZipperModel(ZipperConfig(
      {name: tower(size) for name, size in sizes.items()},
      edges=(Edge('text', 'sensor'), Edge('text', 'speech', 2), Edge('speech', 'text'))))
  fresh = nn.unbox(jax.jit(model.init)(jax.random.key(0),
                                       batch.dummy_batch(model.towers, LENGTHS, 16)))
  one_device = partitioning.Partitioner((1, 1, 1), num_devices=1)
  evaluate = lambda params: train.evaluate(model, params, 'sensor_captioning', LENGTHS, 16,
                                           max_batches=2, partitioner=one_device)
  before = evaluate(fresh)
  state = train.train(model, model_dir=str(tmp_path), mixture_or_task_name='sensor_captioning',
                      task_feature_lengths=LENGTHS, train_steps=60, batch_size=16,
                      optimizer=optimizer.adamw, learning_rate=optax.constant_schedule(1e-2),
                      frozen_towers=['speech'], log_every=20, checkpoint_every=60,
                      peak_flops=1e12,
                      partitioner=one_device)
  after = evaluate(state.all_params)
  assert after['eval/text/loss'] < before['eval/text/loss'] - 1.0
  assert after['eval/sensor/weight'] == 0 and after['eval/text/weight'] > 0
