"""Error rates and perplexity against cases worked out by hand; the results table."""
import math

import pytest

from zipper_jax.speech import evaluation, metrics


def test_word_and_character_error_rates_by_hand():
  # "the cat sat" -> "the bat sat down": 1 substitution + 1 insertion over 3 words;
  # characters: c->b and " down" (5 inserted) over 11 reference characters.
  rates = metrics.error_rates(['the cat sat'], ['the bat sat down'])
  assert rates['wer'] == pytest.approx(2 / 3)
  assert rates['cer'] == pytest.approx(6 / 11)


def test_rates_pool_edits_over_the_whole_set():
  # 1 deletion in 4 words + 0 errors in 1 word: 1/5 pooled (the per-utterance mean would be 1/8).
  rates = metrics.error_rates(['a b c d', 'e'], ['a b d', 'e'])
  assert rates['wer'] == pytest.approx(1 / 5)
  assert rates['word_errors'] == [[1, 4], [0, 1]]  # each utterance's edits and words


def test_word_errors_count_every_kind_of_edit():
  # substitution + insertion; two deletions; everything deleted.
  rates = metrics.error_rates(['the cat sat', 'a b c d', 'one two three'],
                              ['the bat sat down', 'a d', ''])
  assert rates['word_errors'] == [[2, 3], [2, 4], [3, 3]]
  assert rates['wer'] == pytest.approx(7 / 10)


def test_transcripts_are_normalised_before_scoring():
  rates = metrics.error_rates(['he paid 25 dollars'], ['He paid twenty-five dollars!'])
  assert rates == {'wer': 0.0, 'cer': 0.0, 'word_errors': [[0, 5]]}  # twenty five: two words


def test_an_empty_hypothesis_is_all_deletions():
  assert metrics.error_rates(['one two three'], [''])['wer'] == 1.0


def test_unscorable_inputs_are_refused():
  with pytest.raises(ValueError, match='2 references but 1 hypotheses'):
    metrics.error_rates(['a', 'b'], ['a'])
  with pytest.raises(ValueError, match='empty after normalisation'):
    metrics.error_rates(['?!'], ['a'])


def test_perplexity_is_exp_of_the_mean_loss():
  assert metrics.perplexity(0.0) == 1.0
  assert metrics.perplexity(math.log(50)) == pytest.approx(50)


def test_table_sets_runs_side_by_side():
  runs = {'zipper': {'test_clean/asr_greedy/wer': 0.5, 'text/inside_model': 12.345},
          'single': {'test_clean/asr_greedy/wer': 0.75}}
  table = evaluation.format_table(runs, ['test_clean'])
  assert '| | zipper | single |' in table
  assert '| test_clean: ASR WER, greedy | 50.0% | 75.0% |' in table
  assert '| text perplexity: the model, text-only input | 12.35 |  |' in table
  assert 'beam' not in table  # rows no run has are left out


def test_nested_results_flatten_to_named_numbers():
  flat = evaluation.flatten({'step': 3, 'asr_greedy': {'wer': 0.5, 'cer': 0.25},
                             'asr_samples': [{'reference': 'a', 'hypothesis': 'b'}]})
  assert flat == {'asr_greedy/wer': 0.5, 'asr_greedy/cer': 0.25}


def test_a_sphinx_transcription_is_read_and_matched_by_file_name(tmp_path):
  path = tmp_path / 'transcription'
  path.write_text('<s> he was not an ill disposed young man </s> (book-0880)\n\n'
                  'unless to be rather cold (book-0890)\n')
  assert metrics.read_transcription(str(path)) == {
      'book-0880': 'he was not an ill disposed young man', 'book-0890': 'unless to be rather cold'}
  assert metrics.references_for(['/clips/book-0890.wav', 'book-0880.flac'], str(path)) == [
      'unless to be rather cold', 'he was not an ill disposed young man']
  with pytest.raises(ValueError, match='no reference for x/book-0900.wav'):
    metrics.references_for(['x/book-0900.wav'], str(path))
  path.write_text('<s> no utterance id </s>\n')
  with pytest.raises(ValueError, match=r'transcription:1: not `text \(utterance id\)`'):
    metrics.read_transcription(str(path))
