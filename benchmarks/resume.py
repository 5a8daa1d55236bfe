"""Seconds from start to the first step of a run resumed at step 100 and at step 20,000.

  python benchmarks/resume.py     # prints JSON

The input pipeline's position is saved with each checkpoint (`data.DataIterator`), so resuming
costs the same at any step: target `ratio` <= 1.5. `reading_through_seconds` is the fallback
for a position that was not saved (the stream read from its start up to the step), for scale.
A tiny tower on an in-memory LM task, trained to each step first: what is timed is the resumed
run's start (restore, positioning, one step and its save), the same work at both steps.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import optax
import seqio
import tensorflow as tf

from zipper_jax import models, optimizer, partitioning, train
from zipper_jax.tower import TowerConfig

TASK, VOCAB, LENGTH, BATCH = 'resume_benchmark_lm', 64, 32, 4
MODEL = models.TowerModel(TowerConfig(vocab_size=VOCAB, num_layers=1, embed_dim=32, num_heads=2,
                                      head_dim=16, mlp_dim=64), 'text')


def register_task() -> None:
  tokens = np.random.default_rng(0).integers(1, VOCAB, (4096, LENGTH), dtype=np.int32)
  seqio.TaskRegistry.add(TASK, source=seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
          {'text': tokens}), splits=('train',)),
      preprocessors=[], output_features={
          'text': seqio.Feature(seqio.PassThroughVocabulary(VOCAB), add_eos=False)})


def train_to(model_dir: str, steps: int) -> float:
  """Seconds `train` takes to run (or resume) in `model_dir` up to `steps`, saving there."""
  start = time.perf_counter()
  train.train(MODEL, model_dir=model_dir, mixture_or_task_name=TASK,
              task_feature_lengths={'text': LENGTH}, train_steps=steps, batch_size=BATCH,
              optimizer=optimizer.adamw, learning_rate=optax.constant_schedule(1e-3),
              partitioner=partitioning.Partitioner((1, 1, 1), num_devices=1),
              checkpoint_every=10**9, log_every=10**9, peak_flops=1e12)
  return time.perf_counter() - start


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', default='100,20000', help='the early and the late step')
  args = parser.parse_args(argv)
  early, late = map(int, args.steps.split(','))
  register_task()
  directory = tempfile.mkdtemp(prefix='zipper_bench_resume_')
  try:
    runs = {step: os.path.join(directory, f'run_{step}') for step in (early, late)}
    trained = {step: train_to(runs[step], step) for step in (early, late)}
    seconds = {step: train_to(runs[step], step + 1) for step in (early, late)}
    shutil.rmtree(os.path.join(runs[late], 'data_state'))
    checkpoints_dir = os.path.join(runs[late], 'checkpoints')
    shutil.rmtree(os.path.join(checkpoints_dir, str(late + 1)))  # back to `late`, position lost
    reading_through = train_to(runs[late], late + 1)
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  results = {'training_seconds': {str(step): s for step, s in trained.items()},
             'resume_seconds': {str(step): s for step, s in seconds.items()},
             'ratio': seconds[late] / seconds[early], 'target_ratio': 1.5,
             'reading_through_seconds': {str(late): reading_through}}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
