"""Decode and score any registered seqio task with a trained run: no code of the task's own.

  zipper predict --model_dir D --module tasks.sensor_captions --task sensor_captioning \\
      --split validation --output text [--beam_size 4] [--examples 8]
  zipper score --model_dir D --module tasks.speech_text --task asr --split test_clean

Both read the task's split through the run's feature converter, unpacked, and print one JSON
line per example. `predict` decodes tower `--output` from the others (`Model.predict_batch`) and
prints the prompt towers, the target and the prediction, each through its task vocabulary;
`score` prints each example's log-likelihood of its weighted targets (`Model.score_batch`).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
from typing import Iterable, Iterator, Mapping

import jax
import numpy as np
import seqio

from zipper_jax import data
from zipper_jax.models import Model
from zipper_jax.run_dir import RunDir


def task_batches(model: Model, task: str, split: str, lengths: Mapping[str, int],
                 batch_size: int, max_examples: int | None = None) -> Iterator[tuple[dict, int]]:
  """(unpacked batch, number of real rows) over a split in order; the last batch is filled
  with padding rows, so that every batch has one shape."""
  batches = data.get_dataset(task, lengths, model.towers, batch_size, split=split,
                             shuffle=False, seed=None, num_epochs=1, drop_remainder=False)
  seen, source = 0, data.describe(task)
  for batch in batches.as_numpy_iterator():
    data.check_token_ids(batch, model.vocab_sizes, source)
    rows = len(next(iter(batch.values())))
    if max_examples is not None:
      rows = min(rows, max_examples - seen)
    if rows <= 0:
      return
    yield {k: np.pad(v[:rows], [(0, batch_size - rows)] + [(0, 0)] * (v.ndim - 1))
           for k, v in batch.items()}, rows
    seen += rows


def end_id(batch: Mapping[str, np.ndarray], output: str, rows: int) -> int:
  """The token every example's weighted `output` targets end with (the task's end of text or of
  audio): where decoding stops."""
  weights = batch[f'{output}_loss_weights'][:rows] > 0
  last = weights.shape[1] - 1 - np.argmax(weights[:, ::-1], axis=1)
  ends = set(batch[f'{output}_target_tokens'][np.arange(rows), last][weights.any(1)].tolist())
  if len(ends) != 1:
    raise ValueError(f'the weighted {output!r} targets end with tokens {sorted(ends)}: decoding '
                     'needs one end token (give eos_id)')
  return ends.pop()


def predict_task(model: Model, params, task: str, split: str, *, output: str,
                 lengths: Mapping[str, int], batch_size: int = 16,
                 max_examples: int | None = None, eos_id: int | None = None,
                 **decode) -> list[dict]:
  """Per example: 'prompt' ({tower: ids} of the towers it was given: their target tokens),
  'target' (`output`'s weighted target ids) and 'prediction' (ids, end token dropped).
  `decode`: what `Model.predict_batch` takes (beam_size, temperature, prompt_towers, ...)."""
  return predict_batches(model, params, task_batches(model, task, split, lengths, batch_size,
                                                     max_examples),
                         output=output, eos_id=eos_id, **decode)


def predict_batches(model: Model, params, batches: Iterable[tuple[dict, int]], *, output: str,
                    eos_id: int | None = None, **decode) -> list[dict]:
  """`predict_task` over batches already read (`task_batches`): a split read once can be
  decoded several ways."""
  examples = []
  for batch, rows in batches:
    stop = end_id(batch, output, rows) if eos_id is None else eos_id
    generated = jax.device_get(model.predict_batch(params, batch, output=output, eos_id=stop,
                                                   **decode))
    for row in range(rows):
      weighted = batch[f'{output}_loss_weights'][row] > 0
      prediction = generated.tokens[row, :generated.lengths[row]].tolist()
      examples.append({
          'prompt': {t: _ids(batch[f'{t}_target_tokens'][row][
              (batch[f'{t}_segment_ids'][row] > 0) & (batch[f'{t}_loss_weights'][row] == 0)])
                     for t in model.towers},
          'target': _ids(batch[f'{output}_target_tokens'][row][weighted]),
          'prediction': prediction[:-1] if prediction[-1:] == [stop] else prediction})
  return examples


@functools.lru_cache(maxsize=None)
def _jitted_score(model: Model):
  return jax.jit(model.score_batch)


def score_task(model: Model, params, task: str, split: str, *, lengths: Mapping[str, int],
               batch_size: int = 16, max_examples: int | None = None) -> list[float]:
  """Each example's log-likelihood of its weighted targets."""
  scores = []
  for batch, rows in task_batches(model, task, split, lengths, batch_size, max_examples):
    scores += jax.device_get(_jitted_score(model)(params, batch))[:rows].tolist()
  return scores


def _ids(tokens: np.ndarray) -> list[int]:
  return [int(i) for i in tokens]


def _decoded(vocabulary: seqio.Vocabulary, ids: list[int]):
  return vocabulary.decode(ids) if ids else ''


def run_predict(args) -> int:
  run, features = _load(args)
  for example in predict_task(
      run.model, run.load_params(), args.task, args.split, output=args.output,
      lengths=run.task_feature_lengths, batch_size=args.batch_size,
      max_examples=args.examples, beam_size=args.beam_size, temperature=args.temperature):
    vocabulary = features[args.output].vocabulary
    print(json.dumps({
        'prompt': {t: _decoded(features[t].vocabulary, ids)
                   for t, ids in example['prompt'].items() if ids},
        'target': _decoded(vocabulary, example['target']),
        'prediction': _decoded(vocabulary, example['prediction'])}, default=str))
  return 0


def run_score(args) -> int:
  run, _ = _load(args)
  for score in score_task(run.model, run.load_params(), args.task, args.split,
                          lengths=run.task_feature_lengths, batch_size=args.batch_size,
                          max_examples=args.examples):
    print(json.dumps({'log_likelihood': score}))
  return 0


def _load(args) -> tuple[RunDir, Mapping[str, seqio.Feature]]:
  for module in args.module:
    importlib.import_module(module)
  return RunDir(args.model_dir), data.mixture_or_task(args.task).output_features


def add_parser(subparsers) -> None:
  for name, help_text, run in (
      ('predict', 'Decode one tower of a task\'s examples from the others, with a trained run.',
       run_predict),
      ('score', 'Log-likelihood of each of a task\'s examples under a trained run.', run_score)):
    command = subparsers.add_parser(name, help=help_text, description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument('--model_dir', required=True, help='the run (newest checkpoint)')
    command.add_argument('--module', action='append', default=[],
                         help='module that registers the task (repeat for several)')
    command.add_argument('--task', required=True, help='a registered seqio task')
    command.add_argument('--split', default='validation')
    command.add_argument('--batch_size', type=int, default=16)
    command.add_argument('--examples', type=int, help='the first so many (default: all)')
    if name == 'predict':
      command.add_argument('--output', required=True, help='the tower to decode')
      command.add_argument('--beam_size', type=int, default=1, help='1: greedy or sampled')
      command.add_argument('--temperature', type=float, default=0.0, help='0: greedy')
    command.set_defaults(run=run)
