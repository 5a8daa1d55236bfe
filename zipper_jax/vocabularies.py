"""Vocabularies of the towers, and how a run keeps them beside its checkpoints.

Text: a SentencePiece model (seqio's `SentencePieceVocabulary`; 0 = padding, 1 = end of
sentence), or the tokenizer a pre-trained tower came with (`TokenizerVocabulary`). Speech: k-means
units and begin/end of audio, placed so that no speech id is 0, the padding id every feature
converter relies on.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from typing import Iterable, Mapping, Sequence

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf
import tokenizers

from zipper_jax import atomic_files

NUM_UNITS = 1024


class UnitVocabulary(seqio.Vocabulary):
  """Discrete units of any modality (speech units, image or sensor codes).

  Unit u <-> id u + 1; begin = num_units + 1, end = num_units + 2. For speech `size` is 1027:
  the paper's 1026 tokens (1024 units, begin and end of audio) plus the padding id 0.
  """

  def __init__(self, num_units: int = NUM_UNITS):
    self.num_units = num_units
    super().__init__()

  @property
  def bos_id(self) -> int:
    return self.num_units + 1

  @property
  def eos_id(self) -> int:
    return self.num_units + 2

  @property
  def unk_id(self) -> None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.num_units + 3

  def _encode(self, units: Sequence[int]) -> list[int]:
    bad = [u for u in units if not 0 <= u < self.num_units]
    if bad:
      raise ValueError(f'speech units {bad[:5]} are outside [0, {self.num_units})')
    return [u + 1 for u in units]

  def _decode(self, ids: Iterable[int]) -> list[int]:
    return [i - 1 for i in ids if 1 <= i <= self.num_units]

  def _encode_tf(self, units: tf.Tensor) -> tf.Tensor:
    """Units outside [0, num_units) become 0, the padding id, for `check_tokens` to report."""
    units = tf.convert_to_tensor(units)
    return tf.where((units >= 0) & (units < self.num_units), units + 1, tf.zeros_like(units))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return tf.boolean_mask(ids - 1, (ids >= 1) & (ids <= self.num_units))

  def __eq__(self, other) -> bool:
    return isinstance(other, UnitVocabulary) and other.num_units == self.num_units

  def __str__(self) -> str:
    return f'UnitVocabulary(num_units={self.num_units})'

  def save(self, out: str, name: str) -> dict:
    del out, name
    return {'num_units': self.num_units}

  @classmethod
  def load(cls, root: str, entry: Mapping) -> UnitVocabulary:
    del root
    return cls(entry['num_units'])


class TokenizerVocabulary(seqio.Vocabulary):
  """A Hugging Face `tokenizers` tokenizer (a tokenizer.json): an imported pre-trained tower
  reads the ids it was trained on.

  Ids are the tokenizer's own, and no special tokens are added. seqio pads with id 0, which is
  then also the tokenizer's token 0 (for SmolLM2 `<|endoftext|>`, for Llama 3 a plain `!`);
  decoding drops it, as padding.
  """

  def __init__(self, tokenizer_file: str, eos_id: int | None, bos_id: int | None = None):
    self.tokenizer_file = tokenizer_file
    self.tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
    self._eos_id, self._bos_id = eos_id, bos_id
    super().__init__()

  @property
  def eos_id(self) -> int | None:
    return self._eos_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def unk_id(self) -> None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids if i != self.pad_id],
                                 skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """One string (a scalar) to its ids."""
    ids = tf.numpy_function(lambda x: np.asarray(self._encode(x.item().decode()), np.int32), [s],
                            tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Ids [..., length] to strings [...]."""
    def decode_rows(rows):
      flat = rows.reshape(-1, rows.shape[-1])
      return np.asarray([self._decode(row).encode() for row in flat],
                        object).reshape(rows.shape[:-1])
    text = tf.numpy_function(decode_rows, [ids], tf.string, stateful=False)
    return tf.ensure_shape(text, ids.shape[:-1])

  def __eq__(self, other) -> bool:
    return (isinstance(other, TokenizerVocabulary) and other.eos_id == self.eos_id and
            other.tokenizer.to_str() == self.tokenizer.to_str())

  def __str__(self) -> str:
    return f'TokenizerVocabulary({self.tokenizer_file!r}, eos_id={self.eos_id})'

  def save(self, out: str, name: str) -> dict:
    shutil.copyfile(self.tokenizer_file, os.path.join(out, f'{name}.tokenizer.json'))
    return {'file': f'{name}.tokenizer.json', 'eos_id': self.eos_id, 'bos_id': self.bos_id}

  @classmethod
  def load(cls, root: str, entry: Mapping) -> TokenizerVocabulary:
    return cls(os.path.join(root, entry['file']), entry['eos_id'], entry['bos_id'])


def train_text_vocabulary(sentences: Iterable[str], model_prefix: str,
                          vocab_size: int) -> seqio.SentencePieceVocabulary:
  """A unigram SentencePiece model over `sentences`, with seqio's id layout (pad 0, eos 1).

  One training thread keeps the model a function of the sentences alone.
  """
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
      hard_vocab_limit=False, num_threads=1, minloglevel=2)
  return seqio.SentencePieceVocabulary(f'{model_prefix}.model')


class SingleDecoderVocabulary(seqio.PassThroughVocabulary):
  """The Single Decoder's ids: `text` ids, then `speech` ids shifted past them. Its size is read
  off the text vocabulary when first needed, so making one reads no file."""

  def __init__(self, text: seqio.Vocabulary, speech: seqio.Vocabulary):
    self.text, self.speech = text, speech
    super().__init__(size=0)

  @property
  def _base_vocab_size(self):
    return self.text.vocab_size + self.speech.vocab_size

  @property
  def size(self):
    return self._base_vocab_size



  def __str__(self) -> str:
    return f'SingleDecoderVocabulary(text={self.text}, speech={self.speech})'

  def save(self, out: str, name: str) -> dict:
    return {'text': save_vocabulary(out, f'{name}.text', self.text),
            'speech': save_vocabulary(out, f'{name}.speech', self.speech)}

  @classmethod
  def load(cls, root: str, entry: Mapping) -> SingleDecoderVocabulary:
    return cls(load_vocabulary(root, entry['text']), load_vocabulary(root, entry['speech']))


def equivalent(a: seqio.Vocabulary | None, b: seqio.Vocabulary | None) -> bool:
  """Whether two vocabularies map ids alike, wherever their files are (seqio compares a
  SentencePiece vocabulary's file path too)."""
  if isinstance(a, seqio.SentencePieceVocabulary) and isinstance(b, seqio.SentencePieceVocabulary):
    return a.sp_model == b.sp_model and a.extra_ids == b.extra_ids
  if isinstance(a, SingleDecoderVocabulary) and isinstance(b, SingleDecoderVocabulary):
    return equivalent(a.text, b.text) and equivalent(a.speech, b.speech)
  return a == b


# A run keeps its vocabularies in `vocabularies/`: files, and an index.json entry per tower.
# seqio's own vocabularies are written here; any other class defines
# `save(out, name) -> entry` and `load(root, entry)` (a classmethod), and its entry names it, so
# that vocabularies of other modalities (`zipper_jax.speech.vocabulary`) load with no change here.

def save_vocabularies(directory: str, vocabularies: Mapping[str, seqio.Vocabulary]) -> None:
  """Writes `vocabularies` under `directory/vocabularies`, so that a run's checkpoints can be
  read back into text, units and audio without the corpus they were trained on."""
  out = os.path.join(directory, 'vocabularies')
  os.makedirs(out, exist_ok=True)
  index = {name: save_vocabulary(out, name, vocabulary)
           for name, vocabulary in vocabularies.items()}
  atomic_files.write_json(os.path.join(out, 'index.json'), index)


def load_vocabularies(directory: str) -> dict[str, seqio.Vocabulary]:
  """Inverse of `save_vocabularies`."""
  root = os.path.join(directory, 'vocabularies')
  with open(os.path.join(root, 'index.json')) as f:
    index = json.load(f)
  return {name: load_vocabulary(root, entry) for name, entry in index.items()}


def save_vocabulary(out: str, name: str, vocabulary: seqio.Vocabulary) -> dict:
  """Copies what `vocabulary` reads into `out` as `name...`; returns its index entry."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    shutil.copyfile(vocabulary.sentencepiece_model_file, os.path.join(out, f'{name}.model'))
    return {'kind': 'sentencepiece', 'file': f'{name}.model'}
  if hasattr(vocabulary, 'save'):
    cls = type(vocabulary)
    return {'kind': f'{cls.__module__}:{cls.__qualname__}', **vocabulary.save(out, name)}
  if isinstance(vocabulary, seqio.PassThroughVocabulary):
    return {'kind': 'pass_through', 'size': vocabulary.vocab_size, 'eos_id': vocabulary.eos_id}
  raise TypeError(f'cannot save vocabulary {name!r} of type {type(vocabulary).__name__}: give '
                  'its class save(out, name) and load(root, entry)')


def load_vocabulary(root: str, entry: Mapping) -> seqio.Vocabulary:
  kind = entry['kind']
  if kind == 'sentencepiece':
    return seqio.SentencePieceVocabulary(os.path.join(root, entry['file']))
  if kind == 'pass_through':
    return seqio.PassThroughVocabulary(entry['size'], entry['eos_id'])
  module, _, name = kind.partition(':')
  return getattr(importlib.import_module(module), name).load(root, entry)
