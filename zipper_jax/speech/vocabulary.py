"""The speech tower's vocabulary: k-means units that know how to hear and to speak.

`SpeechVocabulary` is the framework's `UnitVocabulary` (1024 units and begin/end of audio) with
the unit tokenizer (audio -> units) and the resynthesiser (units -> audio) that the units were
made with, read from `assets_dir` (a corpus folder, or a run's copy of them). A run saves them
beside its checkpoints, so that it transcribes and speaks audio on its own.
"""
from __future__ import annotations

import os
import shutil
from typing import Mapping

from zipper_jax.speech import resynthesis, unit_tokenizer
from zipper_jax.vocabularies import NUM_UNITS, UnitVocabulary


class SpeechVocabulary(UnitVocabulary):
  TOKENIZER = 'speech_tokenizer'
  RESYNTHESIZER = 'resynthesizer.npz'

  def __init__(self, assets_dir: str, num_units: int = NUM_UNITS):
    self.assets_dir = assets_dir
    super().__init__(num_units)

  @property
  def has_assets(self) -> bool:
    return all(os.path.exists(os.path.join(self.assets_dir, name))
               for name in (self.TOKENIZER, self.RESYNTHESIZER))

  def tokenizer(self) -> unit_tokenizer.SpeechTokenizer:
    return unit_tokenizer.SpeechTokenizer.load(self._asset(self.TOKENIZER))

  def resynthesizer(self) -> resynthesis.Resynthesizer:
    return resynthesis.Resynthesizer.load(self._asset(self.RESYNTHESIZER))

  @property
  def resynthesizer_path(self) -> str:
    return self._asset(self.RESYNTHESIZER)

  def _asset(self, name: str) -> str:
    path = os.path.join(self.assets_dir, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} is missing: the speech vocabulary has no {name} (a run '
                              'keeps them when its corpus has them; a generated corpus has none)')
    return path

  def save(self, out: str, name: str) -> dict:
    """Copies the tokenizer and the resynthesiser, where the units came with them."""
    assets = os.path.join(out, name)
    os.makedirs(assets, exist_ok=True)
    if self.has_assets:
      shutil.copytree(os.path.join(self.assets_dir, self.TOKENIZER),
                      os.path.join(assets, self.TOKENIZER), dirs_exist_ok=True)
      shutil.copyfile(os.path.join(self.assets_dir, self.RESYNTHESIZER),
                      os.path.join(assets, self.RESYNTHESIZER))
    return {'num_units': self.num_units, 'assets': name}

  @classmethod
  def load(cls, root: str, entry: Mapping) -> SpeechVocabulary:
    return cls(os.path.join(root, entry['assets']), entry['num_units'])
