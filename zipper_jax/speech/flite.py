"""Debian's flite synthesiser (libflite1), called in process: the `flite` command spends 12 of
the 31 ms a short sentence takes starting up and loading its voice (docs/data.md).

The audio is the command's, sample for sample: the engine draws its excitation noise from libc's
`rand()`, which a fresh `flite` process starts at seed 1, so each utterance reseeds it; and
`duration_stretch` reaches the engine as the command's `--setf` would pass it, to 4 decimals.
`rand()` is the process's: another thread that calls it while flite speaks changes the audio
from there on. onnxruntime (Piper) starts such a thread when it is imported, so flite speaks in
processes that never load it (`corpus.build`).
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

VOICES = ('slt', 'rms', 'awb', 'kal16')


class _Wave(ctypes.Structure):
  """flite's `cst_wave`."""
  _fields_ = [('type', ctypes.c_char_p), ('sample_rate', ctypes.c_int),
              ('num_samples', ctypes.c_int), ('num_channels', ctypes.c_int),
              ('samples', ctypes.POINTER(ctypes.c_short))]


class _Voice(ctypes.Structure):
  """The head of flite's `cst_voice`: its features hold `duration_stretch`."""
  _fields_ = [('name', ctypes.c_char_p), ('features', ctypes.c_void_p)]


@functools.cache
def _engine() -> tuple[ctypes.CDLL, ctypes.CDLL]:
  try:
    flite, libc = ctypes.CDLL('libflite.so.1'), ctypes.CDLL(None)
  except OSError as error:
    raise RuntimeError(f'flite is not installed ({error}): apt-get install flite '
                       '(`make system-packages`)') from None
  flite.flite_init()
  flite.flite_text_to_wave.restype = ctypes.POINTER(_Wave)
  flite.flite_text_to_wave.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Voice)]
  flite.flite_feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
  flite.delete_wave.argtypes = [ctypes.POINTER(_Wave)]
  return flite, libc


@functools.cache
def _voice(name: str) -> ctypes.POINTER(_Voice):
  if name not in VOICES:
    raise ValueError(f'unknown flite voice {name!r}; expected one of {VOICES}')
  _engine()
  library = ctypes.CDLL(f'libflite_cmu_us_{name}.so.1')
  register = getattr(library, f'register_cmu_us_{name}')
  register.restype = ctypes.POINTER(_Voice)
  return register(None)


def synthesize(text: str, voice: str, rate: float = 1.0) -> tuple[np.ndarray, int]:
  """(int16 samples, sample rate) of `text` spoken by the flite `voice` at `rate`."""
  flite, libc = _engine()
  speaker = _voice(voice)
  flite.flite_feat_set_float(speaker.contents.features, b'duration_stretch',
                             float(f'{1 / rate:.4f}'))
  libc.srand(1)
  wave = flite.flite_text_to_wave(text.encode(), speaker)
  try:
    samples = np.ctypeslib.as_array(wave.contents.samples, (wave.contents.num_samples,)).copy()
    return samples, wave.contents.sample_rate
  finally:
    flite.delete_wave(wave)
