"""Error rates and perplexity, computed the same way for every system so that they compare.

Transcripts pass `text_normalization.normalize_transcript` first (lower case, numbers spelled
out, no punctuation); WER and CER are jiwer's, pooled over the whole set (total edits over total
reference words or characters), not averaged per utterance. Each utterance's word edits are kept
beside the rates, so that two systems can be compared on the same utterances (`claims`).
"""
from __future__ import annotations

import math
import os
import re
from typing import Sequence

import jiwer

from zipper_jax.errors import UserError

from zipper_jax.speech.text_normalization import normalize_transcript


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
  """{'wer', 'cer', 'word_errors'} of `hypotheses` against `references`, both normalised;
  `word_errors` holds [edits, reference words] per utterance."""
  if len(references) != len(hypotheses):
    raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
  if not references:
    raise ValueError('no utterances to score')
  references = [normalize_transcript(r) for r in references]
  if not all(references):
    raise ValueError('a reference is empty after normalisation: it cannot be scored')
  hypotheses = [normalize_transcript(h) for h in hypotheses]
  words = jiwer.process_words(references, hypotheses)
  edits = [sum(chunk.ref_end_idx - chunk.ref_start_idx if chunk.type != 'insert'
               else chunk.hyp_end_idx - chunk.hyp_start_idx
               for chunk in alignment if chunk.type != 'equal')
           for alignment in words.alignments]
  return {'wer': words.wer, 'cer': jiwer.cer(references, hypotheses),
          'word_errors': [[e, len(r)] for e, r in zip(edits, words.references)]}


def perplexity(mean_loss: float) -> float:
  """exp of a token-weighted mean cross-entropy in nats."""
  return math.exp(mean_loss)


def read_transcription(path: str) -> dict[str, str]:
  """{utterance id: text} of a CMU Sphinx transcription file (lines `<s> text </s> (id)`, as in
  Debian's pocketsphinx-testdata; the sentence marks are optional)."""
  references = {}
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      match = re.fullmatch(r'\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^()]+)\)\s*', line)
      if not match:
        raise UserError(f'{path}:{number}: not `text (utterance id)`: {line.strip()!r}')
      references[match.group(2)] = match.group(1).strip()
  return references


def references_for(paths: Sequence[str], transcription: str) -> list[str]:
  """The reference of each audio file, matched by its name without extension."""
  references = read_transcription(transcription)
  ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  missing = [p for p, i in zip(paths, ids) if i not in references]
  if missing:
    raise UserError(f'{transcription} has no reference for {", ".join(missing)}')
  return [references[i] for i in ids]
