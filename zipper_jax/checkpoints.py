"""Orbax checkpoints of a training run: parameters, optimizer state, and where the data stood.

Saves are asynchronous and atomic (orbax writes a temporary directory and renames it when
complete, so a save cut short is never listed as a step); the newest `keep` are kept. A step that
is listed but cannot be read (a damaged disk, a file removed by hand) is skipped with a warning
in favour of the one before it.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

ITEMS = ('params', 'opt_state', 'meta')


class Checkpointer:
  """Checkpoints under `directory/checkpoints`, one sub-directory per step."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(directory), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
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
        meta=ocp.args.JsonRestore()))
    if found is None:
      return None
    step, restored = found
    return step, restored.params, restored.opt_state, dict(restored.meta)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def save_params(model_dir: str, params, meta: dict[str, Any]) -> None:
  """Parameters alone as step 0 of a run in `model_dir` (an imported pre-trained tower):
  `load_params` and a trainer's `INIT_CHECKPOINTS` read it; there is no optimizer state."""
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

  Without `abstract_params` they come back with `sharding` (default: replicated on every
  device), whatever topology saved them (e.g. a pre-trained tower to zip).
  """
  return load_step_and_params(model_dir, abstract_params, sharding)[1]


def load_step_and_params(model_dir: str, abstract_params=None, sharding=None):
  """(step, parameters) of the newest readable checkpoint, as `load_params` reads them."""
  directory = os.path.join(os.path.abspath(model_dir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints under {model_dir!r} (looked for {directory})')
  manager = ocp.CheckpointManager(
      directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'params': ocp.StandardCheckpointHandler(),
                     'opt_state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})

  def args(step):
    target = abstract_params
    if target is None:
      placed = sharding or NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)),
                                         PartitionSpec())
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=placed),
                            manager.item_metadata(step)['params'])
    return ocp.args.Composite(params=ocp.args.StandardRestore(target))

  found = _newest_readable(manager, directory, args)
  if found is None:
    raise FileNotFoundError(f'no readable checkpoint under {directory}')
  return found[0], found[1].params


def _newest_readable(manager, directory: str, args):
  """(step, restored items) of the newest step that restores, or None; `args(step)` says what
  to restore."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, manager.restore(step, args=args(step))
    except Exception as e:  # noqa: BLE001 -- any unreadable step falls back to the previous
      logging.warning('checkpoint step %d in %s is unreadable (%s: %s); trying the one before',
                      step, directory, type(e).__name__, e)
  return None
