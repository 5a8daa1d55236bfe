"""A run directory rebuilds its model in a gin config of its own, and a run is never continued
with another model or other vocabularies."""
import os
import re

import gin
import pytest
import seqio

from conftest import zipper_error
from synthetic_tasks import SPEECH_VOCAB, TEXT_VOCAB, experiment_gin
from zipper_jax import main
from zipper_jax.run_dir import RunDir, RunMismatch, model_differences

CLOCKED = "ZipperConfig.cross_attention_clock = {'text': 5.0, 'speech': 1.0}"


def written_run(tmp_path, *bindings, vocabularies=None):
  """A run directory as `zipper train` leaves one before its first step (config.gin and
  vocabularies), for the experiment of `synthetic_tasks`; returns (experiment, run)."""
  experiment = experiment_gin(tmp_path, 10, 8)
  main.parse_gin([experiment], list(bindings))
  run = RunDir(str(tmp_path / 'run'))
  run.write_config(gin.config_str(), vocabularies or {
      'speech': seqio.PassThroughVocabulary(SPEECH_VOCAB),
      'text': seqio.PassThroughVocabulary(TEXT_VOCAB)})
  gin.clear_config(clear_constants=True)
  return experiment, run


def test_the_model_is_rebuilt_without_touching_the_callers_gin_config(tmp_path):
  experiment, run = written_run(tmp_path, CLOCKED)
  main.parse_gin([experiment], [])  # the caller's config: the same model, without the clock
  given = gin.query_parameter('%MODEL').scoped_configurable_fn()
  operative_before = gin.config_str()

  trained = run.model
  assert trained.config.cross_attention_clock == {'text': 5.0, 'speech': 1.0}
  assert run.task_feature_lengths == {'speech': 12, 'text': 6} and run.config.train_steps == 10
  assert gin.config_str() == operative_before  # every binding and macro as it was
  with pytest.raises(ValueError, match='no value bound'):  # the run's binding did not leak
    gin.query_parameter('ZipperConfig.cross_attention_clock')
  assert model_differences(given, trained) == [
      "Zipper.config.cross_attention_clock is None here, {'speech': 1.0, 'text': 5.0} in the run"]


def test_training_another_model_into_a_run_is_refused_before_writing(tmp_path, capsys):
  experiment, run = written_run(tmp_path)
  config = open(run.config_path).read()
  assert re.search(r'cross_attention_clock is .*5\.0.* here, None in the run', zipper_error(
      capsys, ['train', f'--gin_file={experiment}', f'--gin.{CLOCKED.replace(" ", "")}']))
  assert "Zipper.config.towers['text'].num_layers is 4 here, 2 in the run" in zipper_error(
      capsys, ['train', f'--gin_file={experiment}', '--gin.text/TowerConfig.num_layers=4'])
  assert open(run.config_path).read() == config
  assert not os.path.exists(os.path.join(run.path, 'checkpoints'))


def test_training_with_other_vocabularies_is_refused(tmp_path):
  experiment, run = written_run(tmp_path, vocabularies={
      'speech': seqio.PassThroughVocabulary(SPEECH_VOCAB),
      'text': seqio.PassThroughVocabulary(TEXT_VOCAB + 2)})
  with pytest.raises(RunMismatch, match=r"the vocabulary of 'text' is "
                                        r'PassThroughVocabulary\(size=64.* in the run'):
    main.main(['train', f'--gin_file={experiment}', '--verbose'])
  assert not os.path.exists(os.path.join(run.path, 'checkpoints'))


def test_a_folder_without_config_is_no_run(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not a run directory'):
    RunDir(str(tmp_path)).model
