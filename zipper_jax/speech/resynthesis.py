"""Units -> audio, for listening and for the TTS evaluation protocol.

A linear decoder fitted on (units, log-mel) pairs of the corpus predicts each unit's `stack`
log-mel frames from the units around it (one-hot in a window of +-`context`, ridge regression),
and Griffin-Lim turns the mel spectrogram into a waveform. Context lets a unit's rendering
depend on its neighbours, which a per-unit centroid cannot.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from zipper_jax import atomic_files
from zipper_jax.speech.unit_tokenizer import FeatureConfig


@dataclasses.dataclass(frozen=True)
class Resynthesizer:
  config: FeatureConfig
  weights: np.ndarray  # [2 * context + 1, num_units, stack * n_mels]
  bias: np.ndarray  # [stack * n_mels]

  @property
  def context(self) -> int:
    return (len(self.weights) - 1) // 2

  def log_mel(self, units: np.ndarray) -> np.ndarray:
    """[len(units) * stack, n_mels] predicted natural-log mel power."""
    units = np.asarray(units, np.int64)
    if not units.size:
      raise ValueError('no units to resynthesise')
    padded = np.pad(units, self.context, mode='edge')
    rows = self.bias + sum(self.weights[offset, padded[offset:offset + len(units)]]
                           for offset in range(len(self.weights)))
    return rows.reshape(len(units) * self.config.stack, self.config.n_mels)

  def audio(self, units: np.ndarray, griffin_lim_iterations: int = 32) -> np.ndarray:
    """16 kHz float32 speech; deterministic (Griffin-Lim starts from a fixed phase)."""
    import librosa  # seconds to import: only where audio is made
    c = self.config
    magnitude = librosa.feature.inverse.mel_to_stft(
        np.exp(self.log_mel(units)).T, sr=c.sample_rate, n_fft=c.n_fft)
    wav = librosa.griffinlim(magnitude, n_iter=griffin_lim_iterations, hop_length=c.hop_length,
                             win_length=c.win_length, n_fft=c.n_fft, random_state=0)
    return (0.9 * wav / (np.abs(wav).max() + 1e-9)).astype(np.float32)

  def save(self, path: str) -> None:
    with atomic_files.atomic_file(path) as partial:
      with open(partial, 'wb') as f:
        np.savez(f, weights=self.weights, bias=self.bias,
                 config=json.dumps(dataclasses.asdict(self.config)))

  @classmethod
  def load(cls, path: str) -> 'Resynthesizer':
    with np.load(path) as saved:
      return cls(FeatureConfig(**json.loads(str(saved['config']))), saved['weights'],
                 saved['bias'])


def fit(unit_arrays: Sequence[np.ndarray], log_mels: Sequence[np.ndarray],
        config: FeatureConfig, num_units: int = 1024, context: int = 2,
        alpha: float = 1.0) -> Resynthesizer:
  """Ridge regression from one-hot unit windows to the frames each unit stands for."""
  # Only fitting needs these; judging processes, which load resynthesisers, start faster.
  import scipy.sparse
  from sklearn.linear_model import Ridge
  width = 2 * context + 1
  inputs, targets = [], []
  for units, mel in zip(unit_arrays, log_mels):
    frames = len(units) * config.stack
    mel = np.pad(mel[:frames], ((0, max(0, frames - len(mel))), (0, 0)), mode='edge')
    targets.append(mel.reshape(len(units), -1))
    padded = np.pad(np.asarray(units, np.int64), context, mode='edge')
    inputs.append(np.stack([offset * num_units + padded[offset:offset + len(units)]
                            for offset in range(width)], axis=1))
  columns = np.concatenate(inputs)
  rows = np.repeat(np.arange(len(columns)), width)
  x = scipy.sparse.csr_matrix((np.ones(columns.size, np.float32), (rows, columns.ravel())),
                              shape=(len(columns), width * num_units))
  ridge = Ridge(alpha=alpha).fit(x, np.concatenate(targets))
  weights = ridge.coef_.T.reshape(width, num_units, -1).astype(np.float32)
  return Resynthesizer(config, weights, ridge.intercept_.astype(np.float32))
