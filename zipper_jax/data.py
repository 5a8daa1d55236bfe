"""The input pipeline: a seqio task or mixture as an endless stream of host-local batches."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from zipper_jax.feature_converter import MODEL_SUFFIXES, ZipperFeatureConverter


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                towers: Sequence[str], batch_size: int, *, split: str = 'train',
                shuffle: bool = True, seed: int | None = 0, pack: bool = False,
                num_epochs: int | None = None, skip_batches: int = 0) -> tf.data.Dataset:
  """This process's batches of `batch_size // process_count` examples.

  Order is a function of `seed` alone, so skipping the batches a checkpoint had consumed resumes
  the stream exactly where it stopped.
  """
  if batch_size % jax.process_count():
    raise ValueError(f'batch_size={batch_size} does not divide over '
                     f'{jax.process_count()} processes')
  missing = set(towers) - set(task_feature_lengths)
  if missing:
    raise ValueError(f'TASK_FEATURE_LENGTHS={dict(task_feature_lengths)} lacks towers '
                     f'{sorted(missing)}')
  ds = seqio.get_dataset(
      mixture_or_task_name, {t: task_feature_lengths[t] for t in towers}, dataset_split=split,
      shuffle=shuffle, num_epochs=num_epochs, seed=seed,
      shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()),
      feature_converter=ZipperFeatureConverter(towers, pack=pack))
  ds = ds.batch(batch_size // jax.process_count(), drop_remainder=True)
  return ds.skip(skip_batches).prefetch(tf.data.AUTOTUNE)


def dummy_batch(towers: Sequence[str], task_feature_lengths: Mapping[str, int],
                batch_size: int) -> dict:
  """A batch of the converted shapes and dtypes, for initialisation and compilation."""
  return {f'{t}_{s}': np.zeros((batch_size, task_feature_lengths[t]),
                               np.float32 if s == 'loss_weights' else np.int32)
          for t in towers for s in MODEL_SUFFIXES}
