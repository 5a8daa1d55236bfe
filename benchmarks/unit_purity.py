"""How phonetic a corpus's speech units are: the phone under each unit, from the synthesiser's own
segment timings, against the unit the corpus's tokenizer gave it.

  python benchmarks/unit_purity.py --corpus=runs/demo/corpus     # prints JSON

flite speaks every utterance again with `-psdur` (its phones and their end times; the audio is
the corpus's, sample for sample) and each unit is labelled with the phone at its centre. Two
figures, as HuBERT judges its k-means units:

- `pnmi`: phone-normalised mutual information, I(phone; unit) / H(phone). A plug-in estimate,
  biased upwards by many units on few frames: `pnmi_shuffled` is the same of the units shuffled
  (no information at all), the estimate's floor.
- `heldout_accuracy`: each unit's most frequent phone in one half of the utterances, scored on
  the other half (both ways, averaged): unbiased, and read as a frame-level phone accuracy of a
  unit-to-phone lookup table.

Only flite voices give timings (a corpus's Piper `test_other` is left out), and only utterances
whose units span flite's timings are scored (`left_out` lists the others).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

from zipper_jax.speech import synthesis, unit_tokenizer


def phones_of(text: str, voice: str, rate: float) -> list[tuple[str, float]]:
  """flite's (phone, end in seconds) of `text`, spoken as `synthesis.synthesize` speaks it."""
  with tempfile.TemporaryDirectory() as directory:
    done = subprocess.run(['flite', '-voice', voice.partition('/')[2], '-psdur', '--setf',
                           f'duration_stretch={1 / rate:.4f}', '-t', text,
                           '-o', os.path.join(directory, 'speech.wav')],
                          check=True, capture_output=True, text=True)
  return [(phone, float(end)) for phone, _, end in
          (segment.rpartition(':') for segment in done.stdout.split())]


def unit_labels(phones: list[tuple[str, float]], num_units: int,
                config: unit_tokenizer.FeatureConfig) -> list[str]:
  """The phone at the centre of each unit (the last phone for units past its end): unit j
  stacks the centred frames stack * j ... stack * j + stack - 1."""
  frames = config.stack * np.arange(num_units) + (config.stack - 1) / 2
  centres = frames * config.hop_length / config.sample_rate
  ends = np.array([end for _, end in phones])
  index = np.minimum(np.searchsorted(ends, centres, side='right'), len(phones) - 1)
  return [phones[i][0] for i in index]


def pnmi(phones: np.ndarray, units: np.ndarray) -> float:
  joint = np.zeros((phones.max() + 1, units.max() + 1))
  np.add.at(joint, (phones, units), 1)
  p = joint / joint.sum()
  p_phone, p_unit = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
  seen = p > 0
  information = (p[seen] * np.log(p[seen] / (p_phone * p_unit)[seen])).sum()
  p_phone = p_phone[p_phone > 0]
  return float(information / -(p_phone * np.log(p_phone)).sum())


def heldout_accuracy(phones: list[np.ndarray], units: list[np.ndarray]) -> float:
  halves = (slice(0, None, 2), slice(1, None, 2))
  accuracies = []
  for fit, score in (halves, halves[::-1]):
    fit_phones, fit_units = np.concatenate(phones[fit]), np.concatenate(units[fit])
    joint = np.zeros((max(map(np.max, units)) + 1, max(map(np.max, phones)) + 1))
    np.add.at(joint, (fit_units, fit_phones), 1)
    lookup = joint.argmax(1)
    lookup[joint.sum(1) == 0] = np.bincount(fit_phones).argmax()  # units unseen in this half
    accuracies.append(np.mean(lookup[np.concatenate(units[score])] ==
                              np.concatenate(phones[score])))
  return float(np.mean(accuracies))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--corpus', default='runs/demo/corpus')
  parser.add_argument('--splits', default='test_clean,aligned')
  parser.add_argument('--utterances', type=int, default=1000, help='at most, over the splits')
  args = parser.parse_args(argv)
  config = unit_tokenizer.SpeechTokenizer.load(
      os.path.join(args.corpus, 'speech_tokenizer')).config
  lines = [json.loads(line) for split in args.splits.split(',')
           for line in open(os.path.join(args.corpus, 'manifest', f'{split}.jsonl'))]
  lines = [line for line in lines if line['voice'] in synthesis.FLITE_VOICES][:args.utterances]
  if not lines:
    raise SystemExit(f'no utterance of a flite voice in {args.splits} of {args.corpus}')
  inventory, phones, units, left_out = {}, [], [], []
  for line in lines:
    timed = phones_of(line['text'], line['voice'], line['rate'])
    # The units cover the audio in whole units: where flite's timings end elsewhere (its diphone
    # voice `kal16` times a final pause it does not speak), the labels cannot be trusted.
    if abs(timed[-1][1] * config.unit_rate - len(line['units'])) > 1:
      left_out.append(line['id'])
      continue
    labels = unit_labels(timed, len(line['units']), config)
    phones.append(np.array([inventory.setdefault(p, len(inventory)) for p in labels]))
    units.append(np.asarray(line['units']))
  if len(phones) < 2:
    raise SystemExit(f'{len(phones)} of {len(lines)} utterances match the timings flite gives '
                     'them: two or more are needed')
  all_phones, all_units = np.concatenate(phones), np.concatenate(units)
  result = {'corpus': args.corpus, 'splits': args.splits, 'utterances': len(phones),
            'left_out': left_out,
            'units': int(len(all_units)), 'phones': len(inventory), 'unit_rate': config.unit_rate,
            'units_used': int(len(np.unique(all_units))),
            'pnmi': pnmi(all_phones, all_units),
            'pnmi_shuffled': pnmi(all_phones, np.random.default_rng(0).permutation(all_units)),
            'heldout_accuracy': heldout_accuracy(phones, units)}
  print(json.dumps(result, indent=2))
  return result


if __name__ == '__main__':
  main()
