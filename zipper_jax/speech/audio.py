"""Reading and writing speech audio: 16 kHz mono float32 everywhere inside the framework.

Any file libsndfile reads (WAV, FLAC, OGG, ...) at any sample rate and channel count is accepted:
channels are averaged and the rate is converted with soxr. What cannot be used as speech fails
with an error that names the file and the reason.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile
import soxr

from zipper_jax import atomic_files
from zipper_jax.errors import UserError

SAMPLE_RATE = 16_000


class AudioError(UserError):
  """An audio file that cannot be used as speech."""


def resample(wav: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
  if rate == target_rate:
    return wav.astype(np.float32)
  return soxr.resample(wav, rate, target_rate).astype(np.float32)


def read_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The file's samples as mono float32 in [-1, 1] at `sample_rate`."""
  if not os.path.isfile(path):
    raise AudioError(f'{path}: no such audio file')
  try:
    wav, rate = soundfile.read(path, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError) as error:
    raise AudioError(f'{path}: not a readable audio file ({error})') from None
  if not wav.size:
    raise AudioError(f'{path}: the file holds no audio samples')
  return resample(wav.mean(axis=1), rate, sample_rate)


def audio_files(directory: str) -> list[str]:
  """The files in `directory` that libsndfile reads (by extension: .wav, .flac, .ogg, ...)."""
  if not os.path.isdir(directory):
    raise AudioError(f'{directory}: no such folder')
  extensions = {f'.{name.lower()}' for name in soundfile.available_formats()}
  return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                if os.path.splitext(name)[1].lower() in extensions)


def write_audio(path: str, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
  """Writes 16-bit audio (format from the extension) whole or not at all."""
  with atomic_files.atomic_file(path) as partial:
    soundfile.write(partial, np.clip(wav, -1, 1), sample_rate, subtype='PCM_16')
