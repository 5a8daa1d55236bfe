"""Examples/s of the seqio input pipeline for the ASR+TTS mixture, against the examples/s that a
training step consumes, in one process.

  python benchmarks/data_pipeline.py     # prints JSON

The corpus is generated in the real on-disk layout (`zipper_jax.speech.synthetic_corpus`) at
speech-like lengths: 6 units per character, about 300 units and 15 text tokens an utterance.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from zipper_jax import data
from zipper_jax.speech import synthetic_corpus

SPEECH_LENGTH, TEXT_LENGTH = 512, 64


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=50)
  args = parser.parse_args(argv)

  directory = tempfile.mkdtemp(prefix='zipper_bench_corpus_')
  os.environ['ZIPPER_CORPUS_DIR'] = directory  # read when tasks.speech_text is imported
  synthetic_corpus.write_corpus(
      directory, sizes={'text_only': 2000, 'speech_only': 100, 'aligned': 4000,
                        'validation': 10, 'test_clean': 10, 'test_other': 10},
      frames_per_char=6, vocab_size=500)
  # Registers the tasks over the corpus just written: it reads ZIPPER_CORPUS_DIR when imported.
  import tasks.speech_text  # noqa: F401
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import train_step

  lengths = {'speech': SPEECH_LENGTH, 'text': TEXT_LENGTH}
  batches = data.get_dataset('asr_tts', lengths, ('speech', 'text'), args.batch,
                             shuffle=True, seed=0, truncate=True).as_numpy_iterator()
  for _ in range(3):
    next(batches)  # fill the pipeline's buffers
  start = time.perf_counter()
  for _ in range(args.batches):
    next(batches)
  pipeline = args.batch * args.batches / (time.perf_counter() - start)

  step = train_step.main(['--config=cpu', f'--batch={args.batch}', '--repeats=3',
                          '--variants=zipper_text_frozen', '--speech_length', str(SPEECH_LENGTH),
                          '--text_length', str(TEXT_LENGTH)])
  consumed = args.batch / step['variants']['zipper_text_frozen']['step_seconds']
  results = {'batch': args.batch, 'lengths': lengths, 'pipeline_examples_per_second': pipeline,
             'train_step_examples_per_second': consumed,
             'pipeline_over_train_step': pipeline / consumed}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
