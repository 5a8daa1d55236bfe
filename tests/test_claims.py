"""The verdict logic of the paper's claims on hand-made result sets: each verdict, by hand."""
import numpy as np
import pytest

from zipper_jax.speech import claims


def word_errors(edits, words=10):
  return [[e, words] for e in edits]


def evals(asr_edits, tts_edits=None):
  """An evaluation as `zipper eval` writes it, with only what the claims read."""
  result = {'asr_beam': {'word_errors': word_errors(asr_edits)}}
  if tts_edits is not None:
    result['tts'] = {'word_errors': word_errors(tts_edits)}
  return result


def test_relative_reduction_is_pooled_and_paired():
  estimate, low, high = claims.relative_reduction(word_errors([1, 2, 3]), word_errors([4, 4, 4]))
  assert estimate == pytest.approx(1 - 6 / 12)
  assert low <= estimate <= high
  # The same errors: every draw gives 0, so the interval is a point.
  assert claims.relative_reduction(word_errors([1, 5, 2]), word_errors([1, 5, 2])) == (0, 0, 0)


def test_relative_reduction_interval_narrows_with_more_utterances():
  rng = np.random.default_rng(0)
  width = []
  for n in (10, 1000):
    ours, theirs = rng.integers(0, 4, n), rng.integers(1, 6, n)
    _, low, high = claims.relative_reduction(word_errors(ours), word_errors(theirs))
    width.append(high - low)
  assert width[1] < width[0] / 5


def test_relative_reduction_refuses_different_utterances():
  with pytest.raises(ValueError, match='different utterances'):
    claims.relative_reduction([[1, 5], [2, 7]], [[1, 5], [2, 8]])
  with pytest.raises(ValueError, match='same utterances'):
    claims.relative_reduction([[1, 5]], [[1, 5], [2, 8]])


def test_clearly_better_zipper_reproduces_every_comparison():
  zipper, single = evals([1, 0, 1, 2] * 25, [2, 1, 2] * 10), evals([6, 5, 7, 6] * 25, [6, 7] * 15)
  for judge in (claims.asr_parity, claims.tts_gain, claims.low_resource_asr):
    verdict = judge(zipper, single)
    assert verdict.verdict == claims.REPRODUCED and verdict.low > 0, verdict


def test_clearly_worse_zipper_reproduces_none():
  zipper, single = evals([6, 5, 7, 6] * 25, [6, 7] * 15), evals([1, 0, 1, 2] * 25, [2, 1, 2] * 10)
  for judge in (claims.asr_parity, claims.tts_gain, claims.low_resource_asr):
    assert judge(zipper, single).verdict == claims.NOT_REPRODUCED


def test_parity_tolerates_a_small_loss_that_a_gain_claim_does_not():
  # 3% more errors on 2,000 utterances: competitive (a), but not better.
  rng = np.random.default_rng(1)
  single = rng.integers(2, 6, 2000)
  zipper = single.copy()
  zipper[rng.choice(2000, int(0.03 * single.sum()) // 1, replace=True)] += 1
  verdict = claims.asr_parity(evals(zipper), evals(single))
  assert -claims.ASR_PARITY_MARGIN < verdict.low < verdict.estimate < 0
  assert verdict.verdict == claims.REPRODUCED
  assert claims.low_resource_asr(evals(zipper), evals(single)).verdict == claims.NOT_REPRODUCED


def test_few_noisy_utterances_are_inconclusive():
  zipper, single = evals([3, 0, 2, 0], [3, 0, 2, 0]), evals([0, 3, 0, 2], [0, 3, 0, 2])
  for judge in (claims.asr_parity, claims.tts_gain, claims.low_resource_asr):
    verdict = judge(zipper, single)
    assert verdict.estimate == 0 and verdict.low < -claims.ASR_PARITY_MARGIN < 0 < verdict.high
    assert verdict.verdict == claims.INCONCLUSIVE


def test_two_systems_no_better_than_an_empty_output_are_inconclusive():
  # 11 and 13 errors in 10 words: the interval alone would call the first better.
  zipper, single = evals([11] * 100, [11] * 100), evals([13] * 100, [13] * 100)
  for judge in (claims.asr_parity, claims.tts_gain, claims.low_resource_asr):
    verdict = judge(zipper, single)
    assert verdict.low > 0 and verdict.verdict == claims.INCONCLUSIVE
    assert 'empty output' in verdict.reason and '110.0%' in verdict.reason
  # One of them below 100%: the interval decides again.
  verdict = claims.tts_gain(evals([9] * 100, [9] * 100), single)
  assert verdict.verdict == claims.REPRODUCED and not verdict.reason


def test_text_preserved_is_exact():
  same = {'zipper': {'run_text_tower': 54.79, 'tower_alone': 54.79},
          'zipper_1pct': {'run_text_tower': 54.79, 'tower_alone': 54.79}}
  assert claims.text_preserved(same).verdict == claims.REPRODUCED
  moved = same | {'zipper_1pct': {'run_text_tower': 54.80, 'tower_alone': 54.79}}
  verdict = claims.text_preserved(moved)
  assert verdict.verdict == claims.NOT_REPRODUCED
  assert verdict.estimate == pytest.approx(0.01 / 54.79)
  with pytest.raises(ValueError, match='frozen text tower'):
    claims.text_preserved({})
