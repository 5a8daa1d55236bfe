"""Orbax checkpoints of a training run: parameters, optimizer state, and where the data stood.

Saves are asynchronous and atomic (orbax writes a temporary directory and renames it when
complete, so a save cut short is never listed as a step); the newest `keep` are kept. A save that
fails (a full disk, no permission) stops the run, naming the step and the cause; the steps before
it stay readable.

A step that is listed but damaged (a file missing or corrupt) is skipped with a warning in
favour of the one before it, by every process alike. Anything else that stops a restore (a
checkpoint of other shapes, a bug) is an error naming the step and the cause, never a silent
fresh start.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zipper_jax.errors import UserError

ITEMS = ('params', 'opt_state', 'meta')
# What tensorstore says of files that are missing or cannot be decoded.
_DAMAGE_CODES = ('DATA_LOSS', 'NOT_FOUND', 'Error opening', 'Error reading', 'Error decoding')


class CheckpointError(UserError):
  """A checkpoint that cannot be written (disk, permissions), or that is another model's."""


class Checkpointer:
  """Checkpoints under `directory/checkpoints`, one sub-directory per step."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(directory), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=_item_handlers(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))
    self._saving = None  # the step of the newest save started

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
    """Starts saving `step`, once the save before it is finished (its failure is raised here)."""
    self.wait()
    self._saving = step
    with self._naming_failures():
      self.manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
          meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, abstract_params, abstract_opt_state):
    """(step, params, opt_state, meta) of the newest readable step, or None if there is none.

    The abstract trees (`jax.ShapeDtypeStruct`s with shardings) say where every array goes, so a
    checkpoint restores onto whatever mesh the run now has.
    """
    found = _newest_readable(self.manager, self.directory, lambda step: ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()), {'params': abstract_params})
    if found is None:
      return None
    step, restored = found
    return step, restored.params, restored.opt_state, dict(restored.meta)

  def wait(self) -> None:
    with self._naming_failures():
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _naming_failures(self):
    try:
      yield
    except Exception as e:  # noqa: BLE001 -- whatever the storage says, with the step it hit
      step = self._saving
      raise CheckpointError(
          f'writing checkpoint step {step} under {self.directory} failed ({type(e).__name__}: '
          f'{e}); the steps before it are intact ({self.manager.all_steps(read=True)}): free '
          'space or fix permissions, then resume') from e

  def close(self) -> None:
    self.manager.close()


def save_params(model_dir: str, params, meta: dict[str, Any]) -> None:
  """Parameters alone as step 0 of a run in `model_dir` (an imported pre-trained tower):
  `load_params` and a trainer's `INIT_CHECKPOINTS` read it; there is no optimizer state.

  numpy leaves are saved from the host's CPU device, which wraps them without a copy (orbax
  would otherwise convert them all at once, a second copy of the model), and never from an
  accelerator, which one whole model would not fit.
  """
  host = jax.local_devices(backend='cpu')[0]
  params = jax.tree.map(lambda x: jax.device_put(x, host) if isinstance(x, np.ndarray) else x,
                        params)
  manager = ocp.CheckpointManager(
      os.path.join(os.path.abspath(model_dir), 'checkpoints'), item_names=('params', 'meta'),
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          meta=ocp.args.JsonSave(meta)))
  manager.close()


def latest_step(model_dir: str) -> int | None:
  """The newest finished checkpoint's step of the run in `model_dir`, None if it has none."""
  directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  manager.close()
  return step


def load_params(model_dir: str, abstract_params=None, sharding=None):
  """The parameters of the newest readable checkpoint of the run in `model_dir`.

  With `abstract_params` (shapes with shardings: `Partitioner.abstract`) each device reads only
  its shards, whatever topology saved them, and a checkpoint of other shapes is a
  `CheckpointError` naming them. Without, they come back with `sharding` (default: replicated on
  every device: a whole copy each).
  """
  return load_step_and_params(model_dir, abstract_params, sharding)[1]


def load_step_and_params(model_dir: str, abstract_params=None, sharding=None):
  """(step, parameters) of the newest readable checkpoint, as `load_params` reads them."""
  directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints under {model_dir!r} (looked for {directory})')
  largest = None if abstract_params is None else max(
      (leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract_params)), default=None)
  manager = ocp.CheckpointManager(
      directory, item_handlers=_item_handlers(restore_bytes=largest),
      options=ocp.CheckpointManagerOptions(read_only=True))

  def args(step):
    target = abstract_params
    if target is None:
      placed = sharding or NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)),
                                         PartitionSpec())
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=placed),
                            manager.item_metadata(step)['params'])
    return ocp.args.Composite(params=ocp.args.StandardRestore(target))

  targets = None if abstract_params is None else {'params': abstract_params}
  found = _newest_readable(manager, directory, args, targets)
  if found is None:
    raise FileNotFoundError(f'no readable checkpoint under {directory}')
  return found[0], found[1].params


def _item_handlers(restore_bytes: int | None = None) -> dict:
  """How each item of a step is written: what reading its metadata back needs too.

  `restore_bytes` caps the parameter bytes read at once (orbax's default allows 96 GB in
  flight, a second copy of any model): the largest array's size (and a MiB, as orbax counts in
  GB) keeps a restore within the parameters' own memory plus about one array.
  """
  params = (ocp.StandardCheckpointHandler() if restore_bytes is None else
            ocp.StandardCheckpointHandler(restore_concurrent_gb=(restore_bytes + 2**20) / 1e9))
  return {'params': params, 'opt_state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler()}


def _newest_readable(manager, directory: str, args, targets=None):
  """(step, restored items) of the newest step that every process restores, or None; `args(step)`
  says what to restore, `targets` ({item: abstract tree}) what shapes it must have."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      if targets:
        _check_shapes(manager, step, targets)
      restored = manager.restore(step, args=args(step))
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 -- sorted below: damage falls back, the rest stops
      if not _is_damage(e):
        raise RuntimeError(f'checkpoint step {step} in {directory} cannot be restored '
                           f'({type(e).__name__}: {e})') from e
      logging.warning('checkpoint step %d in %s is damaged (%s: %s); trying the one before',
                      step, directory, type(e).__name__, e)
      restored = None
    # A step damaged on one host is skipped by all: they must restore the same one.
    if multihost_utils.process_allgather(np.asarray(restored is not None)).all():
      return step, restored
  return None


def _is_damage(error: Exception) -> bool:
  """A file missing, truncated or corrupt: what a damaged disk or a hand-deleted file leaves."""
  return (isinstance(error, (OSError, KeyError, json.JSONDecodeError)) or
          (isinstance(error, ValueError) and any(c in str(error) for c in _DAMAGE_CODES)))


def _check_shapes(manager, step: int, targets) -> None:
  """A step of other shapes is another model's: an error, not damage to skip."""
  metadata = manager.item_metadata(step)
  for item, target in targets.items():
    stored = getattr(metadata[item], 'tree', metadata[item])
    stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored,
                          is_leaf=lambda x: hasattr(x, 'shape'))
    try:
      check_same_structure(target, stored, f'the {item} of checkpoint step {step}')
    except ValueError as e:
      raise CheckpointError(f"{e} (in {manager.directory}: another model's checkpoint)") from e


def check_same_structure(expected, got, where: str) -> None:
  """Raises a ValueError naming every missing, unexpected or mis-shaped parameter."""
  flat = lambda tree: {jax.tree_util.keystr(path, simple=True, separator='/'): leaf
                       for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  expected, got = flat(expected), flat(got)
  problems = [f'missing {k}' for k in expected.keys() - got.keys()]
  problems += [f'unexpected {k}' for k in got.keys() - expected.keys()]
  problems += [f'{k}: shape {tuple(jnp.shape(got[k]))}, model expects {tuple(jnp.shape(v))}'
               for k, v in expected.items() if k in got and jnp.shape(got[k]) != jnp.shape(v)]
  if problems:
    raise ValueError(f'{where} does not match the model: ' + '; '.join(sorted(problems)))
