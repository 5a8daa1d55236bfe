"""The corpus as a TFDS dataset: `tfds.load('zipper_speech_text', data_dir=CORPUS_DIR)`.

`zipper corpus build` writes one JSON-lines manifest per split under `CORPUS_DIR/manifest/`
(the builder's manual directory is `CORPUS_DIR`) and then prepares this dataset in the same
folder as TFRecord shards, which seqio reads and shards across hosts natively. Any corpus in the
manifest format (your own audio tokenised to units, LibriSpeech included) becomes the same
dataset.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds

NAME = 'zipper_speech_text'
VERSION = '1.0.0'
SPLITS = ('text_only', 'speech_only', 'aligned', 'validation', 'test_clean', 'test_other')


class ZipperSpeechText(tfds.core.GeneratorBasedBuilder):
  """English sentences and their speech units (text-only lines have none)."""

  VERSION = tfds.core.Version(VERSION)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Build the corpus with `zipper corpus build --out DIR` (it prepares this dataset too), or '
      'write DIR/manifest/<split>.jsonl yourself, one utterance a line: {"id", "text", "units", '
      '"voice", "rate", "duration", "source"}, and prepare with manual_dir=DIR.')

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        'id': tfds.features.Text(),
        'text': tfds.features.Text(),
        'units': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'voice': tfds.features.Text(),
        'rate': tfds.features.Scalar(np.float32),
        'duration': tfds.features.Scalar(np.float32),  # seconds
        'source': tfds.features.Text(),
    })
    return self.dataset_info_from_configs(features=features)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {split: self._generate_examples(
        os.path.join(dl_manager.manual_dir, 'manifest', f'{split}.jsonl')) for split in SPLITS}

  def _generate_examples(self, path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        yield record['id'], {
            'id': record['id'], 'text': record.get('text', ''),
            'units': record.get('units', []), 'voice': record.get('voice', ''),
            'rate': record.get('rate', 1.0), 'duration': record.get('duration', 0.0),
            'source': record.get('source', '')}


def prepare(corpus_dir: str) -> None:
  """Writes the TFRecord splits from `corpus_dir/manifest` into `corpus_dir`."""
  builder = ZipperSpeechText(data_dir=corpus_dir)
  tfds.disable_progress_bar()  # the corpus build shows its own
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(download_dir=downloads, download_config=(
        tfds.download.DownloadConfig(manual_dir=corpus_dir)))
