"""A trained speech-text run as a recogniser and a synthesiser: audio in, text out, and back.

  zipper transcribe --model_dir D in.wav [more.flac ...]     # one transcript a line
  zipper speak --model_dir D "some text" -o out.wav

A run directory carries all it needs: `config.gin` (the model), its checkpoints, and
`vocabularies/` (the text vocabulary, and the speech tokenizer and resynthesiser the trainer
copies there from the corpus). Audio is read at any rate and channel count (resampled to 16 kHz
mono); a file that is missing, unreadable or holds no samples is an error that names it.

`SpeechText` does the decoding for both model kinds: a Zipper reads the prompt in one tower and
writes the other; the Single Decoder reads and writes one sequence, speech ids moved past the text
vocabulary. Prompts are padded to fixed shapes so each kind of call compiles once.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from zipper_jax import models
from zipper_jax.errors import UserError
from zipper_jax.inputs import TowerInput
from zipper_jax.run_dir import RunDir
from zipper_jax.speech import audio, metrics

PROMPT_BUCKET = 32  # Single Decoder prompts are padded to a multiple of this: few compilations
MIN_SECONDS = 0.1  # shorter audio holds no word: an error, not an empty transcript


def _left_padded(rows: Sequence[Sequence[int]], length: int) -> TowerInput:
  """Rows right-aligned in `length` columns (what cached decoding of a prompt needs)."""
  tokens = np.zeros((len(rows), length), np.int32)
  segments = np.zeros_like(tokens)
  for i, row in enumerate(rows):
    if row:
      tokens[i, -len(row):], segments[i, -len(row):] = row, 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0)
  return TowerInput(*map(jnp.asarray, (tokens, positions, segments, positions)))


def _start_token(offsets: Sequence[int]) -> TowerInput:
  """The decoded tower's one-token prompt (the start id 0) after `offsets` prompt tokens."""
  start = jnp.asarray(offsets, jnp.int32)[:, None]
  return TowerInput(jnp.zeros_like(start), jnp.zeros_like(start), jnp.ones_like(start), start)


def text_and_speech(model: models.Model, vocabs: dict[str, seqio.Vocabulary]):
  """(text, speech) vocabularies of a run's `vocabs` (a Single Decoder keeps both in one)."""
  if isinstance(model, models.SingleDecoderModel):
    return vocabs[model.name].text, vocabs[model.name].speech
  return vocabs['text'], vocabs['speech']


class SpeechText:
  """ASR and TTS with a trained Zipper or Single Decoder, `batch_size` utterances a call.

  `lengths` are the run's TASK_FEATURE_LENGTHS: per tower for a Zipper (a prompt fills at most
  its tower's length, and at most the other tower's length is generated), one total for the
  Single Decoder (prompt and generated tokens share it). A longer prompt is refused.
  """

  def __init__(self, model: models.Model, params, vocabs: dict[str, seqio.Vocabulary],
               lengths: dict[str, int], batch_size: int = 16):
    self.model, self.params = model, params
    self.text, self.speech = text_and_speech(model, vocabs)
    self.lengths, self.batch_size = lengths, batch_size
    self.single = isinstance(model, models.SingleDecoderModel)
    self.offset = self.text.vocab_size if self.single else 0  # where speech ids start
    # The towers that read and write text and speech.
    self.text_tower, self.speech_tower = ((model.name, model.name) if self.single else
                                          ('text', 'speech'))

  @classmethod
  def from_run(cls, model_dir: str, batch_size: int = 16) -> SpeechText:
    run = RunDir(model_dir)
    return cls(run.model, run.load_params(), run.vocabularies(), run.task_feature_lengths,
               batch_size)

  # Ids of the model's vocabulary (a Single Decoder's holds both) to text and to units.
  def text_of(self, ids: Sequence[int]) -> str:
    return self.text.decode([i for i in ids if 0 < i < self.text.vocab_size])

  def units_of(self, ids: Sequence[int]) -> np.ndarray:
    """Units (int32 in [0, num_units)) of the speech ids among `ids`."""
    return np.asarray(self.speech.decode([i - self.offset for i in ids]), np.int32)

  def prompt_room(self, modality: str) -> int:
    """The most ids of `modality` ('speech' or 'text') a prompt holds: its tower's
    TASK_FEATURE_LENGTHS less the start id (the Single Decoder's one sequence also keeps the
    prompt's end id and one generated id)."""
    if self.single:
      return self.lengths[self.model.name] - 3
    return self.lengths[modality] - 1

  def _check_room(self, prompts: Sequence[Sequence[int]], modality: str, what: str,
                  names: Sequence[str]) -> None:
    """A prompt longer than the model reads is refused: cut, it would be answered in part."""
    room = self.prompt_room(modality)
    for name, prompt in zip(names, prompts):
      if len(prompt) > room:
        raise UserError(f'{name}: {len(prompt)} {what}, more than the {room} this model reads '
                        f'(its run\'s TASK_FEATURE_LENGTHS are {self.lengths})')

  # ASR and TTS on ids: lists in, lists out, batched here.
  def transcribe_units(self, unit_lists: Sequence[Sequence[int]], beam_size: int = 1,
                       names: Sequence[str] | None = None) -> list[str]:
    speech = [self.speech.encode([int(u) for u in units]) for units in unit_lists]
    self._check_room(speech, 'speech', 'speech units',
                     names or [f'utterance {i + 1}' for i in range(len(speech))])
    return [self.text_of(ids) for ids in self._batched(self._asr, speech, beam_size)]

  def speak_units(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Speech units (int32 in [0, num_units)) for each text; empty if none were generated."""
    prompts = [self.text.encode(t) for t in texts]
    self._check_room(prompts, 'text', 'text tokens', [repr(t) for t in texts])
    generated = self._batched(self._tts, prompts, 1)
    return [self.units_of(ids) for ids in generated]

  # Audio in and out, through the run's speech tokenizer and resynthesiser.
  def transcribe(self, wavs: Sequence[np.ndarray], beam_size: int = 1,
                 names: Sequence[str] | None = None) -> list[str]:
    """Transcripts of 16 kHz mono speech; `names` (e.g. file paths) go into error messages."""
    for i, wav in enumerate(wavs):
      if len(wav) < MIN_SECONDS * audio.SAMPLE_RATE:
        name = names[i] if names else f'audio {i + 1}'
        raise audio.AudioError(f'{name}: {len(wav) / audio.SAMPLE_RATE:.3f} s is too short to '
                               f'hold speech (under {MIN_SECONDS} s)')
    tokenizer = self.speech.tokenizer()
    names = [f'{names[i] if names else f"audio {i + 1}"} ({len(wav) / audio.SAMPLE_RATE:.1f} s)'
             for i, wav in enumerate(wavs)]
    return self.transcribe_units([tokenizer.encode(wav) for wav in wavs], beam_size, names)

  def speak(self, texts: Sequence[str]) -> list[np.ndarray]:
    resynthesizer = self.speech.resynthesizer()
    wavs = []
    for text, units in zip(texts, self.speak_units(texts)):
      if not units.size:
        raise ValueError(f'the model generated no speech for {text!r}')
      wavs.append(resynthesizer.audio(units))
    return wavs

  def _batched(self, fn, prompts: list[list[int]], beam_size: int) -> list[list[int]]:
    """`fn` over full batches (the last one filled with copies of its first row); generated ids
    of each prompt, without the end token."""
    out = []
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      filled = chunk + [chunk[0]] * (self.batch_size - len(chunk))
      tokens, lengths, eos = fn(filled, beam_size)
      for row, length in list(zip(jax.device_get(tokens), jax.device_get(lengths)))[:len(chunk)]:
        ids = row[:length].tolist()
        out.append(ids[:-1] if ids and ids[-1] == eos else ids)
    return out

  def _generate(self, output: str, prompt: dict, max_new: int, eos: int, beam_size: int):
    out = self.model.predict(self.params, prompt, output=output, eos_id=eos,
                             max_new_tokens=max_new, beam_size=beam_size)
    return out.tokens, out.lengths, eos

  def _asr(self, speech_ids: list[list[int]], beam_size: int):
    eos = self.text.eos_id
    if self.single:  # [0, speech..., end of audio], then text
      return self._single(
          [[0] + [i + self.offset for i in ids] + [self.speech.eos_id + self.offset]
           for ids in speech_ids], eos, beam_size)
    # As in training: speech inputs are [0, units...]; text starts right after them.
    rows = [[0] + ids for ids in speech_ids]
    prompt = {'speech': TowerInput.from_tokens(_right_padded(rows, self.lengths['speech']),
                                               lengths=[len(r) for r in rows]),
              'text': _start_token([len(r) for r in rows])}
    return self._generate(self.text_tower, prompt, self.lengths['text'], eos, beam_size)

  def _tts(self, text_ids: list[list[int]], beam_size: int):
    eos = self.speech.eos_id + self.offset
    if self.single:  # [0, text..., end of text], then speech
      return self._single([[0] + ids + [self.text.eos_id] for ids in text_ids], eos, beam_size)
    rows = [[0] + ids for ids in text_ids]
    prompt = {'text': TowerInput.from_tokens(_right_padded(rows, self.lengths['text']),
                                             lengths=[len(r) for r in rows]),
              'speech': _start_token([len(r) for r in rows])}
    return self._generate(self.speech_tower, prompt, self.lengths['speech'], eos, beam_size)

  def _single(self, rows: list[list[int]], eos: int, beam_size: int):
    """Left-padded prompts in the Single Decoder's one sequence of `lengths[name]` tokens."""
    total = self.lengths[self.model.name]
    width = min(total - 1, PROMPT_BUCKET * math.ceil(max(map(len, rows)) / PROMPT_BUCKET))
    return self._generate(self.model.name, {self.model.name: _left_padded(rows, width)},
                          total - width, eos, beam_size)


def _right_padded(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  tokens = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens


def transcribe_recordings(model_dir: str, paths: Sequence[str], beam_size: int = 1,
                          transcription: str | None = None) -> tuple[list[str], dict | None]:
  """A run's transcripts of audio files and, given a `transcription` (`metrics.
  read_transcription`), their error rates; every file and reference is checked before any
  compute."""
  references = transcription and metrics.references_for(paths, transcription)
  wavs = [audio.read_audio(path) for path in paths]
  system = SpeechText.from_run(model_dir, batch_size=min(len(wavs), 16))
  transcripts = system.transcribe(wavs, beam_size, names=paths)
  return transcripts, references and metrics.error_rates(references, transcripts)


def transcribe_files(args) -> int:
  transcripts, rates = transcribe_recordings(args.model_dir, args.audio, args.beam_size,
                                             args.references)
  for text in transcripts:
    print(text)
  if rates:
    words = sum(n for _, n in rates['word_errors'])
    print(f"WER {rates['wer']:.1%}, CER {rates['cer']:.1%} ({len(transcripts)} utterances, "
          f'{words} words, against {args.references})')
  return 0


def speak_text(args) -> int:
  system = SpeechText.from_run(args.model_dir, batch_size=1)
  audio.write_audio(args.out, system.speak([args.text])[0])
  print(f'wrote {args.out}')
  return 0


def add_parser(subparsers) -> None:
  command = subparsers.add_parser(
      'transcribe', help='Transcribe audio files with a trained run (ASR).', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--model_dir', required=True, help='the run (newest checkpoint)')
  command.add_argument('--beam_size', type=int, default=1, help='1: greedy')
  command.add_argument('--references',
                       help='a transcription file (`<s> text </s> (file name without '
                       'extension)` a line, CMU Sphinx\'s format): print the WER too')
  command.add_argument('audio', nargs='+', help='audio files (WAV, FLAC, ...; any rate)')
  command.set_defaults(run=transcribe_files)
  command = subparsers.add_parser(
      'speak', help='Speak a text with a trained run (TTS) into an audio file.',
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--model_dir', required=True, help='the run (newest checkpoint)')
  command.add_argument('-o', '--out', required=True, help='audio file to write (.wav, .flac)')
  command.add_argument('text')
  command.set_defaults(run=speak_text)

