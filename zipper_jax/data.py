"""The input pipeline: a seqio task or mixture as an endless stream of host-local batches."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import seqio
import tensorflow as tf

from zipper_jax.feature_converter import ZipperFeatureConverter


HOST_SHARDING = ('examples', 'global_batch')


def mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered seqio task or mixture `name`, or an error that says how to register it."""
  if name not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
    raise ValueError(f'no seqio task or mixture is named {name!r}: import the module that '
                     'registers it first, e.g. with a line `import tasks.speech_text` in a gin '
                     'file')
  return seqio.get_mixture_or_task(name)


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                towers: Sequence[str], batch_size: int, *, split: str = 'train',
                shuffle: bool = True, seed: int | None = 0, pack: bool = False,
                num_epochs: int | None = None, skip_batches: int = 0,
                host_sharding: str = 'examples', truncate: bool = False,
                drop_remainder: bool = True) -> tf.data.Dataset:
  """This process's share, `batch_size // process_count` rows, of each global batch.

  `host_sharding='examples'` (seqio's `ShardInfo`): each process reads and preprocesses only
  its own shard of the examples, the way to scale. `'global_batch'`: each process reads the
  whole stream and keeps its slice of every global batch, so the global batches are the same
  for any number of processes (a run can move to another topology mid-way and see the same
  data), at the price of preprocessing everything everywhere.
  Order is a function of `seed` alone, so skipping the batches a checkpoint had consumed resumes
  the stream exactly where it stopped. `drop_remainder=False` keeps a last, smaller batch
  (inference over a whole split).
  """
  processes, index = jax.process_count(), jax.process_index()
  if batch_size % processes:
    raise ValueError(f'batch_size={batch_size} does not divide over {processes} processes')
  if host_sharding not in HOST_SHARDING:
    raise ValueError(f'host_sharding={host_sharding!r}; expected one of {HOST_SHARDING}')
  missing = set(towers) - set(task_feature_lengths)
  if missing:
    raise ValueError(f'TASK_FEATURE_LENGTHS={dict(task_feature_lengths)} lacks towers '
                     f'{sorted(missing)}')
  mixture_or_task(mixture_or_task_name)
  by_examples = host_sharding == 'examples'
  ds = seqio.get_dataset(
      mixture_or_task_name, {t: task_feature_lengths[t] for t in towers}, dataset_split=split,
      shuffle=shuffle, num_epochs=num_epochs, seed=seed,
      shard_info=seqio.ShardInfo(index, processes) if by_examples else None,
      feature_converter=ZipperFeatureConverter(towers, pack=pack, truncate=truncate))
  local = batch_size // processes
  if by_examples:
    ds = ds.batch(local, drop_remainder=drop_remainder)
  else:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda batch: {k: v[index * local:(index + 1) * local] for k, v in batch.items()})
  return ds.skip(skip_batches).prefetch(tf.data.AUTOTUNE)
