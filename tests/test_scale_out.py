"""One model, many topologies: meshes, processes, and checkpoints that move between them."""
import dataclasses
import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import synthetic_tasks  # noqa: F401 -- registers the toy tasks
from conftest import SPEECH, TEXT, TWO_WAY, asr_inputs, zipper_error
from synthetic_tasks import LENGTHS, SPEECH_VOCAB, TEXT_VOCAB
from zipper_jax import batch, checkpoints, decoding, main, models, optimizer, partitioning, train
from zipper_jax.layers import KVCache
from zipper_jax.zipper import ZipperConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Head counts and widths divisible by a 4-way tensor axis.
TOWERS = {'text': dataclasses.replace(TEXT, vocab_size=TEXT_VOCAB, num_kv_heads=4),
          'speech': dataclasses.replace(SPEECH, vocab_size=SPEECH_VOCAB, num_heads=4,
                                        head_dim=6)}
MODEL = models.ZipperModel(ZipperConfig(TOWERS, TWO_WAY))


def run(model_dir, steps, partitioner, **overrides):
  return train.train(
      MODEL, model_dir=str(model_dir), mixture_or_task_name='toy_asr', task_feature_lengths=LENGTHS,
      train_steps=steps, batch_size=16, optimizer=optimizer.adamw,
      learning_rate=optax.constant_schedule(3e-3), partitioner=partitioner, log_every=100,
      checkpoint_every=100, peak_flops=1e12, **overrides)


def test_every_mesh_trains_the_same_model_and_its_checkpoint_restores_onto_others(tmp_path):
  # Every axis at once: batches split over `data`, weights over `fsdp` and `tensor`.
  meshes = {'one device': partitioning.Partitioner((1, 1, 1), num_devices=1),
            'data 2 x fsdp 2 x tensor 2': partitioning.Partitioner((2, 2, 2))}
  folder = lambda name: tmp_path / name.replace(' ', '_')
  params = {name: jax.device_get(run(folder(name), 3, p).all_params)
            for name, p in meshes.items()}
  for name in meshes:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
                 params[name], params['one device'])

  for partitioner in (partitioning.Partitioner((1, 4, 1), num_devices=4),
                      partitioning.Partitioner((1, 1, 1), num_devices=1)):
    restored = run(folder('data 2 x fsdp 2 x tensor 2'), 3, partitioner).all_params  # no step
    leaf = restored['text']['blocks']['mlp']['gate']['kernel']
    assert len(leaf.sharding.device_set) == partitioner.mesh.size
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored),
                 params['data 2 x fsdp 2 x tensor 2'])


def test_layout_is_printed_for_a_pod_without_one(capsys):
  main.main(['layout', '--gin_file=gin/models/zipper_s.gin',
             '--gin_file=gin/runs/zipper_frozen_text.gin',
             "--gin.TASK_FEATURE_LENGTHS={'speech': 256, 'text': 64}",
             '--gin.Partitioner.mesh_shape=(1, -1, 4)', '--gin.print_layout.num_devices=256'])
  table = capsys.readouterr().out
  assert table.startswith('mesh: data=1, fsdp=64, tensor=4 (256 devices)')
  row = next(line for line in table.splitlines() if line.startswith('text/blocks/mlp/gate'))
  # [12, 768, 2048] float32 split 1 x 64 x 4: 12 x 12 x 512 x 4 bytes on each device.
  assert "('layers', 'embed', 'mlp')" in row and "(None, 'fsdp', 'tensor')" in row
  assert row.endswith('294,912')


def test_decode_caches_follow_the_rules_and_decoding_is_unchanged(two_way_zipper):
  model, params = two_way_zipper
  partitioner = partitioning.Partitioner((-1, 1, 1))
  with partitioner.context():
    cache = jax.jit(lambda: KVCache.empty(3, 8, 16, 2, 8, jnp.float32))()
  assert {s.data.shape for s in cache.keys.addressable_shards} == {(3, 1, 16, 2, 8)}
  assert {s.data.shape for s in cache.positions.addressable_shards} == {(1, 16)}

  decoder = decoding.Decoder.for_zipper(model, 'text')
  prompt = lambda: asr_inputs(batch=8, text_length=1)
  alone = decoding.generate(decoder, params, prompt(), max_new_tokens=4, eos_id=None)
  with partitioner.context():
    sharded = decoding.generate(decoder, params, prompt(), max_new_tokens=4, eos_id=None)
  np.testing.assert_array_equal(sharded.tokens, alone.tokens)


def test_a_parameter_that_does_not_divide_its_axis_is_refused_by_name(tmp_path, capsys):
  """SmolLM2-like heads (9 query, 3 key/value) over a 2-way tensor axis."""
  towers = dict(TOWERS, text=dataclasses.replace(TOWERS['text'], num_heads=9, num_kv_heads=3))
  model = models.ZipperModel(ZipperConfig(towers, TWO_WAY))
  with pytest.raises(partitioning.LayoutError) as error:
    train.train(model, model_dir=str(tmp_path / 'run'), mixture_or_task_name='toy_asr',
                task_feature_lengths=LENGTHS, train_steps=1, batch_size=16,
                optimizer=optimizer.adamw, learning_rate=1e-3,
                partitioner=partitioning.Partitioner((1, 4, 2)))
  assert ("text/blocks/attention/query/kernel dimension 2 ('heads') of size 9 does not divide "
          "over mesh axes tensor=2 (2 devices)") in str(error.value)
  assert "text/blocks/attention/key/kernel dimension 2 ('kv_heads') of size 3" in str(error.value)
  assert not (tmp_path / 'run').exists()  # refused before anything is written

  line = zipper_error(capsys, [
      'layout', '--gin_file=gin/models/zipper_s.gin', '--gin_file=gin/runs/zipper_frozen_text.gin',
      "--gin.TASK_FEATURE_LENGTHS={'speech': 256, 'text': 64}",
      '--gin.Partitioner.mesh_shape=(1, -1, 5)', '--gin.print_layout.num_devices=40'])
  assert "text/blocks/attention/query/kernel dimension 2 ('heads') of size 12 does not divide " \
         "over mesh axes tensor=5 (5 devices)" in line
  assert "text/blocks/mlp/gate/kernel dimension 1 ('embed') of size 768 does not divide over " \
         "mesh axes fsdp=8 (8 devices)" not in line  # 768 = 8 x 96: only what fails is named


def test_init_checkpoints_restore_straight_into_the_sharded_layout(tmp_path):
  """FSDP over 8 devices: each holds 1/8 of every weight split along `embed`, restored so."""
  tower = models.TowerModel(TOWERS['text'])
  example = batch.dummy_batch(tower.towers, {'text': 4}, 1)
  pretrained = nn.unbox(jax.jit(tower.init)(jax.random.key(3), example))
  checkpoints.save_params(str(tmp_path / 'text'), pretrained, {'step': 0})
  partitioner = partitioning.Partitioner((1, 8, 1))
  state = run(tmp_path / 'zipper', 0, partitioner,
              init_checkpoints={'text': str(tmp_path / 'text')})
  text = state.all_params['text']
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(text), pretrained)
  layout = partitioning.mesh_axes_of(jax.eval_shape(tower.init, jax.random.key(0), example))
  for name, shape, _, _, mesh_axes in layout:
    leaf = functools.reduce(lambda node, key: node[key], name.split('/'), text)
    expected = tuple(n // 8 if 'fsdp' in axes else n for n, axes in zip(shape, mesh_axes))
    assert {s.data.shape for s in leaf.addressable_shards} == {expected}, name
  assert text['blocks']['mlp']['gate']['kernel'].addressable_shards[0].data.shape == (2, 4, 64)


def test_a_sharded_restore_never_holds_a_whole_copy():
  """Peak host memory of the restore (8 fake devices, all on this host): within 1.5x the shards'
  total plus one tensor; replicated, it is several copies."""
  measure = lambda *flags: json.loads(subprocess.run(
      [sys.executable, os.path.join(REPO, 'tests', 'restore_memory.py'), *flags],
      env=dict(os.environ, MALLOC_ARENA_MAX='1'), check=True, capture_output=True, text=True,
      timeout=300).stdout.splitlines()[-1])
  sharded, replicated = measure('--sharded'), measure()
  print(f'restore peak: sharded {sharded["peak_bytes"] / 1e6:.0f} MB, replicated '
        f'{replicated["peak_bytes"] / 1e6:.0f} MB, tower {sharded["tower_bytes"] / 1e6:.0f} MB')
  assert sharded['gate_shard_shapes'] == [[4, 64, 2048]]  # [layers, embed / 8, mlp]
  assert sharded['peak_bytes'] <= 1.5 * sharded['tower_bytes'] + sharded['largest_tensor_bytes']
  assert replicated['peak_bytes'] > 3 * sharded['tower_bytes']
