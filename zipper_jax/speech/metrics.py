"""Error rates and perplexity, computed the same way for every system so that they compare.

Transcripts pass `text_normalization.normalize_transcript` first (lower case, numbers spelled
out, no punctuation); WER and CER are jiwer's, pooled over the whole set (total edits over total
reference words or characters), not averaged per utterance.
"""
from __future__ import annotations

import math
from typing import Sequence

import jiwer

from zipper_jax.speech.text_normalization import normalize_transcript


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
  """{'wer', 'cer'} of `hypotheses` against `references`, both normalised."""
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
  if not references:
    raise ValueError('no utterances to score')
  references = [normalize_transcript(r) for r in references]
  if not all(references):
    raise ValueError('a reference is empty after normalisation: it cannot be scored')
  hypotheses = [normalize_transcript(h) for h in hypotheses]
  return {'wer': jiwer.wer(references, hypotheses), 'cer': jiwer.cer(references, hypotheses)}


def perplexity(mean_loss: float) -> float:
  """exp of a token-weighted mean cross-entropy in nats."""
  return math.exp(mean_loss)
