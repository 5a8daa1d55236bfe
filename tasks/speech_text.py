"""Tasks and mixtures of the speech-text corpus, registered on import.

The corpus lives in `$ZIPPER_CORPUS_DIR` (default `~/.cache/zipper_jax/corpus`; build one with
`zipper corpus build --out DIR`), read when a dataset is first built, not at import:

  text_vocab.model            SentencePiece model trained on the text-only split
  zipper_speech_text/1.0.0/   the TFDS dataset (`zipper_jax.speech.corpus_tfds`): per utterance
                              "id", "text" and "units" (text-only utterances have no units)

Corpus splits: `text_only` (text tower pre-training), `speech_only` (speech tower pre-training),
`aligned` (ASR/TTS fine-tuning, stored in a seeded random order so that every fraction is a
prefix: the 1% subset lies inside the 10%), `validation`, `test_clean`, `test_other`.

`speech_lm` trains on the speech of `speech_only` and `aligned` (their transcripts unseen), as
the paper pre-trains its speech tower on unlabelled speech: on `speech_only` alone (1,000
utterances in `tiny`) the tiny tower learnt its utterances by heart in 300 steps (training loss
0.18), and the Zipper zipped from it transcribed worse (docs/paper.md). `text_lm` keeps to
`text_only`.

Zipper tasks carry both modalities (`text`, `speech`; an absent one is empty) and their
interleaved layout: `text_lm`, `speech_lm`, `asr`, `tts`, with `_10pct` and `_1pct` variants of
the aligned ones. Single Decoder tasks carry one sequence `single`: `single_text_lm`,
`single_speech_lm`, `single_asr`, `single_tts` (and fractions). Mixtures: `asr_tts` (the paper's
fine-tuning mix) and `asr_tts_unimodal` (plus the unimodal LM tasks, to preserve each tower's
ability), each with fractions and `single_` twins; rates come from `mixture_rates`.
"""
from __future__ import annotations

import functools
import os

import gin
import seqio

from tasks import preprocessors
from zipper_jax.speech import corpus_tfds
from zipper_jax.speech.vocabulary import SpeechVocabulary
from zipper_jax.vocabularies import SingleDecoderVocabulary

CORPUS_DIR = os.environ.get('ZIPPER_CORPUS_DIR',
                            os.path.expanduser('~/.cache/zipper_jax/corpus'))
FRACTIONS = {'': 1.0, '_10pct': 0.1, '_1pct': 0.01}

TEXT_VOCABULARY = seqio.SentencePieceVocabulary(os.path.join(CORPUS_DIR, 'text_vocab.model'))
SPEECH_VOCABULARY = SpeechVocabulary(CORPUS_DIR)  # with the corpus's tokenizer, resynthesiser
VOCABULARIES = {'text': TEXT_VOCABULARY, 'speech': SPEECH_VOCABULARY}


def source(train_split: str, fraction: float = 1.0) -> seqio.TfdsDataSource:
  """Train on the first `fraction` of `train_split`; evaluate on the held-out and test splits."""
  train = train_split if fraction == 1 else f'{train_split}[:{fraction:.0%}]'
  return seqio.TfdsDataSource(
      tfds_name=f'{corpus_tfds.NAME}:{corpus_tfds.VERSION}', tfds_data_dir=CORPUS_DIR,
      splits={'train': train, 'validation': 'validation', 'test_clean': 'test_clean',
              'test_other': 'test_other'})


@seqio.map_over_dataset
def _rename_units(example):
  return {'text': example['text'], 'speech': example['units']}


# (name, corpus split, modalities present, interleaved order, loss on)
TASKS = (
    ('text_lm', 'text_only', ('text',), ('text',), ('text',)),
    ('speech_lm', 'speech_only+aligned', ('speech',), ('speech',), ('speech',)),
    ('asr', 'aligned', ('speech', 'text'), ('speech', 'text'), ('text',)),
    ('tts', 'aligned', ('text', 'speech'), ('text', 'speech'), ('speech',)),
)


def register(name: str, source: seqio.DataSource, prepare, present, order, loss_on) -> None:
  """Task `name` (the Zipper's) and `single_<name>` (the Single Decoder's) over `source`, whose
  examples `prepare` turns into {'text': string, 'speech': unit ids} (those `present`), in the
  corpus's vocabularies; `order`: the modalities' interleaved layout, `loss_on`: the target."""
  common = [prepare, preprocessors.encode(name, VOCABULARIES, present),
            preprocessors.check_tokens(name, VOCABULARIES, present)]
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=common + [preprocessors.sequential_layout(
          order, loss_on, absent=[m for m in VOCABULARIES if m not in present])],
      output_features={**{m: seqio.Feature(v, add_eos=False) for m, v in VOCABULARIES.items()},
                       **preprocessors.layout_features(VOCABULARIES)})
  seqio.TaskRegistry.add(
      f'single_{name}', source=source,
      preprocessors=common + [preprocessors.single_decoder_sequence(
          order, loss_on, TEXT_VOCABULARY)],
      output_features={'single': seqio.Feature(
          SingleDecoderVocabulary(TEXT_VOCABULARY, SPEECH_VOCABULARY), add_eos=False),
                       'single_weights': preprocessors.layout_features(['single'])[
                           'single_weights']})


@gin.configurable
def mixture_rates(asr: float = 1.0, tts: float = 1.0, text_lm: float = 0.5,
                  speech_lm: float = 0.5) -> dict[str, float]:
  """Sampling rates of the mixtures' tasks, read when a mixture's dataset is built."""
  return {'asr': asr, 'tts': tts, 'text_lm': text_lm, 'speech_lm': speech_lm}


def rate(kind: str, task) -> float:
  """A mixture's rate function: `mixture_rates()[kind]`, read when the mixture is built."""
  del task
  return mixture_rates()[kind]


def _register_all():
  for suffix, fraction in FRACTIONS.items():
    for name, split, present, order, loss_on in TASKS:
      if split == 'aligned' or not suffix:
        register(name + suffix, source(split, fraction), _rename_units, present, order, loss_on)
    for prefix in ('', 'single_'):
      cross = [(f'{prefix}{kind}{suffix}', functools.partial(rate, kind))
               for kind in ('asr', 'tts')]
      unimodal = [(f'{prefix}{kind}', functools.partial(rate, kind))
                  for kind in ('text_lm', 'speech_lm')]
      seqio.MixtureRegistry.add(f'{prefix}asr_tts{suffix}', cross)
      seqio.MixtureRegistry.add(f'{prefix}asr_tts_unimodal{suffix}', cross + unimodal)


_register_all()
