"""A run directory: what `zipper train` (or `zipper import`) writes and every later command reads.

  config.gin      the gin config the run was made with: its model, data and schedule
  checkpoints/    orbax steps (`checkpoints.py`)
  vocabularies/   each tower's vocabulary and the files it reads (`vocabularies.py`)
  eval/           results of evaluations, one JSON file each
  events.out.*    TensorBoard summaries

`RunDir` rebuilds the run's model from its own config.gin without touching the caller's gin
config, and refuses to continue a run with another model or other vocabularies, naming the
settings that differ, before anything is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Iterator, Mapping

import gin
import jax
import seqio
from gin import config as gin_state

from zipper_jax import atomic_files, checkpoints, partitioning, vocabularies
from zipper_jax import configurables  # noqa: F401 -- registers every name a config.gin holds
from zipper_jax.errors import UserError
from zipper_jax.models import Model


class RunMismatch(UserError):
  """What is asked of a run directory is not what it holds."""


@contextlib.contextmanager
def isolated_gin_config() -> Iterator[None]:
  """A gin config of its own for the block: what `gin.clear_config` clears (bindings, macros,
  imports, singletons, the operative config, the lock) is saved before the block and put back
  after it. gin keeps that state in module globals and offers no scoped config; gin-config is
  pinned (requirements/base.txt), and tests check that a caller's config survives."""
  saved = ({key: dict(values) for key, values in gin_state._CONFIG.items()},
           gin_state._CONSTANTS.copy(), set(gin_state._IMPORTS), dict(gin_state._SINGLETONS),
           {key: dict(values) for key, values in gin_state._OPERATIVE_CONFIG.items()},
           gin.config_is_locked())
  gin.clear_config(clear_constants=True)
  try:
    yield
  finally:
    config, constants, imports, singletons, operative, locked = saved
    gin.clear_config(clear_constants=True)
    gin_state._CONFIG.update(config)
    for name, value in constants.items():
      gin_state._CONSTANTS[name] = value
    gin_state._IMPORTS.update(imports)
    gin_state._SINGLETONS.update(singletons)
    gin_state._OPERATIVE_CONFIG.update(operative)
    gin_state._set_config_is_locked(locked)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What a run's config.gin says of its model, its data's shapes, its length and its mesh
  (None where it says nothing: an imported tower was never trained; a run trained from Python,
  not gin, names no model)."""
  model: Model | None
  task_feature_lengths: dict[str, int] | None
  train_steps: int | None
  partitioner: partitioning.Partitioner | None


class RunDir:

  def __init__(self, path: str):
    self.path = os.path.abspath(path)

  def __repr__(self) -> str:
    return f'RunDir({self.path!r})'

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, 'config.gin')

  @property
  def eval_dir(self) -> str:
    return os.path.join(self.path, 'eval')

  def exists(self) -> bool:
    return os.path.exists(self.config_path)

  # What the run is: its model, lengths and vocabularies.
  @functools.cached_property
  def config(self) -> RunConfig:
    """Parsed from config.gin (once), in a gin config of its own."""
    if not self.exists():
      raise FileNotFoundError(f'{self.path} is not a run directory: it has no config.gin')
    with isolated_gin_config():
      gin.parse_config_file(self.config_path, skip_unknown=True)
      model, lengths, steps = (_query(f'%{name}') for name in
                               ('MODEL', 'TASK_FEATURE_LENGTHS', 'TRAIN_STEPS'))
      partitioner = _query('train.partitioner')
      model = model and model.scoped_configurable_fn()
      partitioner = partitioner and partitioner.scoped_configurable_fn()
    return RunConfig(model, lengths and dict(lengths), steps, partitioner)

  @property
  def model(self) -> Model:
    if self.config.model is None:
      raise RunMismatch(f'{self.config_path} names no MODEL (a run trained from Python, not '
                        'gin): give the model')
    return self.config.model

  @property
  def task_feature_lengths(self) -> dict[str, int]:
    if self.config.task_feature_lengths is None:
      raise RunMismatch(f'{self.config_path} sets no TASK_FEATURE_LENGTHS: give them')
    return self.config.task_feature_lengths

  @functools.cached_property
  def partitioner(self) -> partitioning.Partitioner:
    """The mesh and rules the run trains with, on the devices present. A mesh these devices
    cannot make (a pod run read on a workstation) becomes FSDP over all of them: parameters
    stay split, never a whole copy per device."""
    partitioner = self.config.partitioner or partitioning.Partitioner()
    if not partitioner.fits():
      logging.warning('%s trains on mesh %s, which %d devices cannot make: loading it with FSDP '
                      'over them', self.path, tuple(partitioner.mesh_shape), jax.device_count())
      partitioner = partitioning.Partitioner((1, -1, 1), rules=partitioner.rules)
    return partitioner

  def abstract_params(self, partitioner: partitioning.Partitioner | None = None):
    """The run's parameters as shapes, with the shardings `partitioner` (default: the run's)
    gives them: what a checkpoint restores into."""
    return (partitioner or self.partitioner).abstract(self.model.param_shapes())

  def vocabularies(self) -> dict[str, seqio.Vocabulary]:
    return vocabularies.load_vocabularies(self.path)

  def has_vocabularies(self) -> bool:
    return os.path.exists(os.path.join(self.path, 'vocabularies', 'index.json'))

  # Writing a run, and refusing to write over another.
  def check_continues(self, model: Model,
                      vocabs: Mapping[str, seqio.Vocabulary] | None = None) -> None:
    """Raises `RunMismatch` naming what differs if this directory holds a run of another model
    or with other vocabularies; nothing to check in a new directory."""
    if not self.exists():
      return
    found = [] if self.config.model is None else model_differences(model, self.config.model)
    if vocabs is not None and self.has_vocabularies():
      trained = self.vocabularies()
      found += [f'the vocabulary of {name!r} is {vocab} here, {trained.get(name)} in the run'
                for name, vocab in vocabs.items()
                if not vocabularies.equivalent(vocab, trained.get(name))]
    if found:
      raise RunMismatch(f'{self.path} holds a run of another model or data than this one (its '
                        f'config.gin): {"; ".join(found)}. Choose another MODEL_DIR, or give '
                        'the settings that run was made with.')

  def write_config(self, config_str: str,
                   vocabs: Mapping[str, seqio.Vocabulary] | None = None) -> None:
    """config.gin and the vocabularies, each whole or not at all."""
    os.makedirs(self.path, exist_ok=True)
    with atomic_files.atomic_file(self.config_path) as partial:
      with open(partial, 'w') as f:
        f.write(config_str)
    if vocabs:
      vocabularies.save_vocabularies(self.path, vocabs)
    self.__dict__.pop('config', None)

  # Checkpoints and evaluations.
  def checkpointer(self, keep: int = 3) -> checkpoints.Checkpointer:
    return checkpoints.Checkpointer(self.path, keep=keep)

  def latest_step(self) -> int | None:
    return checkpoints.latest_step(self.path)

  def load_step_and_params(self, abstract_params=None, sharding=None):
    """(step, parameters) of the newest checkpoint: by default restored straight into the
    run's sharded layout (`abstract_params`), or given `sharding` for a run that names no
    model."""
    if abstract_params is None and sharding is None and self.config.model is not None:
      abstract_params = self.abstract_params()
    return checkpoints.load_step_and_params(self.path, abstract_params, sharding)

  def load_params(self, abstract_params=None, sharding=None):
    return self.load_step_and_params(abstract_params, sharding)[1]

  def write_eval(self, name: str, result: Mapping[str, Any]) -> str:
    path = os.path.join(self.eval_dir, f'{name}.json')
    atomic_files.write_json(path, result)
    return path

  def read_eval(self, name: str) -> dict | None:
    path = os.path.join(self.eval_dir, f'{name}.json')
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)


def _query(binding: str):
  try:
    return gin.query_parameter(binding)
  except ValueError:
    return None


def model_differences(given: Model, trained: Model) -> list[str]:
  """Where two models differ: 'setting is <given> here, <trained> in the run' each."""
  if type(given) is not type(trained) or set(given.towers) != set(trained.towers):
    return [f'the model is a {type(given).__name__} of towers {tuple(given.towers)} here, a '
            f'{type(trained).__name__} of towers {tuple(trained.towers)} in the run']
  return differences(given.module, trained.module, type(given.module).__name__)


def differences(given, trained, path: str) -> list[str]:
  if type(given) is type(trained) and dataclasses.is_dataclass(given):
    fields = [f.name for f in dataclasses.fields(given) if f.name not in ('parent', 'name')]
    return [d for f in fields
            for d in differences(getattr(given, f), getattr(trained, f), f'{path}.{f}')]
  if isinstance(given, Mapping) and isinstance(trained, Mapping) and given.keys() == trained.keys():
    return [d for k in given for d in differences(given[k], trained[k], f'{path}[{k!r}]')]
  return [] if given == trained else [f'{path} is {given!r} here, {trained!r} in the run']

