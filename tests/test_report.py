"""`zipper report`: runs side by side from their eval JSON and TensorBoard event files."""
import json

import pytest
from clu import metric_writers

from zipper_jax import main
from zipper_jax.speech import report


def fake_run(directory, wer, steps=(10, 20, 30)):
  """What a trained, evaluated run leaves: event files (as the trainer writes them with clu)
  and eval/*.json (as `zipper eval` writes them)."""
  directory.mkdir(parents=True)
  writer = metric_writers.create_default_writer(str(directory))
  for step in steps:
    writer.write_scalars(step, {'loss': 5.0 / step, 'text/loss': 4.0 / step,
                                'speech/loss': 6.0 / step, 'steps_per_sec': 2.0})
  writer.flush()
  (directory / 'eval').mkdir()
  (directory / 'eval' / 'test_clean.json').write_text(json.dumps({
      'step': steps[-1], 'utterances': 4, 'beam_size': 4,
      'asr_greedy': {'wer': wer, 'cer': wer / 2}, 'asr_beam': {'wer': wer - 0.1, 'cer': 0.1},
      'tts': {'wer': 0.9, 'cer': 0.5, 'floor_wer': 0.2, 'ceiling_wer': 0.6}}))
  (directory / 'eval' / 'text_perplexity.json').write_text(json.dumps(
      {'step': steps[-1], 'inside_model': 30.0, 'tower_alone': 30.0}))
  return directory


def test_training_curves_are_read_back_per_tag(tmp_path):
  curves = report.training_curves(str(fake_run(tmp_path / 'run', 0.5)))
  steps, values = curves['text/loss']
  assert steps.tolist() == [10, 20, 30] and values[0] == pytest.approx(0.4)


def test_report_sets_runs_side_by_side_with_plots(tmp_path, capsys):
  zipper = fake_run(tmp_path / 'zipper', 0.5)
  single = fake_run(tmp_path / 'single', 0.8)
  assert main.main(['report', '--model_dir', str(zipper), '--compare', str(single)]) == 0
  markdown = (zipper / 'report' / 'report.md').read_text()
  assert '| test_clean: ASR WER, greedy | 50.0% | 80.0% |' in markdown
  assert '| test_clean: TTS floor: judge on original audio | 20.0% | 20.0% |' in markdown
  assert '![WER per run](wer.png)' in markdown and '(training.png)' in markdown
  for png in ('wer.png', 'training.png'):
    assert (zipper / 'report' / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'report.md' in capsys.readouterr().out


def test_a_run_without_results_still_reports(tmp_path):
  (tmp_path / 'empty').mkdir()
  markdown = report.write_report([str(tmp_path / 'empty')], str(tmp_path / 'out'))
  assert 'No evaluation results yet' in markdown
