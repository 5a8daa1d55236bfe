"""`zipper report --model_dir D [--compare D2 ...]`: one Markdown page that sets runs side by side.

It reads what the runs already hold, and computes nothing: the figures of their last evaluation
(`MODEL_DIR/eval/*.json`, written by `zipper eval` or the trainer's hook) and the training
curves from the TensorBoard event files the trainer writes. Out: `report.md`, `training.png`
(loss per tower against step, one panel per tower) and `wer.png` (WER per run), under `--out`
(default `D/report`).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
from typing import Sequence

import numpy as np

from zipper_jax.speech import evaluation


def training_curves(model_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} of every scalar in the run's event files (clu writes scalars as
  tensors)."""
  # TensorBoard's readers take seconds to import; only a report reads event files.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  curves = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
    events = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0, 'scalars': 0})
    events.Reload()
    for tag in events.Tags()['tensors']:
      for event in events.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.shape == () and np.issubdtype(value.dtype, np.number):
          curves[tag][event.step] = float(value)  # a resumed run's repeated steps: the last
    for tag in events.Tags()['scalars']:
      for event in events.Scalars(tag):
        curves[tag][event.step] = event.value
  return {tag: (np.asarray(sorted(points)), np.asarray([points[s] for s in sorted(points)]))
          for tag, points in curves.items()}


def _tower_losses(curves: dict) -> dict[str, tuple]:
  """Training loss per tower: tags `<tower>/loss` (the trainer's per-tower metrics)."""
  return {tag.split('/')[0]: curve for tag, curve in curves.items()
          if tag.endswith('/loss') and tag.count('/') == 1 and not tag.startswith('eval')}


def _pyplot():
  """matplotlib, drawing to files; imported here because it is heavy and only reports draw."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_training(runs: dict[str, dict], path: str) -> bool:
  """One panel per tower, one line per run; False if no run has curves."""
  plt = _pyplot()
  towers = sorted({t for curves in runs.values() for t in _tower_losses(curves)})
  if not towers:
    return False
  figure, axes = plt.subplots(1, len(towers), figsize=(5 * len(towers), 3.5), squeeze=False)
  for axis, tower in zip(axes[0], towers):
    for name, curves in runs.items():
      if tower in _tower_losses(curves):
        steps, values = _tower_losses(curves)[tower]
        axis.plot(steps, values, label=name)
    axis.set(title=f'{tower} tower', xlabel='step', ylabel='training loss (nats/token)')
    axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return True


def plot_wer(results: dict[str, dict], path: str, splits: Sequence[str]) -> bool:
  """Grouped bars: (split, ASR greedy / ASR beam / TTS) groups, one bar per run."""
  plt = _pyplot()
  groups = [(f'{split}\n{label}', f'{split}/{key}') for split in splits
            for label, key in (('ASR greedy', 'asr_greedy/wer'), ('ASR beam', 'asr_beam/wer'),
                               ('TTS', 'tts/wer'))]
  values = {name: [flat.get(key) for _, key in groups] for name, flat in results.items()}
  keep = [i for i in range(len(groups)) if any(v[i] is not None for v in values.values())]
  if not keep:
    return False
  figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(keep)), 3.5))
  width = 0.8 / len(values)
  for n, (name, row) in enumerate(values.items()):
    axis.bar(np.arange(len(keep)) + n * width, [100 * (row[i] or 0) for i in keep], width,
             label=name)
  axis.set_xticks(np.arange(len(keep)) + width * (len(values) - 1) / 2,
                  [groups[i][0] for i in keep], fontsize=8)
  axis.set(ylabel='WER (%)')
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return True


def write_report(model_dirs: Sequence[str], out: str,
                 splits: Sequence[str] = evaluation.SPLITS) -> str:
  """Writes report.md and its plots under `out`; returns the Markdown."""
  names = _run_names(model_dirs)
  results = {n: evaluation.load_results(d, splits) for n, d in zip(names, model_dirs)}
  curves = {n: training_curves(d) for n, d in zip(names, model_dirs)}
  os.makedirs(out, exist_ok=True)
  lines = ['# Runs side by side', '']
  lines += [f'- **{n}**: `{os.path.abspath(d)}`' for n, d in zip(names, model_dirs)] + ['']
  if any(results.values()):
    lines += ['## Results', '', evaluation.format_table(results, splits), '']
    lines += ['WER and CER after `text_normalization.normalize_transcript`; TTS by the judge '
              '(pocketsphinx) on resynthesised generated units.', '']
  else:
    lines += ['No evaluation results yet (`zipper eval` writes them to MODEL_DIR/eval).', '']
  if plot_wer(results, os.path.join(out, 'wer.png'), splits):
    lines += ['## WER per run', '', '![WER per run](wer.png)', '']
  if plot_training(curves, os.path.join(out, 'training.png')):
    lines += ['## Training curves', '', '![training loss per tower](training.png)', '']
  markdown = '\n'.join(lines)
  with open(os.path.join(out, 'report.md'), 'w') as f:
    f.write(markdown)
  return markdown


def _run_names(model_dirs: Sequence[str]) -> list[str]:
  """Each run's folder name, or its path where folder names repeat."""
  names = [os.path.basename(os.path.normpath(d)) for d in model_dirs]
  return [n if names.count(n) == 1 else os.path.normpath(d) for n, d in zip(names, model_dirs)]


def add_parser(subparsers) -> None:
  command = subparsers.add_parser(
      'report', help='Write a Markdown report of runs side by side (results table, plots).',
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--model_dir', required=True, help='the run the report is about')
  command.add_argument('--compare', nargs='*', default=[], help='runs to set beside it')
  command.add_argument('--out', help='folder for report.md and its plots (default '
                                     'MODEL_DIR/report)')
  command.set_defaults(run=run)


def run(args) -> int:
  dirs = [args.model_dir, *args.compare]
  missing = [d for d in dirs if not os.path.isdir(d)]
  if missing:
    raise SystemExit(f'zipper report: no run folder {missing}')
  out = args.out or os.path.join(args.model_dir, 'report')
  print(write_report(dirs, out))
  print(f'\nwrote {os.path.join(out, "report.md")}')
  return 0
