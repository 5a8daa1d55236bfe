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
import json
import os
import time

import seqio

from zipper_jax import main as zipper_main
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import corpus, evaluation, report

WORKDIR = 'runs/demo'


def train_stage(args, name: str, experiment: str, steps: int | None, *bindings: str) -> str:
  """Trains `gin/experiments/<experiment>.gin` into WORKDIR/name, unless it is trained."""
  run = RunDir(os.path.join(args.workdir, name))
  if run.exists() and run.latest_step() == run.config.train_steps and steps in (
      None, run.config.train_steps):
    print(f'   {run.path} is trained ({run.config.train_steps} steps): reused', flush=True)
    return run.path
  overrides = {'TRAIN_STEPS': steps, 'learning_rate_schedule.peak': args.learning_rate}
  zipper_main.main([
      'train', f'--gin_file=gin/experiments/{experiment}.gin', f'--model_dir={run.path}',
      f'--gin.TEXT_VOCAB_SIZE={args.text_vocab_size}', *bindings,
      *(f'--gin.{name}={value}' for name, value in overrides.items() if value is not None)])
  return run.path


def eval_stage(args, model_dir: str, tasks: list[str], text_tower: str) -> None:
  """`zipper eval` of the run's newest checkpoint, with the run's own model."""
  run = RunDir(model_dir)
  done = run.read_eval('test_clean')
  if done and done['step'] == run.latest_step():
    print(f'   {model_dir} is evaluated: reused', flush=True)
    return
  zipper_main.main([
      'eval', f'--model_dir={model_dir}', '--gin_file=gin/runs/eval_speech_text.gin',
      f'--gin.EVAL_TASKS={tasks}', f"--gin.TEXT_TOWER_DIR='{text_tower}'",
      f'--gin.SpeechTextEval.tts_utterances={args.tts_utterances}',
      f'--gin.SpeechTextEval.asr_utterances={args.asr_utterances}',
      f'--gin.BATCH_SIZE={args.batch_size or 8}',
      f"--gin.SpeechTextEval.reference_dir='{os.path.join(args.workdir, 'tts_reference')}'"])


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
  args = parser.parse_args(argv)
  start = time.perf_counter()
  corpus_dir = os.path.abspath(os.path.join(args.workdir, 'corpus'))
  os.environ['ZIPPER_CORPUS_DIR'] = corpus_dir  # where tasks.speech_text, once imported, reads

  print(f'== 1/6 the speech-text corpus in {corpus_dir}', flush=True)
  size = json.loads(args.corpus_size) if args.corpus_size.startswith('{') else args.corpus_size
  if os.path.exists(os.path.join(corpus_dir, 'metadata.json')):
    corpus.check_request(corpus_dir, size, seed=0)
    print('   built: reused', flush=True)
  else:
    corpus.build(corpus_dir, size, seed=0, workers=os.cpu_count())
  args.text_vocab_size = seqio.SentencePieceVocabulary(
      os.path.join(corpus_dir, 'text_vocab.model')).vocab_size

  print('== 2/6 pre-train the text tower on text_lm and the speech tower on speech_lm',
        flush=True)
  pretrain = ([f'--gin.BATCH_SIZE={args.pretrain_batch_size}'] if args.pretrain_batch_size
              else [])
  text = train_stage(args, 'text', 'tiny_text_pretrain', args.text_pretrain_steps, *pretrain)
  speech = train_stage(args, 'speech', 'tiny_speech_pretrain', args.speech_pretrain_steps,
                       *pretrain)
  zipped_runs = [f'--gin.{name}={value}' for name, value in (
      ('BATCH_SIZE', args.batch_size), ('mixture_rates.asr', args.asr_rate)) if value]
  print('== 3/6 zip them (text tower frozen) and train on asr_tts', flush=True)
  zipped = train_stage(args, 'zipper', 'tiny_zipper_frozen_text', args.steps, *zipped_runs,
                       f"--gin.INIT_CHECKPOINTS={{'text': '{text}', 'speech': '{speech}'}}")
  print('== 4/6 the Single Decoder baseline, grown from the text tower, on single_asr_tts',
        flush=True)
  single = train_stage(args, 'single_decoder', 'tiny_single_decoder', args.single_steps,
                       *zipped_runs, f"--gin.INIT_CHECKPOINTS={{'text': '{text}'}}")
  print('== 5/6 evaluate both on test_clean and test_other', flush=True)
  eval_stage(args, zipped, ['asr', 'tts'], text)
  eval_stage(args, single, ['single_asr', 'single_tts'], text)

  print('== 6/6 the table, and a report with plots', flush=True)
  print(evaluation.format_table({'Zipper (text frozen)': evaluation.load_results(zipped),
                                 'Single Decoder': evaluation.load_results(single)}))
  report.write_report([zipped, single], os.path.join(args.workdir, 'report'))
  print(f'report: {os.path.join(args.workdir, "report", "report.md")}; every artifact under '
        f'{args.workdir}; {(time.perf_counter() - start) / 60:.1f} minutes', flush=True)


if __name__ == '__main__':
  main()
