"""English sentences from text that Debian packages ship, in spoken form.

Each `TextSource` names the package that carries it and its licence, which the corpus records in
its metadata. Sentences are kept in `text_normalization.spoken_form` (lower case words, numbers
spelled out): what a speaker says and what ASR WER is scored on.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import subprocess
from typing import Callable, Iterable, Iterator

from zipper_jax.speech import text_normalization

MIN_WORDS, MAX_WORDS = 4, 30


@dataclasses.dataclass(frozen=True)
class TextSource:
  name: str
  debian_package: str
  licence: str
  read: Callable[[], Iterable[str]]  # passages; sentences are split out of them


def _bible() -> Iterator[str]:
  listing = subprocess.run(
      # `-o n` tags each word with its Strong's number: the module's plain text runs some words
      # together ("Godcreated"), and the tags are where the spaces belong.
      ['diatheke', '-b', 'engWEB2015eb', '-f', 'plain', '-o', 'n', '-k',
       'Genesis 1:1-Revelation 22:21'],
      capture_output=True, text=True, check=True).stdout
  for line in listing.splitlines():
    book_chapter_verse, sep, verse = line.partition(': ')
    if sep and re.search(r'\d+:\d+$', book_chapter_verse):
      yield re.sub(r'\s*<[^>]*>', ' ', verse)


def _wordnet_examples() -> Iterator[str]:
  for path in sorted(glob.glob('/usr/share/wordnet/data.*')):
    with open(path, encoding='latin-1') as f:
      for line in f:
        gloss = line.partition(' | ')[2]
        yield from re.findall(r'"([^"]+)"', gloss)


def _fortunes() -> Iterator[str]:
  for path in sorted(glob.glob('/usr/share/games/fortunes/*.dat')):
    with open(path[:-len('.dat')], encoding='utf-8', errors='replace') as f:
      for fortune in f.read().split('\n%\n'):
        # Attributions ("-- Mark Twain") and indented verse do not read as sentences.
        yield ' '.join(line for line in fortune.splitlines()
                       if line.strip() and not line.lstrip().startswith('--'))


SOURCES = (
    TextSource('world_english_bible', 'sword-text-web', 'public domain', _bible),
    TextSource('wordnet_examples', 'wordnet-base',
               'WordNet 3.0 licence (Princeton; permissive, BSD-like)', _wordnet_examples),
    TextSource('fortunes', 'fortunes', 'BSD (fortune-mod data)', _fortunes),
)


def split_sentences(passage: str) -> list[str]:
  return [s for s in re.split(r'(?<=[.!?;])["\u201d\u2019)]*\s+', passage) if s.strip()]


def normalize(sentence: str) -> str | None:
  """The sentence as spoken words, or None if it cannot be read aloud cleanly (markup, symbols,
  too short or too long)."""
  text = text_normalization.spoken_form(sentence)
  if text_normalization.SPOKEN_CHARACTERS.search(text):
    return None
  words = text.split()
  if not MIN_WORDS <= len(words) <= MAX_WORDS:
    return None
  return ' '.join(words)


def sentences(sources: Iterable[TextSource] = SOURCES) -> Iterator[tuple[str, str]]:
  """(source name, normalised sentence), each sentence once, in source order."""
  seen = set()
  for source in sources:
    for passage in source.read():
      for raw in split_sentences(passage):
        sentence = normalize(raw)
        if sentence and sentence not in seen:
          seen.add(sentence)
          yield source.name, sentence


@functools.cache
def all_sentences() -> tuple[tuple[str, str], ...]:
  """`sentences()` of every source, read once a process (the Bible alone takes seconds)."""
  return tuple(sentences())


def missing_packages() -> list[str]:
  """Debian packages of `SOURCES` (and the synthesiser) that are not installed."""
  markers = {'sword-text-web': '/usr/share/sword/mods.d/engWEB2015eb.conf',
             'diatheke': '/usr/bin/diatheke', 'wordnet-base': '/usr/share/wordnet/data.noun',
             'fortunes': '/usr/share/games/fortunes/wisdom', 'flite': '/usr/bin/flite'}
  return [package for package, path in markers.items() if not os.path.exists(path)]
