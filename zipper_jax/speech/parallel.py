"""Map a function over many small jobs (utterances) in fresh processes, with a progress bar.

Corpus building and judging are CPU-bound Python (synthesisers, feature extraction, the ASR
judge): processes, not threads, one a core. They are spawned, never forked: the parent may hold
JAX or TensorFlow state that must not be forked.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys

import tqdm


class Workers:
  """Processes that several maps share, started at the first map that needs them: a worker
  pays for its imports (librosa, pocketsphinx: seconds each) once, not once a map."""

  def __init__(self, workers: int):
    self.workers = workers
    self._pool = None

  def map(self, function, jobs: list, description: str) -> list:
    """[function(job) for job in jobs], in order."""
    if self.workers <= 1 or len(jobs) <= 1:  # no processes to start for one job or none
      return [function(job) for job in tqdm.tqdm(jobs, desc=description, unit='utt')]
    if self._pool is None:
      with _without_main_module(), _one_thread_each():
        self._pool = multiprocessing.get_context('spawn').Pool(self.workers)
    chunk = max(1, min(8, len(jobs) // (4 * self.workers)))  # small chunks keep workers even
    return list(tqdm.tqdm(self._pool.imap(function, jobs, chunksize=chunk), total=len(jobs),
                          desc=description, unit='utt'))

  def __enter__(self) -> Workers:
    return self

  def __exit__(self, *exc_info) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool.join()


def parallel_map(function, jobs: list, workers: int, description: str) -> list:
  """One map over `workers` processes (no more than jobs)."""
  with Workers(min(workers, len(jobs))) as pool:
    return pool.map(function, jobs, description)


@contextlib.contextmanager
def _without_main_module():
  """Spawned processes import the parent's `__main__` first; the `zipper` command's imports
  JAX and TensorFlow (seconds and a GiB per worker) that workers never use. Hidden while the
  workers start, they import only the modules their jobs name."""
  main = sys.modules['__main__']
  saved = {name: main.__dict__.pop(name) for name in ('__spec__', '__file__')
           if name in main.__dict__}
  main.__spec__ = None
  try:
    yield
  finally:
    del main.__spec__
    main.__dict__.update(saved)


# The variables numpy's BLAS (OpenBLAS, MKL) and OpenMP read when they load.
_THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


@contextlib.contextmanager
def _one_thread_each():
  """Workers start with one BLAS and OpenMP thread each: with a process a core already, each
  worker's own threads fight the others' and encode units 12 times slower (docs/data.md)."""
  saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
  os.environ.update({name: '1' for name in _THREAD_VARIABLES})
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        del os.environ[name]
      else:
        os.environ[name] = value
