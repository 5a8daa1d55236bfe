"""Map a function over many small jobs (utterances) in fresh processes, with a progress bar.

Corpus building and judging are CPU-bound Python (synthesisers, feature extraction, the ASR
judge): processes, not threads. They are spawned, never forked: the parent may hold JAX or
TensorFlow state that must not be forked.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import sys

import tqdm


def parallel_map(function, jobs: list, workers: int, description: str) -> list:
  """[function(job) for job in jobs], in order, over `workers` processes (no more than jobs)."""
  workers = min(workers, len(jobs))
  if workers <= 1:  # no processes to start for one job or none
    return [function(job) for job in tqdm.tqdm(jobs, desc=description, unit='utt')]
  with _without_main_module():
    pool = multiprocessing.get_context('spawn').Pool(workers)
  with pool:
    chunk = max(1, min(8, len(jobs) // (4 * workers)))  # small chunks keep workers even
    return list(tqdm.tqdm(pool.imap(function, jobs, chunksize=chunk), total=len(jobs),
                          desc=description, unit='utt'))


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
