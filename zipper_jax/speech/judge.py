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
  """Normalised transcript of 16 kHz mono speech: a function of `wav` alone.

  pocketsphinx's front end adapts its noise and cepstral-mean estimates from one utterance to
  the next, so that, judged by a pool of workers, an utterance's transcript would depend on
  which ones its worker happened to judge before (4 of 12 noisy `test_other` clips changed with
  the order). The front end is reset for each utterance instead: what a fresh decoder hears.
  """
  if not wav.size:
    raise audio.AudioError('empty audio: nothing to transcribe')
  pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes()
  decoder = _decoder()
  decoder.reinit_feat()
  decoder.start_utt()
  decoder.process_raw(pcm, full_utt=True)
  decoder.end_utt()
  hypothesis = decoder.hyp()
  return text_normalization.normalize_transcript(hypothesis.hypstr if hypothesis else '')
