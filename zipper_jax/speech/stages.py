"""The stages of the speech-text drivers (`demo`, `paper`), each the `zipper` command a user would
run, each reusing what is already finished under the work folder: the corpus build resumes, a
run at its last step is not trained again (if its config is the one asked for), an evaluation of
a run's last step is not redone."""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Mapping, Sequence

import seqio

from zipper_jax import main as zipper_main
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import corpus, evaluation


def say(message: str) -> None:
  print(message, flush=True)


def prepare_corpus(workdir: str, size: str) -> tuple[str, int]:
  """Builds (or reuses) the corpus of `size` (a `zipper corpus build` size or a JSON
  {split: utterances}) in workdir/corpus, points the speech-text tasks at it; (its folder, its
  text vocabulary's size)."""
  corpus_dir = os.path.abspath(os.path.join(workdir, 'corpus'))
  os.environ['ZIPPER_CORPUS_DIR'] = corpus_dir  # where tasks.speech_text, once imported, reads
  size = json.loads(size) if size.startswith('{') else size
  if os.path.exists(os.path.join(corpus_dir, 'metadata.json')):
    corpus.check_request(corpus_dir, size, seed=0)
    say(f'   {corpus_dir} is built: reused')
  else:
    corpus.build(corpus_dir, size, seed=0, workers=os.cpu_count())
  vocabulary = seqio.SentencePieceVocabulary(os.path.join(corpus_dir, 'text_vocab.model'))
  return corpus_dir, vocabulary.vocab_size


def _zipper(argv: Sequence[str]) -> None:
  if zipper_main.main(list(argv)) != 0:
    raise SystemExit(f'stopped: `zipper {" ".join(argv)}` failed')


def train(workdir: str, name: str, experiment: str, bindings: Mapping[str, Any],
          gin_files: Sequence[str] = ()) -> str:
  """Trains gin/experiments/<experiment>.gin (then `gin_files`, which override it) into
  workdir/name, unless a run there has reached its TRAIN_STEPS; `bindings`: gin name -> Python
  value (None: the experiment's own)."""
  run = RunDir(os.path.join(workdir, name))
  argv = ['train', f'--gin_file=gin/experiments/{experiment}.gin',
          *(f'--gin_file={path}' for path in gin_files), f'--model_dir={run.path}',
          *(f'--gin.{key}={value!r}' for key, value in bindings.items() if value is not None)]
  if run.exists():
    _check_config(run, zipper_main.command_config(argv))
    if run.latest_step() == run.config.train_steps:
      say(f'   {run.path} is trained ({run.config.train_steps} steps): reused')
      return run.path
  _zipper(argv)
  return run.path


def _check_config(run: RunDir, config: str) -> None:
  """A run is reused, or resumed, only with the config it was made with: a folder from an older
  experiment (other steps, batch or mixture) is refused, never taken for this one."""
  with open(run.config_path) as f:
    recorded = f.read()
  if recorded != config:
    changes = [line for line in difflib.unified_diff(recorded.splitlines(), config.splitlines(),
                                                     lineterm='', n=0)
               if line[:1] in '+-' and line[:3] not in ('+++', '---')]
    raise SystemExit(f'stopped: {run.path} holds a run of another config ({"; ".join(changes[:6])}'
                     f'{"; ..." if len(changes) > 6 else ""}): delete it, or give another '
                     '--workdir')


def evaluate(model_dir: str, tasks: Sequence[str], text_tower: str, *,
             asr_utterances: int | None, tts_utterances: int, batch_size: int,
             reference_dir: str, asr_max_length_ratio: float | None = None,
             tts_max_length_ratio: float | None = None) -> None:
  """`zipper eval` of the run's newest checkpoint (gin/runs/eval_speech_text.gin), unless done;
  a `*_max_length_ratio` None: the evaluation's own."""
  run = RunDir(model_dir)
  # Each split's file, then text perplexity, is written as it is done: a stopped evaluation
  # leaves some of them, or those of an older step.
  done = [run.read_eval(name) for name in (*evaluation.SPLITS, 'text_perplexity')]
  if all(d and d['step'] == run.latest_step() for d in done):
    say(f'   {model_dir} is evaluated: reused')
    return
  _zipper(['eval', f'--model_dir={model_dir}', '--gin_file=gin/runs/eval_speech_text.gin',
           f'--gin.EVAL_TASKS={list(tasks)!r}', f'--gin.TEXT_TOWER_DIR={text_tower!r}',
           f'--gin.SpeechTextEval.tts_utterances={tts_utterances}',
           f'--gin.SpeechTextEval.asr_utterances={asr_utterances}',
           f'--gin.BATCH_SIZE={batch_size}',
           f'--gin.SpeechTextEval.reference_dir={reference_dir!r}',
           *(f'--gin.SpeechTextEval.{name}={ratio}'
             for name, ratio in (('asr_max_length_ratio', asr_max_length_ratio),
                                 ('tts_max_length_ratio', tts_max_length_ratio))
             if ratio is not None)])
