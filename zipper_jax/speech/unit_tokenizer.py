"""Speech -> discrete units: MFCCs with deltas at 50 Hz, stacked to 25 Hz, quantised by k-means.

The paper quantises w2v-BERT features with k-means (1024 units at 25 Hz). Without a pre-trained
speech encoder we follow HuBERT's first iteration: k-means on MFCCs. Each utterance's features
are mean-normalised (cepstral mean normalisation removes much of the voice and channel), then
scaled by the fitted per-dimension spread so that no coefficient dominates the distance.

Edge cases, by construction: silence encodes to a valid run of units (its features are all
zero after normalisation); a clip shorter than one 25 Hz frame still gives one unit (frames are
centred, the last stack is padded); any sample rate or channel count is converted on reading
(`audio.read_audio`); an empty signal is an `audio.AudioError`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Iterable, Sequence

import numpy as np

from zipper_jax import atomic_files
from zipper_jax.speech import audio

_LOG_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  sample_rate: int = audio.SAMPLE_RATE
  hop_length: int = 320  # 20 ms: 50 frames a second
  win_length: int = 400  # 25 ms
  n_fft: int = 512
  n_mels: int = 80
  n_mfcc: int = 13
  delta_width: int = 5
  stack: int = 2  # frames per unit: 25 units a second

  @property
  def unit_rate(self) -> float:
    return self.sample_rate / self.hop_length / self.stack


def log_mel(wav: np.ndarray, config: FeatureConfig) -> np.ndarray:
  """[frames, n_mels] natural-log mel power at 50 Hz."""
  import librosa  # seconds to import: only where audio is featurised
  if not wav.size:
    raise audio.AudioError('empty audio: no samples to encode')
  mel = librosa.feature.melspectrogram(
      y=np.asarray(wav, np.float32), sr=config.sample_rate, n_fft=config.n_fft,
      hop_length=config.hop_length, win_length=config.win_length, n_mels=config.n_mels)
  return np.log(mel + _LOG_FLOOR).T


def features(wav: np.ndarray, config: FeatureConfig) -> np.ndarray:
  """[units, stack * 3 * n_mfcc]: mean-normalised MFCCs, deltas and delta-deltas, `stack`
  frames to a row."""
  import librosa  # seconds to import: only where audio is featurised
  mfcc = librosa.feature.mfcc(S=log_mel(wav, config).T, n_mfcc=config.n_mfcc)
  frames = np.concatenate([mfcc] + [
      librosa.feature.delta(mfcc, width=config.delta_width, order=order, mode='nearest')
      for order in (1, 2)]).T
  frames -= frames.mean(axis=0)
  pad = -len(frames) % config.stack
  frames = np.pad(frames, ((0, pad), (0, 0)), mode='edge')
  return frames.reshape(-1, config.stack * frames.shape[1]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SpeechTokenizer:
  config: FeatureConfig
  centroids: np.ndarray  # [num_units, dim], in scaled feature space
  scale: np.ndarray  # [dim]: features are divided by it before quantisation

  @property
  def num_units(self) -> int:
    return len(self.centroids)

  def quantize(self, feature_rows: np.ndarray) -> np.ndarray:
    x = feature_rows / self.scale
    distances = (np.square(self.centroids).sum(1) - 2 * x @ self.centroids.T)
    return distances.argmin(axis=1).astype(np.int32)

  def encode(self, wav: np.ndarray) -> np.ndarray:
    """Units (int32 in [0, num_units)) of 16 kHz mono speech."""
    return self.quantize(features(wav, self.config))

  def encode_batch(self, wavs: Iterable[np.ndarray]) -> list[np.ndarray]:
    return [self.encode(wav) for wav in wavs]

  def encode_file(self, path: str) -> np.ndarray:
    return self.encode(audio.read_audio(path, self.config.sample_rate))

  def save(self, directory: str) -> None:
    with atomic_files.atomic_directory(directory) as partial:
      with open(os.path.join(partial, 'config.json'), 'w') as f:
        json.dump(dataclasses.asdict(self.config), f, indent=2)
      np.save(os.path.join(partial, 'centroids.npy'), self.centroids)
      np.save(os.path.join(partial, 'scale.npy'), self.scale)

  @classmethod
  def load(cls, directory: str) -> 'SpeechTokenizer':
    with open(os.path.join(directory, 'config.json')) as f:
      config = FeatureConfig(**json.load(f))
    return cls(config, np.load(os.path.join(directory, 'centroids.npy')),
               np.load(os.path.join(directory, 'scale.npy')))


def fit(feature_arrays: Sequence[np.ndarray], config: FeatureConfig, num_units: int = 1024,
        seed: int = 0, max_rows: int = 200_000) -> SpeechTokenizer:
  """k-means over (at most `max_rows`, sampled with `seed`) feature rows of many utterances."""
  from sklearn.cluster import KMeans  # only fitting needs it
  rows = np.concatenate(feature_arrays)
  if len(rows) < num_units:
    raise ValueError(f'{len(rows)} feature rows cannot fit {num_units} units: give the '
                     'tokenizer more speech')
  if len(rows) > max_rows:
    rows = rows[np.random.default_rng(seed).choice(len(rows), max_rows, replace=False)]
  scale = rows.std(axis=0) + 1e-6
  # Random initial centroids: k-means++ costs minutes at 1024 centroids, for little gain here.
  kmeans = KMeans(num_units, init='random', n_init=1, max_iter=50, random_state=seed).fit(
      rows / scale)
  return SpeechTokenizer(config, kmeans.cluster_centers_.astype(np.float32),
                         scale.astype(np.float32))


# Jobs of `parallel.parallel_map` while a corpus is built (one utterance each).

def features_of_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(features, log mel) of an audio file: what the tokenizer and the resynthesiser fit on."""
  wav = audio.read_audio(path)
  config = FeatureConfig()
  return features(wav, config), log_mel(wav, config)


@functools.cache
def _loaded(directory: str) -> SpeechTokenizer:
  return SpeechTokenizer.load(directory)


def units_of_file(job: tuple[str, str]) -> tuple[list[int], float]:
  """(audio path, tokenizer folder) -> (units, seconds of audio)."""
  path, tokenizer_dir = job
  wav = audio.read_audio(path)
  return _loaded(tokenizer_dir).encode(wav).tolist(), len(wav) / audio.SAMPLE_RATE
