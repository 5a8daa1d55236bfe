"""glibc's malloc set for XLA's CPU backend: a program's buffers are reused from one execution to
the next, not mapped and faulted in afresh."""
import os
import subprocess
import sys

import pytest

from zipper_jax import host_memory

# A worker thread's large buffer, allocated, written and freed three times, as XLA's CPU runtime
# does with a step's temporaries: the minor page faults of the last time.
PROGRAM = """
import ctypes, resource, sys, threading
from zipper_jax import host_memory
kept = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20
faults = []
def step():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    buffer = libc.malloc(SIZE)
    ctypes.memset(buffer, 1, SIZE)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=step)
worker.start()
worker.join()
print(kept, faults[-1])
"""
PAGES = (256 << 20) // 4096


def last_page_faults(mode):
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES')}
  env['JAX_PLATFORMS'] = 'cpu'
  done = subprocess.run([sys.executable, '-c', PROGRAM, mode], env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  kept, faults = done.stdout.split()
  return kept == 'True', int(faults)


def test_a_worker_threads_freed_buffer_is_reused():
  assert last_page_faults('keep') == (True, 0)
  kept, faults = last_page_faults('default')
  assert not kept and faults >= PAGES  # glibc's defaults: mapped afresh, faulted in page by page


@pytest.mark.parametrize('platforms, on_cpu', [('cpu', True), ('cuda', False), ('cpu,tpu', False),
                                               (' cpu ', True)])
def test_only_a_cpu_backend_is_set(platforms, on_cpu, monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.computes_on_cpu() == on_cpu


@pytest.mark.parametrize('variable', ['LD_PRELOAD', 'GLIBC_TUNABLES'])
def test_an_allocator_the_user_chose_is_left_alone(variable, monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv(variable, 'libtcmalloc.so.4' if variable == 'LD_PRELOAD' else
                     'glibc.malloc.arena_max=4')
  assert not host_memory.keep_freed_memory()
