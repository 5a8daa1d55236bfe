"""The paper's TTS evaluation: speech units -> audio (the corpus's resynthesiser) -> an external
ASR judge (`judge`, pocketsphinx) -> WER against the text the speech should say.

Two reference figures frame a model's: the judge on the original audio (the floor: what the judge
itself gets wrong) and on resynthesised ground-truth units (the ceiling: the best a model that
predicts the corpus's own units can reach through this resynthesiser). Judging runs in a set of
`parallel.Workers` that an evaluation shares: each worker loads librosa and pocketsphinx once.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from zipper_jax.speech import audio, judge, metrics, parallel, resynthesis


@functools.cache
def _resynthesizer(path: str):
  return resynthesis.Resynthesizer.load(path)


def _judge_units(job: tuple[str, Sequence[int]]) -> str:
  path, units = job
  if not len(units):
    return ''  # nothing generated: every word is an error
  return judge.transcribe(_resynthesizer(path).audio(np.asarray(units)))


def _judge_file(path: str) -> str:
  return judge.transcribe(audio.read_audio(path))


def judge_units(resynthesizer_path: str, unit_lists: Sequence[Sequence[int]],
                workers: parallel.Workers, description: str = 'judging') -> list[str]:
  """The judge's transcripts of each unit sequence, resynthesised."""
  jobs = [(resynthesizer_path, list(map(int, units))) for units in unit_lists]
  return workers.map(_judge_units, jobs, description)


def judge_files(paths: Sequence[str], workers: parallel.Workers,
                description: str = 'judging') -> list[str]:
  return workers.map(_judge_file, list(paths), description)


def reference_figures(texts: Sequence[str], units: Sequence[Sequence[int]],
                      resynthesizer_path: str, workers: parallel.Workers,
                      audio_paths: Sequence[str] | None = None) -> dict[str, float]:
  """{'ceiling_wer', 'ceiling_cer'} and, given the original audio, {'floor_wer', 'floor_cer'}."""
  heard = judge_units(resynthesizer_path, units, workers, 'judging resynthesised truth')
  figures = {f'ceiling_{k}': v for k, v in metrics.error_rates(texts, heard).items()}
  if audio_paths is not None:
    heard = judge_files(audio_paths, workers, 'judging original audio')
    figures |= {f'floor_{k}': v for k, v in metrics.error_rates(texts, heard).items()}
  return figures
