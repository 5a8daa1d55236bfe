"""The external ASR judge of the TTS protocol: pocketsphinx with the English acoustic model,
language model and dictionary that its PyPI wheel ships. Not one of our models, so it scores
synthesised speech the same way whatever produced it."""
from __future__ import annotations

import functools

import numpy as np

from zipper_jax.speech import audio, text_normalization


@functools.cache
def _decoder():
  from pocketsphinx import Decoder  # its model loads in the processes that judge, only there
  return Decoder(samprate=audio.SAMPLE_RATE, loglevel='FATAL')


def transcribe(wav: np.ndarray) -> str:
  """Normalised transcript of 16 kHz mono speech."""
  if not wav.size:
    raise audio.AudioError('empty audio: nothing to transcribe')
  pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes()
  decoder = _decoder()
  decoder.start_utt()
  decoder.process_raw(pcm, full_utt=True)
  decoder.end_utt()
  hypothesis = decoder.hyp()
  return text_normalization.normalize_transcript(hypothesis.hypstr if hypothesis else '')
