"""Files and folders written whole or not at all, with the permissions a plain write gives."""
import json
import os
import stat

import pytest

from zipper_jax import atomic_files


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_a_written_file_and_folder_have_the_permissions_of_plain_ones(tmp_path):
  atomic_files.write_json(str(tmp_path / 'result.json'), {'wer': 0.5})
  (tmp_path / 'plain.json').write_text('{}')
  assert json.loads((tmp_path / 'result.json').read_text()) == {'wer': 0.5}
  assert mode(tmp_path / 'result.json') == mode(tmp_path / 'plain.json')
  with atomic_files.atomic_directory(str(tmp_path / 'tokenizer')) as partial:
    open(os.path.join(partial, 'centroids.npy'), 'wb').close()
  (tmp_path / 'plain').mkdir()
  assert mode(tmp_path / 'tokenizer') == mode(tmp_path / 'plain')


def test_a_writer_that_fails_leaves_nothing_and_keeps_the_old_version(tmp_path):
  atomic_files.write_json(str(tmp_path / 'result.json'), {'step': 1})
  with pytest.raises(RuntimeError):
    with atomic_files.atomic_file(str(tmp_path / 'result.json')) as partial:
      with open(partial, 'w') as f:
        f.write('{"st')
      raise RuntimeError('killed midway')
  with pytest.raises(RuntimeError):
    with atomic_files.atomic_directory(str(tmp_path / 'new')):
      raise RuntimeError('killed midway')
  assert sorted(os.listdir(tmp_path)) == ['result.json']
  assert json.loads((tmp_path / 'result.json').read_text()) == {'step': 1}
