"""The paper's claims, judged on measured results with their uncertainty.

Zayats et al. (2024) claim, for a Zipper of a text and a speech tower against the Single Decoder
(one decoder, the text tower grown to speech tokens):

  (a) ASR: the Zipper (text tower frozen) is competitive with the Single Decoder;
  (b) TTS: the Zipper with a trainable speech tower is better, about 40% relatively in WER;
  (c) with 1% of the aligned data the Zipper still learns, where the Single Decoder does not:
      its ASR beats the Single Decoder's on the same 1%;
  (d) a frozen text tower keeps its text ability exactly.

(a)-(c) compare two systems on the same test utterances, so their uncertainty is a paired
bootstrap: utterances are resampled with replacement, the same draw for both systems, and the
statistic (the relative reduction of pooled WER, 1 - WER(Zipper) / WER(Single Decoder)) is taken
on each draw; its 95% percentile interval is the uncertainty. A claim is `reproduced` when the
whole interval supports it, `not reproduced` when the whole interval contradicts it, and
`inconclusive` otherwise: more test utterances, or a larger difference, are needed. Two systems
that both score 100% WER or more are `inconclusive` whatever the interval: an empty output
scores 100%, so neither conveys a word on balance, and one that inserts fewer wrong words is
not the better speaker or transcriber the claim is about. (d) is exact: the same weights give
the same perplexity, so there is no interval.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = 'reproduced', 'not reproduced', 'inconclusive'
# "Competitive" ASR, made testable: the Zipper's WER at most this much relatively above the Single
# Decoder's (non-inferiority; the paper's ASR differences are within a few percent relative).
ASR_PARITY_MARGIN = 0.10
PAPER_TTS_REDUCTION = 0.40
CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Verdict:
  """One claim: what was measured, the estimate and its interval, and the verdict."""
  claim: str
  statement: str
  measure: str
  estimate: float
  low: float
  high: float
  verdict: str
  paper: float | None = None
  reason: str = ''  # why a verdict is not the interval's


def relative_reduction(ours: Sequence, theirs: Sequence, *, resamples: int = RESAMPLES,
                       confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
  """1 - WER(ours) / WER(theirs) and its paired-bootstrap interval: (estimate, low, high).

  `ours`, `theirs`: [edits, reference words] per utterance of the same utterances, in the same
  order (`metrics.error_rates`' `word_errors`). Positive: `ours` makes fewer errors."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  if ours.shape != theirs.shape or ours.ndim != 2 or ours.shape[1] != 2 or not len(ours):
    raise ValueError(f'word errors of {ours.shape} and {theirs.shape}: both need [edits, words] '
                     'for each of the same utterances')
  if not np.array_equal(ours[:, 1], theirs[:, 1]):
    raise ValueError('the two systems were scored on different utterances (reference word '
                     'counts differ)')
  draws = np.random.default_rng(seed).integers(0, len(ours), (resamples, len(ours)))
  reduction = lambda o, t: np.where(t > 0, 1 - o / np.maximum(t, 1), np.where(o > 0, -np.inf, 0.))
  estimate = float(reduction(ours[:, 0].sum(), theirs[:, 0].sum()))
  sampled = reduction(ours[draws, 0].sum(1), theirs[draws, 0].sum(1))
  tail = (1 - confidence) / 2
  low, high = np.quantile(sampled, [tail, 1 - tail], method='inverted_cdf')  # infinities too
  return estimate, float(low), float(high)


def _above(claim: str, statement: str, measure: str, ours, theirs, threshold: float,
           paper: float | None = None) -> Verdict:
  """The claim that the relative reduction exceeds `threshold`."""
  estimate, low, high = relative_reduction(ours, theirs)
  rates = [pooled_error_rate(errors) for errors in (ours, theirs)]
  if min(rates) >= 1:
    return Verdict(claim, statement, measure, estimate, low, high, INCONCLUSIVE, paper,
                   f'neither system beats an empty output (WER {rates[0]:.1%} and '
                   f'{rates[1]:.1%})')
  verdict = (REPRODUCED if low > threshold else NOT_REPRODUCED if high <= threshold
             else INCONCLUSIVE)
  return Verdict(claim, statement, measure, estimate, low, high, verdict, paper)


def pooled_error_rate(word_errors: Sequence) -> float:
  """Edits over reference words, pooled over utterances ([edits, words] each)."""
  errors = np.asarray(word_errors, np.float64)
  return float(errors[:, 0].sum() / max(errors[:, 1].sum(), 1))


def asr_parity(zipper: Mapping, single: Mapping) -> Verdict:
  """(a) on one split's evaluations (`zipper eval`'s eval/<split>.json) of the two systems."""
  return _above('a', 'ASR: the Zipper (text frozen) is competitive with the Single Decoder',
                f'relative WER reduction, beam search (claim: > -{ASR_PARITY_MARGIN:.0%})',
                zipper['asr_beam']['word_errors'], single['asr_beam']['word_errors'],
                -ASR_PARITY_MARGIN)


def tts_gain(zipper: Mapping, single: Mapping) -> Verdict:
  """(b): the Zipper's judged TTS WER below the Single Decoder's."""
  return _above('b', 'TTS: the Zipper (speech tower trainable) is better than the Single Decoder',
                'relative TTS WER reduction by the judge (claim: > 0; paper: 40%)',
                zipper['tts']['word_errors'], single['tts']['word_errors'], 0.,
                PAPER_TTS_REDUCTION)


def low_resource_asr(zipper: Mapping, single: Mapping) -> Verdict:
  """(c), on evaluations of the two systems trained on the same 1% of the aligned data."""
  return _above('c', 'With 1% of the aligned data the Zipper learns ASR better than the Single '
                'Decoder', 'relative WER reduction, beam search, both on 1% (claim: > 0)',
                zipper['asr_beam']['word_errors'], single['asr_beam']['word_errors'], 0.)


def text_preserved(perplexities: Mapping[str, Mapping]) -> Verdict:
  """(d), on the text perplexities (eval/text_perplexity.json) of runs with a frozen text tower:
  the run's text tower alone against the pre-trained tower, the largest relative difference."""
  if not perplexities:
    raise ValueError('no run with a frozen text tower to judge claim (d) on')
  differences = [abs(p['run_text_tower'] - p['tower_alone']) / p['tower_alone']
                 for p in perplexities.values()]
  worst = max(differences)
  return Verdict('d', 'A frozen text tower keeps its text ability exactly',
                 f"largest relative perplexity change of the text tower over {len(differences)} "
                 'runs (claim: 0)', worst, worst, worst,
                 REPRODUCED if worst == 0 else NOT_REPRODUCED)
