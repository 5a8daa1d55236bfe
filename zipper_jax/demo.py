"""The main job (`make demo`): from nothing to a table of WERs, every artifact under `--workdir`.

  1. build the tiny speech-text corpus (a flite voice, k-means units, resynthesiser, judge)
  2. pre-train a tiny text tower on `text_lm` and a tiny speech tower on `speech_lm`
  3. zip them from their checkpoints, text tower frozen, cross-attention on a shared clock
     (gin/models/zipper_clocked.gin), and train on the `asr_tts` mixture
  4. train the Single Decoder baseline, grown from the same text tower, on `single_asr_tts`
  5. evaluate both on test_clean and test_other (`zipper eval`, gin/runs/eval_speech_text.gin):
     ASR WER/CER greedy and beam, TTS by the judge with its floor and ceiling, text perplexity
  6. print the table and write a report with plots (`zipper report`)

Each stage is the `zipper` command a user would run, with gin files from gin/. A second run
reuses what is finished: the corpus build resumes, a run at its last step is not trained again,
an evaluation of a run's last step is not redone.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from zipper_jax import checkpoints

WORKDIR = 'runs/demo'
SHAPES = '--gin_file=gin/models/tiny.gin'
# Cross-attention on a shared clock: the Zipper learns ASR that generalises from this little
# data only with it (README).
ZIPPER_MODEL = 'zipper_clocked'
# Rows of packed examples: several utterances of the tiny corpus (speech <= 137 units, text <= 45
# tokens) to a row, and any utterance of the sizes with sentences of up to 30 words.
LENGTHS = {'speech': 384, 'text': 96}
SINGLE_LENGTHS = {'single': LENGTHS['speech'] + LENGTHS['text']}


def _zipper(*args: str) -> None:
  """One `zipper` command, in this process (its gin parse replaces any config before it)."""
  from zipper_jax import main
  main.main(list(args))


def train_stage(args, name: str, run_file: str, task: str, lengths: dict, steps: int,
                batch_size: int, *bindings: str) -> str:
  model_dir = os.path.join(args.workdir, name)
  if checkpoints.latest_step(model_dir) == steps:
    print(f'   {model_dir} is trained ({steps} steps): reused', flush=True)
    return model_dir
  _zipper('train', SHAPES, f'--gin_file=gin/runs/{run_file}.gin',
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f'--gin.TASK_FEATURE_LENGTHS={lengths}', f'--gin.TRAIN_STEPS={steps}',
          f'--gin.BATCH_SIZE={batch_size}', '--gin.train.pack=True',
          f'--gin.TEXT_VOCAB_SIZE={args.text_vocab_size}', '--gin.train.log_every=50',
          f'--gin.learning_rate_schedule.peak={args.learning_rate}',
          f'--gin.learning_rate_schedule.warmup_steps={min(100, steps // 5)}', *bindings)
  return model_dir


def eval_stage(args, model_dir: str, model_file: str, tasks: list[str], lengths: dict,
               text_tower: str) -> None:
  done = os.path.join(model_dir, 'eval', 'test_clean.json')
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f)['step'] == checkpoints.latest_step(model_dir):
        print(f'   {model_dir} is evaluated: reused', flush=True)
        return
  _zipper('eval', SHAPES, f'--gin_file=gin/models/{model_file}.gin',
          '--gin_file=gin/runs/eval_speech_text.gin', f"--gin.MODEL_DIR='{model_dir}'",
          f'--gin.EVAL_TASKS={tasks}', f'--gin.TASK_FEATURE_LENGTHS={lengths}',
          f'--gin.TEXT_VOCAB_SIZE={args.text_vocab_size}', f"--gin.TEXT_TOWER_DIR='{text_tower}'",
          f'--gin.SpeechTextEval.tts_utterances={args.tts_utterances}',
          f'--gin.SpeechTextEval.asr_utterances={args.asr_utterances}',
          f'--gin.BATCH_SIZE={args.batch_size}',
          f"--gin.SpeechTextEval.reference_dir='{os.path.join(args.workdir, 'tts_reference')}'")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default=WORKDIR)
  parser.add_argument('--corpus_size', default='tiny',
                      help='a size of `zipper corpus build` (tiny, small, full) or a JSON '
                           '{split: utterances}')
  parser.add_argument('--text_pretrain_steps', type=int, default=1000,
                      help='steps of the text tower (about 10 a second)')
  parser.add_argument('--speech_pretrain_steps', type=int, default=300,
                      help='steps of the speech tower')
  parser.add_argument('--pretrain_batch_size', type=int, default=16, help='packed rows a step')
  parser.add_argument('--steps', type=int, default=1000, help='steps of the zipped training')
  parser.add_argument('--single_steps', type=int, default=500,
                      help='steps of the Single Decoder')
  parser.add_argument('--batch_size', type=int, default=8,
                      help='packed rows a step of the Zipper and the Single Decoder (more '
                           'updates of fewer examples learn faster here)')
  parser.add_argument('--asr_rate', type=float, default=3.0,
                      help='ASR examples per TTS example in the asr_tts mixtures')
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  parser.add_argument('--asr_utterances', type=int, default=None,
                      help='of each test split (default: all)')
  parser.add_argument('--tts_utterances', type=int, default=8,
                      help='of each test split; the judge takes ~0.5 s three times for each')
  args = parser.parse_args(argv)
  start = time.perf_counter()
  corpus_dir = os.path.abspath(os.path.join(args.workdir, 'corpus'))
  os.environ['ZIPPER_CORPUS_DIR'] = corpus_dir  # read when tasks.speech_text is imported

  print(f'== 1/6 the speech-text corpus in {corpus_dir}', flush=True)
  from zipper_jax import corpus
  size = json.loads(args.corpus_size) if args.corpus_size.startswith('{') else args.corpus_size
  if os.path.exists(os.path.join(corpus_dir, 'metadata.json')):
    corpus.check_request(corpus_dir, size, seed=0)
    print('   built: reused', flush=True)
  else:
    corpus.build(corpus_dir, size, seed=0, workers=os.cpu_count())
  import tasks.speech_text as speech_text
  args.text_vocab_size = speech_text.TEXT_VOCABULARY.vocab_size

  print('== 2/6 pre-train the text tower on text_lm and the speech tower on speech_lm',
        flush=True)
  text = train_stage(args, 'text', 'pretrain_text', 'text_lm', {'text': LENGTHS['text']},
                     args.text_pretrain_steps, args.pretrain_batch_size)
  speech = train_stage(args, 'speech', 'pretrain_speech', 'speech_lm',
                       {'speech': LENGTHS['speech']}, args.speech_pretrain_steps,
                       args.pretrain_batch_size)
  rate = f'--gin.mixture_rates.asr={args.asr_rate}'
  print('== 3/6 zip them (text tower frozen) and train on asr_tts', flush=True)
  zipped = train_stage(args, 'zipper', 'zipper_frozen_text', 'asr_tts', LENGTHS, args.steps,
                       args.batch_size, rate, f'--gin_file=gin/models/{ZIPPER_MODEL}.gin',
                       f"--gin.INIT_CHECKPOINTS={{'text': '{text}', 'speech': '{speech}'}}")
  print('== 4/6 the Single Decoder baseline, grown from the text tower, on single_asr_tts',
        flush=True)
  single = train_stage(args, 'single_decoder', 'single_decoder', 'single_asr_tts',
                       SINGLE_LENGTHS, args.single_steps, args.batch_size, rate,
                       f"--gin.INIT_CHECKPOINTS={{'text': '{text}'}}")
  print('== 5/6 evaluate both on test_clean and test_other', flush=True)
  eval_stage(args, zipped, ZIPPER_MODEL, ['asr', 'tts'], LENGTHS, text)
  eval_stage(args, single, 'single_decoder', ['single_asr', 'single_tts'], SINGLE_LENGTHS, text)

  print('== 6/6 the table, and a report with plots', flush=True)
  from zipper_jax import evaluation, report
  print(evaluation.format_table({'Zipper (text frozen)': evaluation.load_results(zipped),
                                 'Single Decoder': evaluation.load_results(single)}))
  report.write_report([zipped, single], os.path.join(args.workdir, 'report'))
  print(f'report: {os.path.join(args.workdir, "report", "report.md")}; every artifact under '
        f'{args.workdir}; {(time.perf_counter() - start) / 60:.1f} minutes', flush=True)


if __name__ == '__main__':
  main()
