"""Files and folders that appear whole or not at all: a writer that dies midway leaves nothing
that a later reader (or a resumed build) could take for finished work."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator

# What `open` and `os.mkdir` would leave: mkstemp and mkdtemp make their files private (0600,
# 0700), and a run's files must stay readable by whoever reads its folder (TensorBoard, a
# teammate, another host's job). Read once: the process's umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE, DIRECTORY_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` to write; renamed onto `path` when the block ends
  without an error, removed otherwise."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, partial = tempfile.mkstemp(prefix='.partial-', suffix=os.path.splitext(path)[1],
                                 dir=directory)
  os.close(fd)
  try:
    yield partial
    os.chmod(partial, FILE_MODE)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """As `atomic_file`, for a folder: an existing `path` is replaced only once the new one is
  complete."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  partial = tempfile.mkdtemp(prefix='.partial-', dir=parent)
  try:
    yield partial
    os.chmod(partial, DIRECTORY_MODE)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      shutil.rmtree(partial)


def write_json(path: str, value) -> None:
  with atomic_file(path) as partial, open(partial, 'w') as f:
    json.dump(value, f, indent=2)
