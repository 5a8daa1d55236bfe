"""What a trained speech-text run is scored on, per test split (`test_clean`, `test_other`):

- ASR: WER and CER (`metrics`: normalised transcripts, jiwer), greedy and beam search;
- TTS by the paper's protocol (`tts_protocol`): generated units -> resynthesised audio -> the
  external judge -> WER against the input text, beside the judge's floor (original audio) and
  ceiling (resynthesised ground-truth units) on the same sentences;
- unimodal preservation: perplexity of held-out text (`text_lm`, validation) under the
  pre-trained text tower, under the run's own text tower alone, and inside the trained model with
  text-only input (a Zipper's gated cross-attention MLPs and input projection act on text even
  when no speech is there to attend to; the Single Decoder's text tower is the model).

Examples come from the registered test tasks (`asr`, `tts`, or the Single Decoder's `single_`
twins) through `infer.predict_task`, as any task is decoded; only the floor reads the corpus's
original audio of the same sentences.

`SpeechTextEval` is a hook, hook(step, model, params) -> {name: value}: `zipper eval` calls it on
a checkpoint (gin/runs/eval_speech_text.gin) and the trainer every `train.eval_every` steps
(`train.eval_hooks`). Each call writes MODEL_DIR/eval/<split>.json and text_perplexity.json.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import gin

from zipper_jax import atomic_files, data, infer, models
from zipper_jax import train as train_lib
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import corpus, metrics, parallel, text_normalization, tts_protocol
from zipper_jax.speech.inference import SpeechText
from zipper_jax.speech.vocabulary import SpeechVocabulary

SPLITS = ('test_clean', 'test_other')


@gin.configurable
class SpeechTextEval:
  """`model_dir`: the run (its vocabularies and lengths; results go to its eval/).
  `text_tower_dir`: the text tower's pre-training run, for the perplexity of the tower alone
  (None: not measured). `asr_utterances`, `tts_utterances`: the first so many of each split
  (None: all; 0 tts: no TTS; `beam_size` 1: greedy only); the judge takes about half a second
  per second of clean speech, and some four times that on resynthesised speech.
  `tts_max_length_ratio`: generated speech stops at that many units per token of its text (the
  longest of a batch; `Model.predict_batch`), as ESPnet's TTS `maxlenratio` (10): the corpus has
  3-6, so only speech that never ends is cut. `asr_max_length_ratio`: the same for transcripts,
  in tokens per unit of speech (ESPnet's ASR default: as long as its input); the embedded corpus
  has at most 0.5. `corpus_dir`:
  where the original audio is (default: the folder the tasks read). `reference_dir`: where the
  protocol's floor and ceiling are kept (default MODEL_DIR/eval)."""

  def __init__(self, *, model_dir: str = gin.REQUIRED,
               task_feature_lengths: Mapping[str, int] | None = None,
               text_tower_dir: str | None = None, splits: Sequence[str] = SPLITS,
               beam_size: int = 4, asr_utterances: int | None = None,
               tts_utterances: int | None = 32, tts_max_length_ratio: float | None = 10.0,
               asr_max_length_ratio: float | None = 1.0,
               batch_size: int = 16,
               perplexity_batches: int | None = None, judge_workers: int = 2,
               corpus_dir: str | None = None, reference_dir: str | None = None):
    self.run = RunDir(model_dir)
    self.lengths = dict(task_feature_lengths or self.run.task_feature_lengths)
    self.text_tower_dir, self.splits, self.beam_size = text_tower_dir, tuple(splits), beam_size
    self.asr_utterances, self.tts_utterances = asr_utterances, tts_utterances
    self.tts_max_length_ratio = tts_max_length_ratio
    self.asr_max_length_ratio = asr_max_length_ratio
    self.batch_size, self.perplexity_batches = batch_size, perplexity_batches
    self.judge_workers = judge_workers
    self.corpus_dir, self.reference_dir = corpus_dir, reference_dir

  def __call__(self, step: int, model: models.Model, params) -> dict[str, float]:
    system = SpeechText(model, params, self.run.vocabularies(), self.lengths, self.batch_size)
    prefix = 'single_' if system.single else ''
    flat = {}
    with parallel.Workers(self.judge_workers) as judges:
      for split in self.splits:
        result = {'step': int(step), **self._asr(system, f'{prefix}asr', split)}
        if (self.tts_utterances != 0 and isinstance(system.speech, SpeechVocabulary)
            and system.speech.has_assets):
          result['tts'] = self._tts(system, f'{prefix}tts', split, judges)
        self.run.write_eval(split, result)
        flat |= {f'{split}/{key}': value for key, value in flatten(result).items()}
    perplexity = {'step': int(step), **self._perplexity(model, params, system.single)}
    self.run.write_eval('text_perplexity', perplexity)
    flat |= {f'text/{k}': v for k, v in perplexity.items() if k != 'step'}
    print(f'\n{self.run.path} at step {step}:\n' + format_table(
        {model.__class__.__name__: flat}, self.splits), flush=True)
    return flat

  def _asr(self, system: SpeechText, task: str, split: str) -> dict:
    result = {'beam_size': self.beam_size}
    batches = list(infer.task_batches(system.model, task, split, self.lengths, self.batch_size,
                                      self.asr_utterances))  # read once, decoded both ways
    for name, beam_size in (('greedy', 1), ('beam', self.beam_size))[:1 + (self.beam_size > 1)]:
      examples = infer.predict_batches(system.model, system.params, batches,
                                       output=system.text_tower, beam_size=beam_size,
                                       max_length_ratio=self.asr_max_length_ratio)
      references = [system.text_of(e['target']) for e in examples]
      hypotheses = [system.text_of(e['prediction']) for e in examples]
      result['utterances'] = len(examples)
      result[f'asr_{name}'] = metrics.error_rates(references, hypotheses)
      if beam_size == 1:
        result['asr_samples'] = [{'reference': r, 'hypothesis': h}
                                 for r, h in zip(references[:5], hypotheses[:5])]
    return result

  def _tts(self, system: SpeechText, task: str, split: str, judges: parallel.Workers) -> dict:
    """The model's judged WER, and the protocol's floor and ceiling on the same sentences."""
    examples = infer.predict_task(system.model, system.params, task, split,
                                  output=system.speech_tower, lengths=self.lengths,
                                  batch_size=self.batch_size, max_examples=self.tts_utterances,
                                  max_length_ratio=self.tts_max_length_ratio)
    texts = [system.text_of(e['prompt'][system.text_tower]) for e in examples]
    resynthesizer = system.speech.resynthesizer_path
    heard = tts_protocol.judge_units(resynthesizer, [system.units_of(e['prediction'])
                                                     for e in examples],
                                     judges, 'judging generated speech')
    truth = [system.units_of(e['target']) for e in examples]
    return {'utterances': len(examples), **metrics.error_rates(texts, heard),
            **self._reference_figures(task, split, texts, truth, resynthesizer, judges),
            'samples': [{'text': t, 'heard': h} for t, h in zip(texts[:3], heard[:3])]}

  def _reference_figures(self, task: str, split: str, texts: list[str], truth: list,
                         resynthesizer: str, judges: parallel.Workers) -> dict:
    """The protocol's floor and ceiling, which depend on the corpus alone: computed once and
    kept in `reference_dir` (runs on one corpus may share it)."""
    path = os.path.join(self.reference_dir or self.run.eval_dir,
                        f'tts_reference_{split}_{len(texts)}.json')
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    figures = tts_protocol.reference_figures(texts, truth, resynthesizer, judges,
                                             self._original_audio(task, split, texts))
    atomic_files.write_json(path, figures)
    return figures

  def _original_audio(self, task: str, split: str, texts: list[str]) -> list[str] | None:
    """The corpus's recordings of `texts` (None where any is missing: no floor)."""
    corpus_dir = self.corpus_dir or data.mixture_or_task(task).source.tfds_dataset.data_dir
    by_text = {text_normalization.normalize_transcript(line['text']):
               os.path.join(corpus_dir, line['audio'])
               for line in corpus.read_manifest(corpus_dir, split) if 'audio' in line}
    paths = [by_text.get(text_normalization.normalize_transcript(t)) for t in texts]
    return None if None in paths else paths

  def _perplexity(self, model: models.Model, params, single: bool) -> dict:
    """Held-out text's perplexity, on the same tokens: inside `model` (text-only input), under
    the run's own text tower alone (a Zipper's; bit-identical to the pre-trained one when it
    was frozen), and under the pre-trained text tower (`text_tower_dir`)."""
    text_length = max(self.lengths.values())
    text_lm = lambda m, p, task, lengths: metrics.perplexity(train_lib.evaluate(
        m, p, task, lengths, self.batch_size, max_batches=self.perplexity_batches)['eval/loss'])
    config = model.text_config if single else model.tower_configs['text']
    tower = models.TowerModel(config, 'text')
    result = {'inside_model': text_lm(model, params, 'single_text_lm' if single else 'text_lm',
                                      self.lengths)}
    if not single:
      result['run_text_tower'] = text_lm(tower, params['text'], 'text_lm', {'text': text_length})
    if self.text_tower_dir:
      result['tower_alone'] = text_lm(tower, RunDir(self.text_tower_dir).load_params(),
                                      'text_lm', {'text': text_length})
    return result


def flatten(result: Mapping, prefix: str = '') -> dict[str, float]:
  """Numbers of a nested result as {'a/b': value} (TensorBoard scalars, table cells)."""
  flat = {}
  for key, value in result.items():
    if isinstance(value, Mapping):
      flat |= flatten(value, f'{prefix}{key}/')
    elif isinstance(value, (int, float)) and key not in ('step', 'utterances', 'beam_size'):
      flat[f'{prefix}{key}'] = float(value)
  return flat


def load_results(model_dir: str, splits: Sequence[str] = SPLITS) -> dict[str, float]:
  """The flat figures a run's last evaluation wrote (those it has)."""
  run, flat = RunDir(model_dir), {}
  for name in (*splits, 'text_perplexity'):
    result = run.read_eval(name)
    if result is not None:
      flat |= {f'{name}/{k}' if name in splits else f'text/{k}': v
               for k, v in flatten(result).items()}
  return flat


# Rows of the results table: (label, flat key after the split).
ROWS = (('ASR WER, greedy', 'asr_greedy/wer'), ('ASR CER, greedy', 'asr_greedy/cer'),
        ('ASR WER, beam search', 'asr_beam/wer'), ('ASR CER, beam search', 'asr_beam/cer'),
        ('TTS WER (judge)', 'tts/wer'), ('TTS floor: judge on original audio', 'tts/floor_wer'),
        ('TTS ceiling: judge on resynthesised truth', 'tts/ceiling_wer'))


def format_table(runs: Mapping[str, Mapping[str, float]], splits: Sequence[str] = SPLITS) -> str:
  """A Markdown table: one column per run, rows per split and metric, then text perplexity."""
  names = list(runs)
  lines = ['| | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  cell = lambda run, key, pct: ('' if key not in runs[run] else
                                f'{runs[run][key]:.1%}' if pct else f'{runs[run][key]:.2f}')
  for split in splits:
    for label, key in ROWS:
      key = f'{split}/{key}'
      if any(key in runs[n] for n in names):
        lines.append(f'| {split}: {label} | ' + ' | '.join(cell(n, key, True) for n in names)
                     + ' |')
  for label, key in (('text perplexity: pre-trained text tower', 'text/tower_alone'),
                     ("text perplexity: the run's text tower alone", 'text/run_text_tower'),
                     ('text perplexity: the model, text-only input', 'text/inside_model')):
    if any(key in runs[n] for n in names):
      lines.append(f'| {label} | ' + ' | '.join(cell(n, key, False) for n in names) + ' |')
  return '\n'.join(lines)
