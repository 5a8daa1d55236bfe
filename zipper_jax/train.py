"""The training loop: the jitted step (`steps.py`) over a device mesh, orbax checkpoints,
metrics. `train` is what every gin run file configures; read it top to bottom."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from clu import metric_writers
from jax.experimental import multihost_utils

from zipper_jax import batch as batch_lib
from zipper_jax import checkpoints, data, flops, freezing, losses, partitioning
from zipper_jax.steps import TrainState, eval_step, train_step
from zipper_jax.models import Model
from zipper_jax.run_dir import RunDir


class _Preemption:
  """When to stop for a preempting scheduler (a TPU VM taken back, a pod evicted): its SIGTERM.

  One process: SIGTERM sets a flag, read after each step. Several: every host gets its own
  SIGTERM at its own moment, and a process that stopped alone would leave the others waiting in
  the step's collectives or the checkpoint's barrier. JAX's distributed runtime hears SIGTERM
  itself (so no Python handler is installed) and agrees on the step after the furthest any
  process has reached (`multihost_utils.reached_preemption_sync_point`): every process stops
  there, saves once together and exits.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint and stopping')
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; every process calls it after every step."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      logging.warning('preempted: every process saves step %d and stops', step)
      self.requested = True
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@gin.configurable
def train(model: Model = gin.REQUIRED, *,
          model_dir: str = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          optimizer: Callable[..., optax.GradientTransformation] = gin.REQUIRED,
          learning_rate: optax.Schedule | float = gin.REQUIRED,
          frozen_towers: Sequence[str] = (),
          init_checkpoints: Mapping[str, str] | None = None,
          pack: bool = False,
          host_sharding: str = 'examples',
          seed: int = 0,
          num_microbatches: int = 1,
          partitioner: partitioning.Partitioner = partitioning.Partitioner(),
          checkpoint_every: int = 1000,
          keep_checkpoints: int = 3,
          log_every: int = 50,
          eval_every: int = 0,
          eval_task: str | None = None,
          eval_split: str = 'validation',
          eval_batches: int = 10,
          eval_hooks: Sequence[Callable] = (),
          peak_flops: float | None = None) -> TrainState:
  """Trains `model` for `train_steps` steps, resuming from the newest checkpoint in `model_dir`.

  `init_checkpoints` ({tower: model_dir of its pre-training run}) starts a new run from
  pre-trained towers. `eval_hooks` are called as hook(step, model, params) -> {name: value}
  every `eval_every` steps, after the validation loss.
  """
  if batch_size % num_microbatches:
    raise ValueError(f'batch_size={batch_size} is not a multiple of '
                     f'num_microbatches={num_microbatches}')
  features = data.mixture_or_task(mixture_or_task_name).output_features
  rng = jax.random.key(seed)
  towers = model.towers
  example = batch_lib.dummy_batch(towers, task_feature_lengths, batch_size)

  layout = StepLayout.of(model, example, rng, optimizer(learning_rate=learning_rate),
                         frozen_towers, partitioner)
  tx, mask = layout.optimizer, layout.mask

  # A directory that holds another model's run is refused before anything is written.
  run = RunDir(model_dir)
  vocabularies = {t: features[t].vocabulary for t in towers}
  run.check_continues(model, vocabularies)
  if jax.process_index() == 0:
    run.write_config(gin.config_str(), vocabularies)
  checkpointer = run.checkpointer(keep_checkpoints)
  restored = checkpointer.restore_latest(partitioner.abstract(layout.params),
                                         partitioner.abstract(layout.opt_state))
  if restored is not None:
    step, params, opt_state, meta = restored
    batches_consumed = meta['batches_consumed']
    logging.info('resuming from step %d of %s', step, checkpointer.directory)
  else:
    step, batches_consumed = 0, 0
    params = _initial_params(model, rng, example, init_checkpoints, partitioner,
                             layout.param_shardings)
    opt_state = jax.jit(lambda p: tx.init(freezing.partition(p, mask)[0]),
                        out_shardings=layout.state_shardings.opt_state)(params)
  state = jax.device_put(TrainState(jnp.asarray(step, jnp.int32),
                                    *freezing.partition(params, mask), opt_state),
                         layout.state_shardings)
  batch_sharding = layout.batch_sharding

  with partitioner.context():
    step_fn = layout.jit_train_step(model, num_microbatches, dropout_seed=seed)
    source = data.describe(mixture_or_task_name)
    batches = data.DataIterator(
        data.get_dataset(mixture_or_task_name, task_feature_lengths, towers, batch_size,
                         seed=seed, pack=pack, host_sharding=host_sharding),
        os.path.join(model_dir, 'data_state'))
    if step:
      batches.restore(step, batches_consumed)
    writer = metric_writers.create_default_writer(
        model_dir, just_logging=jax.process_index() > 0, asynchronous=True)
    flops_per_step = batch_size * model.train_flops_per_example(task_feature_lengths,
                                                                 frozen_towers)
    peak = peak_flops or flops.measure_peak_flops()
    writer.write_hparams({'flops_per_step': flops_per_step, 'peak_flops': peak,
                          'batch_size': batch_size, 'train_steps': train_steps})
    preemption = _Preemption()
    progress = tqdm.tqdm(total=train_steps, initial=step, desc='train', dynamic_ncols=True,
                         disable=not sys.stderr.isatty() or jax.process_index() > 0)
    pending, last_good, tick = [], step, time.perf_counter()

    def save():
      """Checkpoints the current step, once every loss up to it is known to be finite."""
      _check_finite(pending, checkpointer, last_good)
      batches.save(step)
      checkpointer.save(step, state.all_params, state.opt_state,
                        {'step': step, 'batches_consumed': step})
      batches.keep_only({*checkpointer.manager.all_steps(), step})
      return step

    try:
      for batch in batches:
        if step >= train_steps:
          break
        data.check_token_ids(batch, model.vocab_sizes, source)
        batch = jax.make_array_from_process_local_data(batch_sharding, batch)
        state, metrics = step_fn(state, batch)
        step += 1
        pending.append((step, metrics))
        progress.update(1)
        if step % log_every == 0 or step == train_steps:
          # Steps run asynchronously: the window ends once its metrics are fetched, i.e. its
          # steps are done, not when the last one was dispatched.
          summary = _check_finite(pending, checkpointer, last_good)
          elapsed, tick = time.perf_counter() - tick, time.perf_counter()
          rate = len(pending) / elapsed
          pending = []
          summary |= {'steps_per_sec': rate,
                      'tokens_per_sec': rate * batch_size * sum(task_feature_lengths[t]
                                                                for t in towers),
                      'mfu': rate * flops_per_step / peak}
          writer.write_scalars(step, summary)
          progress.set_postfix(loss=f'{summary["loss"]:.3f}', mfu=f'{summary["mfu"]:.1%}')
          if progress.disable:
            _print_scalars(step, summary)
        if eval_every and step % eval_every == 0:
          results = evaluate(
              model, state.all_params, eval_task or mixture_or_task_name, task_feature_lengths,
              batch_size, split=eval_split, max_batches=eval_batches, seed=seed,
              partitioner=partitioner) | run_hooks(eval_hooks, step, model, state.all_params)
          writer.write_scalars(step, results)
          _print_scalars(step, results)
        stop = preemption.reached(step)
        if stop or step % checkpoint_every == 0 or step == train_steps:
          last_good = save()
        if stop:
          break
    finally:
      preemption.restore()
      progress.close()
      checkpointer.wait()
      checkpointer.close()
      writer.flush()
  return state


@dataclasses.dataclass(frozen=True)
class StepLayout:
  """Where every array of a training step lives, from the layers' logical axis names: what the
  trainer places and restores, and what `zipper compile` lowers on abstract shapes."""
  params: Any  # parameter shapes, boxed with their logical axes
  mask: Any  # True where a parameter trains
  optimizer: optax.GradientTransformation
  opt_state: Any  # optimizer state shapes, boxed
  param_shardings: Any
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  scalar_sharding: jax.sharding.NamedSharding

  @classmethod
  def of(cls, model: Model, example, rng, optimizer: optax.GradientTransformation,
         frozen_towers: Sequence[str], partitioner: partitioning.Partitioner) -> StepLayout:
    params = jax.eval_shape(model.init, rng, example)
    mask = freezing.trainable_mask(nn.unbox(params), frozen_towers)
    opt_state = jax.eval_shape(lambda: optimizer.init(freezing.partition(params, mask)[0]))
    param_shardings = partitioner.shardings(params)
    state_shardings = TrainState(partitioner.sharding(()),
                                 *freezing.partition(param_shardings, mask),
                                 partitioner.shardings(opt_state))
    return cls(params, mask, optimizer, opt_state, param_shardings, state_shardings,
               partitioner.batch_sharding, partitioner.sharding(()))

  def abstract_state(self) -> TrainState:
    """The step's state as shapes with shardings: nothing allocated."""
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32),
                        *freezing.partition(nn.unbox(self.params), self.mask),
                        nn.unbox(self.opt_state))
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                 sharding=sharding),
                        shapes, self.state_shardings)

  def jit_train_step(self, model: Model, num_microbatches: int = 1, dropout_seed: int = 0):
    """The jitted `train_step` (state donated), as the trainer runs it."""
    return jax.jit(functools.partial(train_step, model=model, optimizer=self.optimizer,
                                     num_microbatches=num_microbatches,
                                     dropout_seed=dropout_seed),
                   in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, self.scalar_sharding),
                   donate_argnums=0)


def _initial_params(model: Model, rng, example, init_checkpoints,
                    partitioner: partitioning.Partitioner, shardings):
  """Fresh parameters, with the towers named in `init_checkpoints` taken from their runs: each
  restored straight into its sharded layout (no device ever holds a whole tower), then zipped."""
  if not init_checkpoints:
    return partitioner.initialize(model.init, rng, example, shardings=shardings)[0]
  towers = {name: checkpoints.load_params(path, partitioner.abstract(model.pretrained_shapes(name)))
            for name, path in init_checkpoints.items()}
  # Donated: a restored tower's buffers become the Zipper's, not a second copy of them; all but
  # those of a shape no parameter has (a Single Decoder's grown vocabulary), which JAX would
  # warn that it could not use.
  zip_towers = lambda r, t: model.params_from_towers(r, example, t)
  shapes = {(x.shape, x.dtype) for x in jax.tree.leaves(jax.eval_shape(zip_towers, rng, towers))}
  reusable = jax.tree.map(lambda x: (x.shape, x.dtype) in shapes, towers)
  return jax.jit(lambda r, donated, kept: zip_towers(r, freezing.combine(donated, kept)),
                 out_shardings=shardings, donate_argnums=1)(
                     rng, *freezing.partition(towers, reusable))


def _check_finite(pending, checkpointer, last_good) -> dict:
  """Mean metrics of `pending` steps; stops the run at the first non-finite loss."""
  if not pending:
    return {}
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    if not np.isfinite(metrics['loss']):
      raise FloatingPointError(
          f'loss is {metrics["loss"]} at step {step}; stopping. The last good checkpoint is '
          f'step {last_good} in {checkpointer.directory}')
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _print_scalars(step: int, scalars: Mapping[str, float]) -> None:
  """One line on process 0, above the progress bar if there is one."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(f'step {step:6d}  ' + '  '.join(f'{k} {v:.4g}'
                                                    for k, v in sorted(scalars.items())))


def run_hooks(hooks, step, model, params) -> dict:
  results = {}
  for hook in hooks:
    results |= hook(step, model, params)
  return results


@functools.lru_cache(maxsize=None)
def _jitted_eval_step(model: Model, replicated):
  """One compiled evaluation step per model and mesh, however often `evaluate` runs."""
  return jax.jit(functools.partial(eval_step, model=model), out_shardings=replicated)


def evaluate(model: Model, params, task: str, task_feature_lengths: Mapping[str, int],
             batch_size: int, *, split: str = 'validation', max_batches: int | None = None,
             seed: int = 0, partitioner: partitioning.Partitioner | None = None) -> dict:
  """Token-weighted loss and per-tower accuracy over (up to `max_batches` of) a split."""
  batches = data.get_dataset(task, task_feature_lengths, model.towers, batch_size, split=split,
                             shuffle=False, seed=seed, num_epochs=1)
  partitioner = partitioner or partitioning.Partitioner()
  step = _jitted_eval_step(model, partitioner.sharding(()))
  totals, count = None, 0
  source = data.describe(task)
  for batch in batches.take(max_batches or -1).as_numpy_iterator():
    data.check_token_ids(batch, model.vocab_sizes, source)
    batch = jax.make_array_from_process_local_data(partitioner.batch_sharding, batch)
    sums = jax.device_get(step(params, batch))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    count += 1
  if not count:
    raise ValueError(f'split {split!r} of {task!r} gave no full batch of {batch_size}')
  return {f'eval/{k}': float(v) for k, v in losses.metric_means(totals).items()}
