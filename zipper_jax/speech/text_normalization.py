"""The English text normaliser every transcript passes before WER/CER, and that the corpus's
sentences are written in: lower case, numbers spelled out, no punctuation, ASCII letters and
apostrophes only. One normaliser for every system keeps their error rates comparable.
"""
from __future__ import annotations

import re
import unicodedata

import num2words

SPOKEN_CHARACTERS = re.compile(r"[^a-z' ]")


def _spell_number(match: re.Match) -> str:
  number = match.group().replace(',', '')
  return ' ' + num2words.num2words(float(number) if '.' in number else int(number)) + ' '


def spoken_form(text: str) -> str:
  """Lower case, ASCII-folded, numbers spelled out, punctuation removed; characters that are
  not spoken words (markup, symbols) are left in place for the caller to judge."""
  text = re.sub('[\u2010-\u2015]', ' ', text)  # dashes part words
  text = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore').decode()
  text = re.sub(r'\d+(?:,\d{3})*(?:\.\d+)?', _spell_number, text)
  text = text.replace('&', ' and ').replace('-', ' ').lower()
  text = re.sub(r"[.,;:!?\"()]|'(?![a-z])|(?<![a-z])'", ' ', text)
  return ' '.join(text.split())


def normalize_transcript(text: str) -> str:
  """`spoken_form`, with anything else that is not a word dropped: for scoring transcripts."""
  return ' '.join(SPOKEN_CHARACTERS.sub(' ', spoken_form(text)).split())
