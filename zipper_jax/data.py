"""The input pipeline: a seqio task or mixture as an endless stream of host-local batches, and
its position, saved with each checkpoint."""
from __future__ import annotations

import logging
import os
import shutil
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from zipper_jax.errors import UserError
from zipper_jax.feature_converter import ZipperFeatureConverter


HOST_SHARDING = ('examples', 'global_batch')


def mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered seqio task or mixture `name`, or an error that says how to register it."""
  if name not in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names():
    raise UserError(f'no seqio task or mixture is named {name!r}: import the module that '
                    'registers it first, e.g. with a line `import tasks.speech_text` in a gin '
                    'file')
  return seqio.get_mixture_or_task(name)


def describe(mixture_or_task_name: str) -> str:
  """'task NAME', or 'mixture NAME (of tasks A, B)': where examples come from, for errors."""
  found = mixture_or_task(mixture_or_task_name)
  if isinstance(found, seqio.Mixture):
    return (f'mixture {mixture_or_task_name!r} (of tasks '
            f'{", ".join(sorted(t.name for t in found.tasks))})')
  return f'task {mixture_or_task_name!r}'


def check_token_ids(batch: Mapping[str, np.ndarray], vocab_sizes: Mapping[str, int],
                    source: str) -> None:
  """Stops at a batch holding a token id outside its tower's vocabulary, before any step runs on
  it: JAX's gathers clamp such ids silently, so the run would train on garbage or turn NaN."""
  for tower, size in vocab_sizes.items():
    ids = batch[f'{tower}_target_tokens']
    bad = (ids < 0) | (ids >= size)
    if bad.any():
      raise UserError(f'{source}, feature {tower!r}: token id {int(ids[bad][0])} is outside '
                      f'the {tower} tower\'s vocabulary of {size} ids')


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                towers: Sequence[str], batch_size: int, *, split: str = 'train',
                shuffle: bool = True, seed: int | None = 0, pack: bool = False,
                num_epochs: int | None = None, host_sharding: str = 'examples',
                truncate: bool = False, drop_remainder: bool = True) -> tf.data.Dataset:
  """This process's share, `batch_size // process_count` rows, of each global batch.

  `host_sharding='examples'` (seqio's `ShardInfo`): each process reads and preprocesses only
  its own shard of the examples, the way to scale. `'global_batch'`: each process reads the
  whole stream and keeps its slice of every global batch, so the global batches are the same
  for any number of processes (a run can move to another topology mid-way and see the same
  data), at the price of preprocessing everything everywhere.
  Order is a function of `seed` alone (`DataIterator` saves where a run stands in it).
  `drop_remainder=False` keeps a last, smaller batch (inference over a whole split).
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
  return ds.prefetch(tf.data.AUTOTUNE)


class DataIterator:
  """Host-local numpy batches of a dataset, and their position saved beside each checkpoint
  (`directory/<step>/process_<i>_of_<n>`, tf.data's own iterator checkpoint, as t5x keeps it):
  a resumed run reads on from there at once, where skipping to it would read everything before.

  A pipeline that tf.data cannot save (a Python function inside it) or a position saved by
  another number of processes falls back to reading through the consumed batches.
  """

  def __init__(self, dataset: tf.data.Dataset, directory: str):
    self.directory = directory
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self._savable = True

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, str(step),
                        f'process_{jax.process_index()}_of_{jax.process_count()}')

  def save(self, step: int) -> None:
    """Saves the position after `step`'s batch; call it before the step's checkpoint."""
    if not self._savable:
      return
    try:
      self._checkpoint.write(self._path(step))
    except (tf.errors.OpError, ValueError, TypeError) as e:
      logging.warning('the input pipeline cannot be saved (%s): a resumed run reads through the '
                      'batches it consumed instead', e)
      self._savable = False

  def restore(self, step: int, consumed_batches: int) -> None:
    """Puts the stream where it stood after `step` (`consumed_batches` read)."""
    path = self._path(step)
    if os.path.exists(f'{path}.index'):
      self._checkpoint.read(path).assert_consumed()
      return
    logging.warning('no saved input position for step %d in %s: reading through %d batches',
                    step, self.directory, consumed_batches)
    for _ in range(consumed_batches):
      next(self)

  def keep_only(self, steps: Iterable[int]) -> None:
    """Removes this process's saved positions of steps other than `steps`."""
    keep = {str(s) for s in steps}
    for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
      if name not in keep and name.isdigit():
        step_dir = os.path.join(self.directory, name)
        for path in os.listdir(step_dir):
          if path.startswith(os.path.basename(self._path(0)) + '.'):
            os.remove(os.path.join(step_dir, path))
        if jax.process_index() == 0 and not os.listdir(step_dir):
          shutil.rmtree(step_dir, ignore_errors=True)
