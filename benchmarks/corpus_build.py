"""Utterances/s of the corpus build's two per-utterance stages, synthesis and unit encoding, as
`corpus.build` runs them (a pool of `--workers` processes), and flite in process against the
`flite` command it replaced, in one process.

  python benchmarks/corpus_build.py     # prints JSON

The sentences are the `tiny` corpus's (at most 10 words, its voice); the units come from a
tokenizer fitted on the first of them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

from zipper_jax.speech import (corpus, corpus_text, flite, parallel, synthesis, unit_tokenizer)


def _per_second(count: int, function) -> float:
  start = time.perf_counter()
  function()
  return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--utterances', type=int, default=2000)
  parser.add_argument('--serial_utterances', type=int, default=100,
                      help='for flite in process against the command, one process')
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  args = parser.parse_args(argv)
  size = corpus.SIZES['tiny']
  (voice,), (rate,) = size.voices, size.rates
  texts = [text for _, text in corpus_text.all_sentences()
           if len(text.split()) <= size.max_words][:args.utterances]
  directory = tempfile.mkdtemp(prefix='zipper_bench_corpus_build_')
  paths = [os.path.join(directory, f'{i:06d}.flac') for i in range(len(texts))]

  name = voice.partition('/')[2]
  serial = texts[:args.serial_utterances]
  command = os.path.join(directory, 'command.wav')
  results = {
      'voice': voice, 'workers': args.workers,
      'flite_in_process_per_second': _per_second(
          len(serial), lambda: [flite.synthesize(text, name, rate) for text in serial]),
      'flite_command_per_second': _per_second(len(serial), lambda: [subprocess.run(
          ['flite', '-voice', name, '-t', text, '-o', command], check=True) for text in serial]),
  }
  with parallel.Workers(args.workers) as pool:
    results['synthesis_per_second'] = _per_second(len(texts), lambda: pool.map(
        synthesis.speak_to_file, [(text, voice, rate, None, 0, path)
                                  for text, path in zip(texts, paths)], 'synthesising'))
    features = pool.map(unit_tokenizer.features_of_file, paths[:500], 'features')
    tokenizer_dir = os.path.join(directory, 'speech_tokenizer')
    unit_tokenizer.fit([f for f, _ in features], unit_tokenizer.FeatureConfig(),
                       num_units=256).save(tokenizer_dir)
    results['encoding_per_second'] = _per_second(len(paths), lambda: pool.map(
        unit_tokenizer.units_of_file, [(path, tokenizer_dir) for path in paths], 'encoding'))
  results['flite_in_process_over_command'] = (results['flite_in_process_per_second']
                                              / results['flite_command_per_second'])
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
