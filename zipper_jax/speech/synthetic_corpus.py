"""A generated corpus in the real corpus's layout (manifests, TFDS dataset, text vocabulary), for
tests and benchmarks that must not depend on synthesised speech: random sentences over a small
word list, and speech units that are a fixed function of their characters (`frames_per_char`
units each)."""
import json
import os

import numpy as np

from zipper_jax.speech import corpus_tfds
from zipper_jax.vocabularies import train_text_vocabulary

WORDS = ('the a one every small big red old young happy dog cat bird horse child man woman '
         'sees finds likes follows hears carries near under over beside house tree river road '
         'garden quickly slowly today again').split()
SIZES = {'text_only': 300, 'speech_only': 200, 'aligned': 200, 'validation': 40,
         'test_clean': 40, 'test_other': 40}


def units_of(sentence, frames_per_char=2):
  return [(ord(c) * 37 + i) % 1024 for c in sentence for i in range(frames_per_char)]


def write_corpus(directory, sizes=None, frames_per_char=2, vocab_size=120, seed=0):
  """Writes the splits (`sizes`: split -> utterances) and a SentencePiece model; returns the
  sentences."""
  sizes = sizes or SIZES
  rng = np.random.default_rng(seed)
  sentences, seen = [], set()
  while len(sentences) < sum(sizes.values()):
    sentence = ' '.join(rng.choice(WORDS, rng.integers(4, 9)))
    if sentence not in seen:
      seen.add(sentence)
      sentences.append(sentence)
  os.makedirs(os.path.join(directory, 'manifest'), exist_ok=True)
  start = 0
  for split, size in sizes.items():
    with open(os.path.join(directory, 'manifest', f'{split}.jsonl'), 'w') as f:
      for i, sentence in enumerate(sentences[start:start + size]):
        record = {'id': f'{split}-{i}', 'text': sentence, 'source': 'synthetic'}
        if split != 'text_only':
          record['units'] = units_of(sentence, frames_per_char)
        f.write(json.dumps(record) + '\n')
    start += size
  train_text_vocabulary(sentences[:sizes['text_only']],
                        os.path.join(directory, 'text_vocab'), vocab_size=vocab_size)
  corpus_tfds.prepare(directory)
  return sentences
