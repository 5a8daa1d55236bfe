"""Hugging Face checkpoint files, streamed: tensors read one at a time, written shard by shard.

A checkpoint directory holds `model.safetensors`, or (how every model above a few GB ships)
`model-00001-of-0000N.safetensors` ... with `model.safetensors.index.json` naming the file of each
tensor. Reading memory-maps the files and returns `LazyTensor`s; writing splits the tensors into
shards of at most `max_shard_bytes` as transformers' `save_pretrained` does, fetching each
shard's tensors only when it is written. Host memory therefore stays within one tensor (reading)
or one shard (writing) beyond the model itself. Only safetensors are read: `*.bin`/`*.pt`
checkpoints are pickles, which can run arbitrary code when loaded.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable, Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy

from zipper_jax.interop.hf_llama import LazyTensor

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size, '5GB'


def read(directory: str) -> dict[str, LazyTensor]:
  """Every tensor of an HF checkpoint directory (one file or sharded with its index), unread."""
  index = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      files = sorted({os.path.join(directory, shard)
                      for shard in json.load(f)['weight_map'].values()})
  else:
    files = sorted(glob.glob(os.path.join(directory, '*.safetensors')))
  if not files:
    pickles = [os.path.basename(p) for pattern in ('*.bin', '*.pt', '*.pth', '*.ckpt')
               for p in glob.glob(os.path.join(directory, pattern))]
    raise ValueError(f'no *.safetensors in {directory}' + (
        f'; refusing to load pickled weights {pickles} (they can run code when loaded). '
        'Convert them to safetensors first, where you trust them' if pickles else ''))
  tensors = {}
  for path in files:
    with safetensors.safe_open(path, framework='flax') as f:
      for name in f.keys():
        tensors[name] = LazyTensor(f.get_slice(name).get_shape(),
                                   lambda path=path, name=name: _read_tensor(path, name))
  return tensors


def _read_tensor(path: str, name: str) -> np.ndarray:
  # The flax framework reads bfloat16, which plain numpy cannot; on the host, never an accelerator.
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    with safetensors.safe_open(path, framework='flax') as f:
      return np.asarray(f.get_tensor(name).astype(np.float32))


def shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
  """Tensor names in order, cut into consecutive groups of at most `max_shard_bytes` (a tensor
  larger than that is a shard of its own)."""
  groups, size = [[]], 0
  for name, nbytes in sizes.items():
    if groups[-1] and size + nbytes > max_shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += nbytes
  return groups


def write(directory: str, shapes: Mapping[str, tuple[int, ...]], fetch: Callable[[str], np.ndarray],
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes the float32 tensors named by `shapes` (`fetch(name)` gives one) into `directory`, one
  shard's tensors in memory at a time; returns the safetensors files written."""
  sizes = {name: 4 * int(np.prod(shape)) for name, shape in shapes.items()}
  groups = shards(sizes, max_shard_bytes)
  files = ([SINGLE_FILE] if len(groups) == 1 else
           [f'model-{i:05d}-of-{len(groups):05d}.safetensors' for i in range(1, len(groups) + 1)])
  for file, names in zip(files, groups):
    safetensors.numpy.save_file({name: fetch(name) for name in names},
                                os.path.join(directory, file), metadata={'format': 'pt'})
  if len(groups) > 1:
    with open(os.path.join(directory, INDEX_FILE), 'w') as f:
      json.dump({'metadata': {'total_size': sum(sizes.values())},
                 'weight_map': {name: file for file, names in zip(files, groups)
                                for name in names}}, f, indent=2)
  return files
