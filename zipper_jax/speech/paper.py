"""The paper's table (`make paper`): its grid trained and evaluated on the embedded corpus, and a
verdict beside each of its claims (`claims`).

  1. the corpus, and a text and a speech tower pre-trained once: every row zips the same towers
  2. for each aligned-data size (100%, 10%, 1% of the aligned pairs: nested prefixes of one
     seeded order; `--aligned_fractions` picks fewer), three systems on the `asr_tts` mixture
     of that size:
       Zipper (text frozen)   the text tower frozen, the speech tower trainable
       Zipper (both frozen)   only cross-attention, its projections and gates train
       Single Decoder         the text tower grown to speech tokens, everything trainable
  3. every run evaluated on test_clean and test_other (ASR WER/CER greedy and beam search; TTS
     WER by the judge with its floor and ceiling; text perplexity), as `make demo` does
  4. the verdicts (a)-(d) with paired-bootstrap intervals, and OUT/results.json, results.md and
     aligned_data.png, stamped with the commit, date and machine they came from

The work folder is the demo's: runs the demo finished (corpus, towers, the 100% Zipper and
Single Decoder) are reused, as is anything a stopped `make paper` finished. Every run is the
`zipper` command a user would run with an experiment of gin/experiments/; `--scale` picks the
shapes, corpus and budgets (`tiny`: this project's 2-core CPU; `zipper_s`: one accelerator).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from typing import Any, Mapping

from zipper_jax import atomic_files
from zipper_jax.errors import UserError
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import audio, claims, evaluation, inference, metrics, report, stages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Recorded human speech: LibriVox clips with their transcription (Debian's pocketsphinx-testdata).
REAL_SPEECH_DIR = '/usr/share/pocketsphinx/test/data/librivox'
# What the corpus (features, k-means, resynthesis, voices, judge) and the runs compute with.
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'scipy', 'scikit-learn', 'librosa',
             'soxr', 'piper-tts', 'pocketsphinx', 'sentencepiece', 'seqio', 'tensorflow-cpu')


@dataclasses.dataclass(frozen=True)
class System:
  label: str
  experiment: str  # gin/experiments/<experiment>.gin
  mixture_prefix: str  # '' (Zipper tasks) or 'single_'
  init: tuple[str, ...]  # pre-trained towers it starts from


SYSTEMS = {
    'zipper': System('Zipper (text frozen)', 'tiny_zipper_frozen_text', '', ('text', 'speech')),
    'zipper_frozen_both': System('Zipper (both frozen)', 'tiny_zipper_frozen_both', '',
                                 ('text', 'speech')),
    'single_decoder': System('Single Decoder', 'tiny_single_decoder', 'single_', ('text',)),
}
# Aligned-data size -> the suffix of its mixture (tasks/speech_text.py) and of its run's folder.
FRACTIONS = {1.0: '', 0.1: '_10pct', 0.01: '_1pct'}


@dataclasses.dataclass(frozen=True)
class Scale:
  """Corpus, shapes and budgets of one grid; None: the experiments' own."""
  corpus: str
  model_gin: str | None = None  # tower shapes replacing the experiments' tiny ones
  pretrain_steps: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
  steps: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
  batch_size: int | None = None
  tts_utterances: int = 8
  aligned_fractions: tuple[float, ...] = tuple(FRACTIONS)  # 1.0 and at least one smaller


SCALES = {
    'tiny': Scale('tiny'),
    # ~100M-parameter towers on the `small` corpus (20,000 aligned pairs, four voices): one
    # accelerator.
    'zipper_s': Scale('small', 'gin/models/zipper_s.gin',
                      pretrain_steps={'text': 20_000, 'speech': 10_000},
                      steps={'zipper': 10_000, 'zipper_frozen_both': 10_000,
                             'single_decoder': 5_000},
                      batch_size=32, tts_utterances=64),
}


def run_name(system: str, fraction: float) -> str:
  return system + FRACTIONS[fraction]


def train_grid(workdir: str, scale: Scale, text_vocab_size: int) -> tuple[str, dict[str, str]]:
  """Pre-trains the towers and trains every row: (the text tower's run, {row: its run})."""
  common = {'TEXT_VOCAB_SIZE': text_vocab_size, 'BATCH_SIZE': scale.batch_size}
  shapes = [scale.model_gin] if scale.model_gin else []
  towers = {tower: stages.train(workdir, tower, f'tiny_{tower}_pretrain',
                                common | {'TRAIN_STEPS': scale.pretrain_steps.get(tower)},
                                shapes)
            for tower in ('text', 'speech')}
  runs = {}
  for fraction in scale.aligned_fractions:
    for name, system in SYSTEMS.items():
      stages.say(f'   {system.label} on {fraction:.0%} of the aligned pairs')
      runs[run_name(name, fraction)] = stages.train(
          workdir, run_name(name, fraction), system.experiment, common | {
              'MIXTURE_OR_TASK_NAME': f'{system.mixture_prefix}asr_tts{FRACTIONS[fraction]}',
              'INIT_CHECKPOINTS': {tower: towers[tower] for tower in system.init},
              'TRAIN_STEPS': scale.steps.get(name)}, shapes)
  return towers['text'], runs


@dataclasses.dataclass(frozen=True)
class Recordings:
  """Recorded speech to transcribe: audio files and the Sphinx `transcription` of their words."""
  directory: str
  paths: tuple[str, ...]

  @property
  def transcription(self) -> str:
    return os.path.join(self.directory, 'transcription')


def _recordings(directory: str) -> Recordings:
  """`--real_speech_dir`, checked before any training: its audio and a reference for each."""
  try:
    paths = tuple(audio.audio_files(directory))
    if not paths:
      raise UserError(f'{directory} holds no audio files (WAV, FLAC, ...)')
    recordings = Recordings(directory, paths)
    if not os.path.isfile(recordings.transcription):
      raise UserError(f'{directory} has no Sphinx `transcription` file')
    metrics.references_for(paths, recordings.transcription)
  except UserError as error:
    raise argparse.ArgumentTypeError(str(error)) from None
  return recordings


def transcribe_recordings(model_dir: str, recordings: Recordings,
                          beam_size: int = 4) -> dict[str, Any]:
  """`zipper transcribe --references` of the recordings."""
  transcripts, rates = inference.transcribe_recordings(model_dir, recordings.paths, beam_size,
                                                       recordings.transcription)
  references = metrics.references_for(recordings.paths, recordings.transcription)
  return {'utterances': len(recordings.paths), 'beam_size': beam_size, **rates,
          'samples': [{'reference': r, 'hypothesis': h}
                      for r, h in zip(references[:3], transcripts[:3])]}


def judge_claims(evals: Mapping[str, Mapping[str, Any]], low_fraction: float,
                 split: str = 'test_clean') -> list[dict]:
  """The verdicts (a)-(d) on the rows' evaluations ({row: {split or 'text_perplexity': ...}});
  (c) on the rows of `low_fraction` of the aligned pairs."""
  zipper, single = evals['zipper'][split], evals['single_decoder'][split]
  verdicts = [claims.asr_parity(zipper, single)]
  if 'tts' in zipper and 'tts' in single:
    verdicts.append(claims.tts_gain(zipper, single))
  low = run_name('zipper', low_fraction), run_name('single_decoder', low_fraction)
  verdicts.append(claims.low_resource_asr(evals[low[0]][split], evals[low[1]][split]))
  verdicts.append(claims.text_preserved({
      row: result['text_perplexity'] for row, result in evals.items()
      if row.startswith('zipper') and 'run_text_tower' in result['text_perplexity']}))
  return [dataclasses.asdict(v) | {'split': None if v.claim == 'd' else split} for v in verdicts]


def provenance() -> dict[str, Any]:
  """Where the numbers came from: the commit (and whether the tree had changes), date, machine,
  and the versions of the libraries the corpus and the runs compute with (the same commit has
  built different corpora on different machines)."""
  git = lambda *a: subprocess.run(['git', *a], cwd=REPO_ROOT, capture_output=True,
                                  text=True).stdout.strip()
  import jax  # the devices the runs used; imported with the runs' own settings
  with open('/proc/meminfo') as f:
    memory_kib = int(f.readline().split()[1])
  cpu_model, vector_extensions = _cpu()
  return {'commit': git('rev-parse', 'HEAD') or None,
          'uncommitted_changes': bool(git('status', '--porcelain', '--untracked-files=no')),
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'machine': {'platform': platform.platform(), 'processor': platform.machine(),
                      'cpu_model': cpu_model, 'vector_extensions': vector_extensions,
                      'cpus': os.cpu_count(),
                      'memory_gib': round(memory_kib / 2**20, 1),
                      'devices': [d.device_kind for d in jax.devices()]},
          'libraries': {name: _version(name) for name in LIBRARIES}}


def _cpu() -> tuple[str, list[str]]:
  """The CPU's model name and its vector extensions (BLAS and XLA pick code paths by them)."""
  try:
    with open('/proc/cpuinfo') as f:
      fields = dict(line.split(':', 1) for line in f if ':' in line and line.strip())
  except OSError:
    fields = {}
  fields = {key.strip(): value.strip() for key, value in fields.items()}
  vector = sorted(flag for flag in fields.get('flags', '').split()
                  if flag.startswith(('avx', 'fma', 'amx', 'sse4')))
  return fields.get('model name') or platform.processor(), vector


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _fractions(text: str) -> tuple[float, ...]:
  """--aligned_fractions: sizes with registered mixtures, 1 among them (claims a, b and d) and
  a smaller one (claim c), largest first."""
  try:
    fractions = sorted({float(f) for f in text.split(',')}, reverse=True)
  except ValueError:
    raise argparse.ArgumentTypeError(f'not comma-separated numbers: {text!r}') from None
  if not set(fractions) <= set(FRACTIONS) or 1.0 not in fractions or len(fractions) < 2:
    raise argparse.ArgumentTypeError(
        f'{text!r}: give 1 and one or more of {sorted(FRACTIONS)[:-1]} (the sizes with '
        'registered mixtures, tasks/speech_text.py)')
  return tuple(fractions)


def _percent(x: float) -> str:
  return f'{x:+.1%}' if abs(x) != float('inf') else ('+inf' if x > 0 else '-inf')


def markdown(results: Mapping[str, Any]) -> str:
  """results.md: the verdicts, then one table per aligned-data size."""
  meta = results['provenance']
  machine = ', '.join([meta['machine'].get('cpu_model') or 'CPU model not recorded',
                       *sorted(set(meta['machine']['devices']))])
  lines = ['# The paper\'s claims on the embedded corpus', '',
           f"Measured by `{results['command']}` at commit `{meta['commit']}`"
           f"{' (with uncommitted changes)' if meta['uncommitted_changes'] else ''} on "
           f"{meta['date']}, {meta['machine']['cpus']} CPUs ({machine}); this invocation took "
           f"{results['minutes_this_invocation']:.0f} minutes (stages it reused not counted). "
           'Generated: do not edit.', '',
           '| claim | measured | estimate [95% interval] | verdict |', '|---|---|---|---|']
  for v in results['claims']:
    interval = ('' if v['claim'] == 'd' else
                f" [{_percent(v['low'])}, {_percent(v['high'])}]")
    estimate = f"{v['estimate']:.2e}" if v['claim'] == 'd' else _percent(v['estimate'])
    where = f", {v['split']}" if v['split'] else ''
    lines.append(f"| ({v['claim']}) {v['statement']} | {v['measure']}{where} | "
                 f"{estimate}{interval} | **{v['verdict']}**"
                 f"{': ' + v['reason'] if v.get('reason') else ''} |")
  lines += ['', 'Intervals: paired bootstrap over test utterances '
            f'({claims.RESAMPLES} draws); reproduced when the whole interval supports the claim, '
            'not reproduced when the whole interval contradicts it.', '']
  for fraction in results['scale']['aligned_fractions']:
    rows = {SYSTEMS[name].label: results['runs'][run_name(name, fraction)]['figures']
            for name in SYSTEMS}
    lines += [f'## {fraction:.0%} of the aligned pairs', '', evaluation.format_table(rows), '']
  lines += ['![WER against aligned data](aligned_data.png)', '']
  if results['real_speech']:
    lines += ['## Recorded human speech', '',
              'LibriVox clips (Debian\'s pocketsphinx-testdata), a voice the models never heard, '
              'transcribed by each 100% run with beam search:', '',
              '| | WER | CER | utterances |', '|---|---|---|---|']
    lines += [f"| {SYSTEMS[name].label} | {r['wer']:.1%} | {r['cer']:.1%} | {r['utterances']} |"
              for name, r in results['real_speech'].items()]
    lines.append('')
  return '\n'.join(lines)


def plot_aligned_data(results: Mapping[str, Any], path: str, split: str = 'test_clean') -> None:
  """ASR (beam) and TTS WER against the aligned data, one line per system."""
  plt = report._pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  fractions = sorted(results['scale']['aligned_fractions'])
  for axis, (title, key) in zip(axes, (('ASR, beam search', 'asr_beam/wer'),
                                       ('TTS (judge)', 'tts/wer'))):
    for name, system in SYSTEMS.items():
      values = [results['runs'][run_name(name, f)]['figures'].get(f'{split}/{key}')
                for f in fractions]
      if None not in values:
        axis.plot([100 * f for f in fractions], [100 * v for v in values], 'o-',
                  label=system.label)
    if key == 'tts/wer':
      figures = results['runs']['zipper']['figures']
      for label, reference in (('judge on original audio', 'floor_wer'),
                               ('judge on resynthesised truth', 'ceiling_wer')):
        if f'{split}/tts/{reference}' in figures:
          axis.axhline(100 * figures[f'{split}/tts/{reference}'], ls='--', c='grey', lw=1)
          axis.annotate(label, (1, 100 * figures[f'{split}/tts/{reference}']), fontsize=7)
    axis.set(xscale='log', xlabel='aligned pairs (%)', ylabel=f'WER on {split} (%)', title=title)
    axis.set_xticks([100 * f for f in fractions], [f'{f:.0%}' for f in fractions])
  axes[0].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='runs/demo', help='runs and corpus (the demo\'s)')
  parser.add_argument('--out', default='experiments/paper', help='results JSON, table, plot')
  parser.add_argument('--scale', default='tiny', choices=sorted(SCALES))
  parser.add_argument('--corpus_size', help='override the scale\'s: a `zipper corpus build` '
                      'size or a JSON {split: utterances}')
  parser.add_argument('--steps', type=int, help='override every run\'s training steps')
  parser.add_argument('--batch_size', type=int, help='override every run\'s packed rows a step')
  parser.add_argument('--asr_utterances', type=int, help='of each test split (default: all)')
  parser.add_argument('--tts_utterances', type=int, help='of each test split (0: no TTS)')
  parser.add_argument('--asr_max_length_ratio', type=float,
                      help='transcripts stop at this many tokens per unit of speech (default 1)')
  parser.add_argument('--aligned_fractions', type=_fractions, default=tuple(FRACTIONS),
                      help='the aligned-data sizes of the grid: 1 and one or more of '
                           f'{", ".join(map(str, sorted(FRACTIONS)[:-1]))} (comma-separated)')
  parser.add_argument('--real_speech_dir', type=_recordings,
                      help='recorded speech to transcribe: audio files and a Sphinx '
                           f'`transcription` (default: {REAL_SPEECH_DIR}, where installed)')
  args = parser.parse_args(argv)
  if args.real_speech_dir is None and os.path.isdir(REAL_SPEECH_DIR):
    args.real_speech_dir = _recordings(REAL_SPEECH_DIR)
  scale = SCALES[args.scale]
  if args.steps:
    scale = dataclasses.replace(scale, pretrain_steps=dict.fromkeys(('text', 'speech'), args.steps),
                                steps=dict.fromkeys(SYSTEMS, args.steps))
  scale = dataclasses.replace(scale, corpus=args.corpus_size or scale.corpus,
                              batch_size=args.batch_size or scale.batch_size,
                              tts_utterances=scale.tts_utterances if args.tts_utterances is None
                              else args.tts_utterances,
                              aligned_fractions=args.aligned_fractions)
  start = time.perf_counter()
  stages.say(f'== 1/4 the corpus ({scale.corpus}) in {os.path.join(args.workdir, "corpus")}')
  _, text_vocab_size = stages.prepare_corpus(args.workdir, scale.corpus)
  stages.say('== 2/4 pre-train the towers once; train every system on every aligned-data size')
  text_tower, runs = train_grid(args.workdir, scale, text_vocab_size)
  stages.say('== 3/4 evaluate every run on test_clean and test_other')
  for name, model_dir in runs.items():
    tasks = ['single_asr', 'single_tts'] if name.startswith('single') else ['asr', 'tts']
    stages.evaluate(model_dir, tasks, text_tower, asr_utterances=args.asr_utterances,
                    tts_utterances=scale.tts_utterances, batch_size=scale.batch_size or 8,
                    reference_dir=os.path.join(args.workdir, 'tts_reference'),
                    asr_max_length_ratio=args.asr_max_length_ratio)
  real_speech = {}
  if args.real_speech_dir:
    stages.say(f'   recorded speech: {args.real_speech_dir.directory}')
    real_speech = {name: transcribe_recordings(runs[name], args.real_speech_dir)
                   for name in SYSTEMS}
  else:
    stages.say(f'   no recorded speech in {REAL_SPEECH_DIR} (Debian: pocketsphinx-testdata)')
  stages.say(f'== 4/4 the verdicts, and the results in {args.out}')
  evals = {name: {split: RunDir(d).read_eval(split)
                  for split in (*evaluation.SPLITS, 'text_perplexity')}
           for name, d in runs.items()}
  results = {
      'command': ' '.join(['python -m zipper_jax.speech.paper',
                           *(sys.argv[1:] if argv is None else argv)]),
      'provenance': provenance(), 'scale': dataclasses.asdict(scale),
      'minutes_this_invocation': (time.perf_counter() - start) / 60,
      'claims': judge_claims(evals, min(scale.aligned_fractions)), 'real_speech': real_speech,
      'runs': {run_name(name, fraction): {
          'system': system.label, 'aligned_fraction': fraction,
          'run': os.path.abspath(runs[run_name(name, fraction)]),
          'figures': evaluation.load_results(runs[run_name(name, fraction)])}
               for fraction in scale.aligned_fractions for name, system in SYSTEMS.items()}}
  os.makedirs(args.out, exist_ok=True)
  atomic_files.write_json(os.path.join(args.out, 'results.json'), results)
  plot_aligned_data(results, os.path.join(args.out, 'aligned_data.png'))
  table = markdown(results)
  with atomic_files.atomic_file(os.path.join(args.out, 'results.md')) as path:
    with open(path, 'w') as f:
      f.write(table)
  stages.say(table)


if __name__ == '__main__':
  main()
