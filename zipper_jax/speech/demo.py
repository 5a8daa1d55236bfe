"""The main job (`make demo`): from nothing to a table of WERs, every artifact under `--workdir`.

  1. build the tiny speech-text corpus (a flite voice, k-means units, resynthesiser, judge)
  2. pre-train a tiny text tower on `text_lm` and a tiny speech tower on `speech_lm`
  3. zip them from their checkpoints, text tower frozen, cross-attention on a shared clock,
     and train on the `asr_tts` mixture
  4. train the Single Decoder baseline, grown from the same text tower, on `single_asr_tts`
  5. evaluate both on test_clean and test_other (`zipper eval`, gin/runs/eval_speech_text.gin):
     ASR WER/CER greedy and beam, TTS by the judge with its floor and ceiling, text perplexity
  6. print the table and write a report with plots (`zipper report`)

Each stage is the `zipper` command a user would run, with an experiment file of
gin/experiments/ (`tiny_*.gin`: its model, its run and its settings); the flags below override
them. A second run reuses what is finished: the corpus build resumes, a run at its last step is
not trained again, an evaluation of a run's last step is not redone.
"""
from __future__ import annotations

import argparse
import os
import time

from zipper_jax.speech import evaluation, report, stages

WORKDIR = 'runs/demo'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default=WORKDIR)
  parser.add_argument('--corpus_size', default='tiny',
                      help='a size of `zipper corpus build` (tiny, small, full) or a JSON '
                           '{split: utterances}')
  parser.add_argument('--text_pretrain_steps', type=int,
                      help='steps of the text tower (about 10 a second)')
  parser.add_argument('--speech_pretrain_steps', type=int, help='steps of the speech tower')
  parser.add_argument('--pretrain_batch_size', type=int, help='packed rows a step')
  parser.add_argument('--steps', type=int, help='steps of the zipped training')
  parser.add_argument('--single_steps', type=int, help='steps of the Single Decoder')
  parser.add_argument('--batch_size', type=int,
                      help='packed rows a step of the Zipper and the Single Decoder')
  parser.add_argument('--asr_rate', type=float,
                      help='ASR examples per TTS example in the asr_tts mixtures')
  parser.add_argument('--learning_rate', type=float, help='peak learning rate of every stage')
  parser.add_argument('--asr_utterances', type=int, default=None,
                      help='of each test split (default: all)')
  parser.add_argument('--tts_utterances', type=int, default=8,
                      help='of each test split; the judge takes ~0.5 s three times for each')
  parser.add_argument('--asr_max_length_ratio', type=float,
                      help='transcripts stop at this many tokens per unit of speech (default 1, '
                           'ESPnet\'s; the corpus has at most 0.5): an untrained model\'s run '
                           'to it')
  parser.add_argument('--tts_max_length_ratio', type=float,
                      help='generated speech stops at this many units per token of its text '
                           '(default 10; the corpus has 3-6): an untrained model\'s speech runs '
                           'to it, and the judge takes some 2 s per second of it')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  say = stages.say
  say(f'== 1/6 the speech-text corpus in {os.path.join(args.workdir, "corpus")}')
  _, text_vocab_size = stages.prepare_corpus(args.workdir, args.corpus_size)
  common = {'TEXT_VOCAB_SIZE': text_vocab_size, 'learning_rate_schedule.peak': args.learning_rate}

  say('== 2/6 pre-train the text tower on text_lm and the speech tower on speech_lm')
  pretrain = common | {'BATCH_SIZE': args.pretrain_batch_size}
  text = stages.train(args.workdir, 'text', 'tiny_text_pretrain',
                      pretrain | {'TRAIN_STEPS': args.text_pretrain_steps})
  speech = stages.train(args.workdir, 'speech', 'tiny_speech_pretrain',
                        pretrain | {'TRAIN_STEPS': args.speech_pretrain_steps})
  zipped_runs = common | {'BATCH_SIZE': args.batch_size, 'mixture_rates.asr': args.asr_rate}
  say('== 3/6 zip them (text tower frozen) and train on asr_tts')
  zipped = stages.train(args.workdir, 'zipper', 'tiny_zipper_frozen_text', zipped_runs | {
      'TRAIN_STEPS': args.steps, 'INIT_CHECKPOINTS': {'text': text, 'speech': speech}})
  say('== 4/6 the Single Decoder baseline, grown from the text tower, on single_asr_tts')
  single = stages.train(args.workdir, 'single_decoder', 'tiny_single_decoder', zipped_runs | {
      'TRAIN_STEPS': args.single_steps, 'INIT_CHECKPOINTS': {'text': text}})
  say('== 5/6 evaluate both on test_clean and test_other')
  for model_dir, tasks in ((zipped, ['asr', 'tts']), (single, ['single_asr', 'single_tts'])):
    stages.evaluate(model_dir, tasks, text, asr_utterances=args.asr_utterances,
                    tts_utterances=args.tts_utterances, batch_size=args.batch_size or 8,
                    reference_dir=os.path.join(args.workdir, 'tts_reference'),
                    asr_max_length_ratio=args.asr_max_length_ratio,
                    tts_max_length_ratio=args.tts_max_length_ratio)

  say('== 6/6 the table, and a report with plots')
  say(evaluation.format_table({'Zipper (text frozen)': evaluation.load_results(zipped),
                               'Single Decoder': evaluation.load_results(single)}))
  report.write_report([zipped, single], os.path.join(args.workdir, 'report'))
  say(f'report: {os.path.join(args.workdir, "report", "report.md")}; every artifact under '
      f'{args.workdir}; {(time.perf_counter() - start) / 60:.1f} minutes')


if __name__ == '__main__':
  main()
