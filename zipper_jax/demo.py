"""The main job until the end-to-end demo on the real corpus lands (`make demo`).

Everything a user would run, on a generated corpus in the real on-disk layout
(`synthetic_corpus`: speech units are a fixed function of the spoken characters, so speech can be
read): pre-train a tiny text tower and a tiny speech tower, zip them from their checkpoints with the
text tower frozen, train on the ASR+TTS mixture, then transcribe held-out speech with cached greedy
decoding and score it with jiwer. Every artifact lands under `--workdir`.
"""
from __future__ import annotations

import argparse
import os

WORKDIR = 'runs/demo'
SHAPES = ['--gin_file=gin/models/tiny.gin']
LENGTHS = {'speech': 160, 'text': 32}


def train_stage(run_file: str, workdir: str, name: str, task: str, lengths: dict, steps: int,
                *bindings: str) -> str:
  from zipper_jax import main
  import gin
  model_dir = os.path.join(workdir, name)
  gin.clear_config(clear_constants=True)
  main.main(['train', *SHAPES, f'--gin_file=gin/runs/{run_file}.gin',
             f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
             f'--gin.TASK_FEATURE_LENGTHS={lengths}', f'--gin.TRAIN_STEPS={steps}',
             '--gin.BATCH_SIZE=32', '--gin.train.log_every=100',
             '--gin.learning_rate_schedule.peak=3e-3', *bindings])
  return model_dir


def transcribe(model_dir: str, batches: int = 2):
  """Greedy transcripts of validation speech and their WER against the references."""
  import jax
  import jax.numpy as jnp
  import jiwer
  import tasks.speech_text as speech_text
  from zipper_jax import checkpoints, configurables, data, decoding
  from zipper_jax.inputs import TowerInput
  model = configurables.CONFIGURED['ZipperModel']()  # as the last stage's gin config built it
  params = checkpoints.load_params(model_dir)
  decoder = decoding.Decoder.for_zipper(model.module, 'text')
  vocabulary = speech_text.TEXT_VOCABULARY
  hypotheses, references = [], []
  for batch in data.get_dataset('asr', LENGTHS, model.towers, 32, split='validation',
                                shuffle=False, num_epochs=1).take(batches).as_numpy_iterator():
    inputs = model.inputs(batch)
    start = inputs['text'].interleaved_positions[:, :1]
    prompt = {'speech': inputs['speech'],
              'text': TowerInput(jnp.zeros_like(start), jnp.zeros_like(start),
                                 jnp.ones_like(start), start)}
    out = decoding.generate(decoder, params, prompt, max_new_tokens=LENGTHS['text'],
                            eos_id=vocabulary.eos_id)
    for tokens, length, target in zip(jax.device_get(out.tokens), jax.device_get(out.lengths),
                                      batch['text_target_tokens']):
      hypotheses.append(vocabulary.decode(tokens[:length].tolist()))
      references.append(vocabulary.decode(target.tolist()))
  return jiwer.wer(references, hypotheses), list(zip(references, hypotheses))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--workdir', default=WORKDIR)
  parser.add_argument('--steps', type=int, default=1000, help='steps of the zipped training')
  parser.add_argument('--pretrain_steps', type=int, default=300, help='steps of each tower')
  args = parser.parse_args(argv)
  corpus = os.path.abspath(os.path.join(args.workdir, 'corpus'))
  os.environ['ZIPPER_CORPUS_DIR'] = corpus  # read when tasks.speech_text is imported
  from zipper_jax import synthetic_corpus
  if not os.path.exists(os.path.join(corpus, 'text_vocab.model')):
    print(f'writing a synthetic corpus to {corpus}', flush=True)
    synthetic_corpus.write_corpus(corpus, sizes={
        'text_only': 3000, 'speech_only': 3000, 'aligned': 3000, 'validation': 64,
        'test_clean': 64, 'test_other': 64}, frames_per_char=2, vocab_size=200)
  import tasks.speech_text as speech_text
  vocab = [f'--gin.TEXT_VOCAB_SIZE={speech_text.TEXT_VOCABULARY.vocab_size}']

  print('== 1/4 pre-train the text tower on text_lm', flush=True)
  text = train_stage('pretrain_text', args.workdir, 'text', 'text_lm',
                     {'text': LENGTHS['text']}, args.pretrain_steps, *vocab)
  print('== 2/4 pre-train the speech tower on speech_lm', flush=True)
  speech = train_stage('pretrain_speech', args.workdir, 'speech', 'speech_lm',
                       {'speech': LENGTHS['speech']}, args.pretrain_steps, *vocab)
  print('== 3/4 zip them (text frozen) and train on asr_tts', flush=True)
  zipped = train_stage('zipper_frozen_text', args.workdir, 'zipper', 'asr_tts', LENGTHS,
                       args.steps, *vocab,
                       f"--gin.INIT_CHECKPOINTS={{'text': '{text}', 'speech': '{speech}'}}")
  print('== 4/4 transcribe held-out speech (cached greedy decoding)', flush=True)
  wer, pairs = transcribe(zipped)
  for reference, hypothesis in pairs[:5]:
    print(f'  ref: {reference}\n  hyp: {hypothesis}')
  print(f'ASR WER on {len(pairs)} validation utterances: {wer:.1%}', flush=True)


if __name__ == '__main__':
  main()
