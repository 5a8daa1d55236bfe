"""The embedded speech-text corpus: built offline from packages, deterministic from a seed.

  zipper corpus build --size tiny --out DIR     # CI and the demo: a few minutes on 2 cores
  zipper corpus prepare DIR                      # your own audio, listed in DIR/utterances/
  zipper corpus stats DIR                        # hours, utterances, units/s, judge WER

Stages, each kept when done and redone only when its output is missing (an interrupted build
resumes where it stopped; every file is written whole or not at all). `build` runs 1-2 and
writes utterances/<split>.jsonl; `prepare` runs the rest, on any audio listed there:

  1. sentences: `corpus_text` sources (up to the size's `max_words`), shuffled with the seed,
     split disjointly by sentence into validation / test_clean / test_other (first, so that
     they do not move with the training splits' sizes) and text_only / speech_only / aligned;
     each utterance gets a voice and rate (and, for test_other, noise) from the seed.
  2. audio/<split>/<id>.flac: 16 kHz speech. Training splits and test_clean are spoken by the
     size's flite voices (`tiny`: one; the others: four, at three rates); test_other by a
     held-out Piper voice at changed rates with noise.
  3. speech_tokenizer/: MFCC k-means (1024 units, 25 Hz) fitted on speech_only.
  4. manifest/<split>.jsonl: the utterances' lines plus "units" and "duration" (text_only
     lines have neither, nor audio): {"id", "text", "units", "voice", "rate", "snr_db",
     "duration", "source", "audio"}.
  5. resynthesizer.npz: units -> audio, fitted on speech_only.
  6. text_vocab.model: SentencePiece on text_only.
  7. zipper_speech_text/: the TFDS dataset (`corpus_tfds`) that the seqio tasks read.
  8. metadata.json: sizes, seed, voices, sources and their licences. Written last: a folder
     without it is an unfinished build.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Iterable, Mapping, Sequence

import numpy as np
import sentencepiece

from zipper_jax import atomic_files, vocabularies
from zipper_jax.speech import (audio, corpus_text, corpus_tfds, parallel, resynthesis, synthesis,
                               text_normalization, tts_protocol, unit_tokenizer)

SPLITS = ('text_only', 'speech_only', 'aligned', 'validation', 'test_clean', 'test_other')
EVALUATION_SPLITS = ('validation', 'test_clean', 'test_other')


@dataclasses.dataclass(frozen=True)
class CorpusSize:
  """Sentences per split (a count, or a fraction of what the counts leave), who speaks the
  training splits and test_clean (voices, at rates), and the longest sentence in words."""
  splits: Mapping[str, int | float]
  voices: tuple[str, ...] = synthesis.FLITE_VOICES
  rates: tuple[float, ...] = (0.85, 1.0, 1.15)
  max_words: int = corpus_text.MAX_WORDS


SIZES = {
    # The demo's: one voice and short sentences, so that a tiny model learns ASR in minutes,
    # from as many aligned pairs as its budget can synthesise (with 4,000 it learnt them by
    # heart). 40,000 text-only sentences instead of 14,000 made a better text tower but not a
    # better transcriber (docs/paper.md, with the `tiny`s before this one).
    'tiny': CorpusSize({'text_only': 14000, 'speech_only': 1000, 'aligned': 20000,
                        'validation': 100, 'test_clean': 100, 'test_other': 100},
                       voices=('flite/slt',), rates=(1.0,), max_words=10),
    'small': CorpusSize({'text_only': 30000, 'speech_only': 20000, 'aligned': 20000,
                         'validation': 500, 'test_clean': 1000, 'test_other': 1000}),
    # Everything the sources give: test sets as `small`, the rest 40/30/30.
    'full': CorpusSize({'text_only': 0.4, 'speech_only': 0.3, 'aligned': 0.3, 'validation': 500,
                        'test_clean': 1000, 'test_other': 1000}),
}
TEST_OTHER_VOICES = synthesis.PIPER_VOICES
TEST_OTHER_RATES = (0.8, 1.25)
TEST_OTHER_SNR_DB = 15.0
TOKENIZER_UTTERANCES = 2000  # of speech_only, for the k-means and the resynthesiser


@dataclasses.dataclass(frozen=True)
class Utterance:
  id: str
  split: str
  text: str
  source: str
  voice: str = ''
  rate: float = 1.0
  snr_db: float | None = None

  @property
  def spoken(self) -> bool:
    return self.split != 'text_only'

  def audio_path(self, corpus_dir: str) -> str:
    return os.path.join(corpus_dir, 'audio', self.split, f'{self.id}.flac')


def corpus_size(size: str | Mapping[str, int | float] | CorpusSize) -> CorpusSize:
  """A named size (`SIZES`), or sentences per split with the default voices."""
  if isinstance(size, CorpusSize):
    return size
  return SIZES[size] if isinstance(size, str) else CorpusSize(dict(size))


def split_sizes(size: CorpusSize, available: int) -> dict[str, int]:
  fixed = sum(n for n in size.splits.values() if isinstance(n, int))
  counts = {split: n if isinstance(n, int) else int(n * (available - fixed))
            for split, n in size.splits.items()}
  if sum(counts.values()) > available:
    raise ValueError(f'corpus size {counts} needs {sum(counts.values())} sentences; the '
                     f'sources give {available} of at most {size.max_words} words')
  return {split: counts[split] for split in SPLITS}


def plan(sentences: Sequence[tuple[str, str]], size: str | Mapping | CorpusSize,
         seed: int) -> list[Utterance]:
  """Who says what: sentences of at most `size.max_words` words, shuffled with `seed` and cut
  into disjoint splits; voices, rates and noise drawn from `seed` too. The evaluation splits
  are cut and voiced first: a size that changes only training splits keeps its test sets, so
  that two such corpora compare on the same utterances."""
  size = corpus_size(size)
  sentences = [(source, text) for source, text in sentences
               if len(text.split()) <= size.max_words]
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(sentences))
  counts = split_sizes(size, len(sentences))
  utterances, start = [], 0
  for split in EVALUATION_SPLITS + tuple(s for s in SPLITS if s not in EVALUATION_SPLITS):
    count = counts[split]
    for i, index in enumerate(order[start:start + count]):
      source, text = sentences[index]
      uid = f'{split}-{i:06d}'
      if split == 'text_only':
        utterances.append(Utterance(uid, split, text, source))
      elif split == 'test_other':
        utterances.append(Utterance(uid, split, text, source, str(rng.choice(TEST_OTHER_VOICES)),
                                    float(rng.choice(TEST_OTHER_RATES)), TEST_OTHER_SNR_DB))
      else:
        utterances.append(Utterance(uid, split, text, source, str(rng.choice(size.voices)),
                                    float(rng.choice(size.rates))))
    start += count
  return utterances


def noise_seed(seed: int, utterance_id: str) -> int:
  """A per-utterance seed that does not depend on the order utterances are processed in."""
  digest = hashlib.blake2b(utterance_id.encode(), digest_size=4).digest()
  return int.from_bytes(digest, 'little') % 2**31 ^ seed


def build(out: str, size: str | Mapping | CorpusSize = 'tiny', seed: int = 0,
          workers: int | None = None, sentences: Sequence[tuple[str, str]] | None = None) -> dict:
  """Builds (or finishes building) the embedded corpus in `out`; returns its metadata."""
  workers = workers or os.cpu_count()
  size = corpus_size(size)
  request = check_request(out, size, seed)
  missing = corpus_text.missing_packages()
  if missing and sentences is None:
    raise RuntimeError(f'Debian packages {missing} are needed to build the corpus: '
                       f'apt-get install {" ".join(missing)} (`make system-packages`)')
  sentences = corpus_text.all_sentences() if sentences is None else list(sentences)
  utterances = plan(sentences, size, seed)
  to_speak = [(u.text, u.voice, u.rate, u.snr_db, noise_seed(seed, u.id), u.audio_path(out))
              for u in utterances if u.spoken and not os.path.exists(u.audio_path(out))]
  # flite draws its excitation noise from libc's `rand()`, which a thread that onnxruntime
  # (Piper) starts calls too, now and then: the engines speak in separate processes, or flite's
  # audio would change at random and a corpus would not rebuild the same.
  for engine in synthesis.ENGINES:
    parallel.parallel_map(synthesis.speak_to_file,
                          [job for job in to_speak if synthesis.engine(job[1]) == engine],
                          workers, f'synthesising ({engine})')
  for split in SPLITS:
    path = os.path.join(out, 'utterances', f'{split}.jsonl')
    if not os.path.exists(path):
      _write_jsonl(path, [_utterance_line(u, out) for u in utterances if u.split == split])
  return prepare(out, seed, workers, {
      **request, 'test_other': {'voices': TEST_OTHER_VOICES, 'rates': TEST_OTHER_RATES,
                                'snr_db': TEST_OTHER_SNR_DB},
      'sources': {s.name: {'debian_package': s.debian_package, 'licence': s.licence,
                           'sentences': sum(u.source == s.name for u in utterances)}
                  for s in corpus_text.SOURCES}})


def prepare(out: str, seed: int = 0, workers: int | None = None,
            description: dict | None = None) -> dict:
  """Turns `out/utterances/<split>.jsonl` (what was said, and where its audio is) into the
  corpus the tasks read: tokenizer, units, resynthesiser, text vocabulary, TFDS dataset,
  metadata. Your own speech (LibriSpeech, ...) enters here: write those files, one line an
  utterance, {"id", "text", "audio"} (an audio path, absolute or relative to `out`; or
  "units" if it is tokenised already; no audio for text-only lines), then run
  `zipper corpus prepare DIR`."""
  workers = workers or os.cpu_count()
  lines = {split: read_manifest(out, split, 'utterances') for split in SPLITS}
  tokenizer_dir = os.path.join(out, 'speech_tokenizer')
  resynthesizer_path = os.path.join(out, 'resynthesizer.npz')
  fit_set = [_audio_path(out, line) for line in lines['speech_only'][:TOKENIZER_UTTERANCES]
             if 'audio' in line]
  # Speech that comes tokenised already needs neither.
  # One set of workers for every split: each imports librosa (seconds) once.
  with parallel.Workers(workers) as pool:
    if fit_set and not (os.path.exists(tokenizer_dir) and os.path.exists(resynthesizer_path)):
      featurised = pool.map(unit_tokenizer.features_of_file, fit_set, 'features')
      if not os.path.exists(tokenizer_dir):
        unit_tokenizer.fit([f for f, _ in featurised], unit_tokenizer.FeatureConfig(),
                           seed=seed).save(tokenizer_dir)
      tokenizer = unit_tokenizer.SpeechTokenizer.load(tokenizer_dir)
      resynthesis.fit([tokenizer.quantize(f) for f, _ in featurised],
                      [mel for _, mel in featurised], tokenizer.config,
                      num_units=tokenizer.num_units).save(resynthesizer_path)

    for split, members in lines.items():
      path = os.path.join(out, 'manifest', f'{split}.jsonl')
      if os.path.exists(path):
        continue
      to_encode = [line for line in members if 'audio' in line and 'units' not in line]
      encoded = pool.map(unit_tokenizer.units_of_file,
                         [(_audio_path(out, line), tokenizer_dir) for line in to_encode],
                         f'encoding {split}')
      encoded = dict(zip((line['id'] for line in to_encode), encoded))
      _write_jsonl(path, [_manifest_line(line, encoded.get(line['id'])) for line in members])

  vocab_path = os.path.join(out, 'text_vocab.model')
  if not os.path.exists(vocab_path):
    with tempfile.TemporaryDirectory(dir=out) as scratch:
      vocabularies.train_text_vocabulary(
          [text_normalization.normalize_transcript(line['text']) for line in lines['text_only']],
          os.path.join(scratch, 'text_vocab'), vocab_size=1024)
      os.replace(os.path.join(scratch, 'text_vocab.model'), vocab_path)

  corpus_tfds.prepare(out)
  metadata_path = os.path.join(out, 'metadata.json')
  if description is None and os.path.exists(metadata_path):
    with open(metadata_path) as f:
      description = json.load(f)  # prepared again: keep how it was built
  metadata = {**(description or {}), 'splits': {s: len(m) for s, m in lines.items()},
              'sample_rate': audio.SAMPLE_RATE}
  atomic_files.write_json(metadata_path, metadata)
  return metadata


def check_request(out: str, size: str | Mapping | CorpusSize, seed: int) -> dict:
  """Records what `out` is built for, or checks it against the record: what a size means,
  not its name, so that a folder built for an older `tiny` is not taken for today's."""
  request = {'size': dataclasses.asdict(corpus_size(size)), 'seed': seed}
  path = os.path.join(out, 'request.json')
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != json.loads(json.dumps(request)):
      raise ValueError(f'{out} holds a corpus built with {previous}, not {request}: choose '
                       'another --out, or delete the folder to rebuild')
  else:
    atomic_files.write_json(path, request)
  return request


def _write_jsonl(path: str, lines: Iterable[dict]) -> None:
  with atomic_files.atomic_file(path) as partial, open(partial, 'w') as f:
    for line in lines:
      f.write(json.dumps(line) + '\n')


def _utterance_line(utterance: Utterance, corpus_dir: str) -> dict:
  line = {'id': utterance.id, 'text': utterance.text, 'source': utterance.source}
  if utterance.spoken:
    line.update(voice=utterance.voice, rate=utterance.rate, snr_db=utterance.snr_db,
                audio=os.path.relpath(utterance.audio_path(corpus_dir), corpus_dir))
  return line


def _audio_path(corpus_dir: str, line: dict) -> str:
  return os.path.join(corpus_dir, line['audio'])  # an absolute path stays as it is


def _manifest_line(line: dict, encoded: tuple | None) -> dict:
  line = {**line, 'text': text_normalization.normalize_transcript(line['text'])}
  if encoded is not None:
    line['units'], duration = encoded
    line['duration'] = round(duration, 3)
  return line


def read_manifest(corpus_dir: str, split: str, kind: str = 'manifest') -> list[dict]:
  """A split's lines: `manifest` (with units) or `utterances` (what `prepare` starts from)."""
  path = os.path.join(corpus_dir, kind, f'{split}.jsonl')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: build the corpus (`zipper corpus build`) or '
                            'write it (see `zipper corpus prepare --help`)')
  with open(path) as f:
    return [json.loads(line) for line in f]


def stats(corpus_dir: str, judged_utterances: int = 40, workers: int | None = None) -> dict:
  """Per split: utterances, hours, units per second, units per text token (the text tower's
  ticks on a cross-attention clock), and the judge's WER on a sample of the original audio and
  of its ground-truth units resynthesised: the floor and the ceiling of the TTS protocol."""
  if not os.path.exists(os.path.join(corpus_dir, 'metadata.json')):
    raise FileNotFoundError(f'{corpus_dir}: no finished corpus (metadata.json is missing)')
  text_vocabulary = sentencepiece.SentencePieceProcessor(
      model_file=os.path.join(corpus_dir, 'text_vocab.model'))
  table = {}
  with parallel.Workers(workers or os.cpu_count()) as pool:
    for split in SPLITS:
      table[split] = _split_stats(corpus_dir, split, text_vocabulary, judged_utterances, pool)
  return table


def _split_stats(corpus_dir: str, split: str, text_vocabulary, judged_utterances: int,
                 pool: parallel.Workers) -> dict:
  lines = read_manifest(corpus_dir, split)
  row = {'utterances': len(lines)}
  spoken = [line for line in lines if 'duration' in line]  # encoded from audio
  if spoken:
    seconds = sum(line['duration'] for line in spoken)
    units = sum(len(line['units']) for line in spoken)
    tokens = sum(len(text_vocabulary.encode(text_normalization.normalize_transcript(
        line['text']))) for line in spoken)
    row.update(hours=round(seconds / 3600, 3), units_per_second=round(units / seconds, 2),
               units_per_token=round(units / tokens, 2))
    if judged_utterances:
      judged = spoken[:judged_utterances]
      figures = tts_protocol.reference_figures(
          [line['text'] for line in judged], [line['units'] for line in judged],
          os.path.join(corpus_dir, 'resynthesizer.npz'), pool,
          [_audio_path(corpus_dir, line) for line in judged])
      row.update(judge_wer=round(figures['floor_wer'], 4),
                 judge_wer_resynthesized=round(figures['ceiling_wer'], 4), judged=len(judged))
  return row


def format_stats(table: dict) -> str:
  columns = ('utterances', 'hours', 'units_per_second', 'units_per_token', 'judge_wer',
             'judge_wer_resynthesized', 'judged')
  lines = ['| split | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for split, row in table.items():
    lines.append(f'| {split} | ' + ' | '.join(str(row.get(c, '')) for c in columns) + ' |')
  return '\n'.join(lines)


def add_parser(subparsers) -> None:
  parser = subparsers.add_parser('corpus', help='Build or describe the embedded speech-text '
                                 'corpus.', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  actions = parser.add_subparsers(dest='action', required=True)
  build_parser = actions.add_parser('build', help='build (or resume building) a corpus')
  build_parser.add_argument('--size', choices=sorted(SIZES), default='tiny')
  build_parser.add_argument('--out', required=True, help='corpus folder')
  build_parser.add_argument('--seed', type=int, default=0)
  build_parser.add_argument('--workers', type=int, default=None,
                            help='processes (default: one per core)')
  prepare_parser = actions.add_parser(
      'prepare', help='turn DIR/utterances/<split>.jsonl (your own audio or units) into a corpus',
      description=prepare.__doc__)
  prepare_parser.add_argument('corpus_dir')
  prepare_parser.add_argument('--seed', type=int, default=0, help='k-means seed')
  prepare_parser.add_argument('--workers', type=int, default=None)
  stats_parser = actions.add_parser('stats', help='print hours, utterances, units/s and the '
                                    'judge\'s WER on original and resynthesised audio per split')
  stats_parser.add_argument('corpus_dir')
  stats_parser.add_argument('--judged_utterances', type=int, default=40,
                            help='utterances per split the ASR judge transcribes (0: none)')
  parser.set_defaults(run=run)


def run(args) -> int:
  if args.action in ('build', 'prepare'):
    metadata = (build(args.out, args.size, args.seed, args.workers) if args.action == 'build'
                else prepare(args.corpus_dir, args.seed, args.workers))
    print(json.dumps(metadata['splits']))
    return 0
  table = stats(args.corpus_dir, args.judged_utterances)
  atomic_files.write_json(os.path.join(args.corpus_dir, 'stats.json'), table)
  print(format_stats(table))
  return 0
