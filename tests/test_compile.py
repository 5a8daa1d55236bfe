"""`zipper compile`: a run's step lowered and compiled for TPU slices and H100 nodes this machine
does not have (libtpu and the CUDA plugin as compile-only targets), and the fit table."""
import dataclasses
import json
import os
import subprocess
import sys

import gin
import pytest

from zipper_jax import main, models, topologies
from zipper_jax.tower import TowerConfig
from zipper_jax.zipper import Edge, ZipperConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks'))
from abstract_step import compile_train_step  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'gin/experiments/tiny_zipper_frozen_text.gin'
FIELDS = {'topology', 'devices', 'fits', 'bytes_per_device', 'hbm_bytes', 'flops_per_step',
          'step_seconds_at_peak', 'compile_seconds'}


def last_json(text: str) -> dict:
  return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow
def test_fit_table_compiles_the_tiny_zipper_for_a_tpu_slice_and_h100s(tmp_path):
  done = subprocess.run(
      [sys.executable, 'benchmarks/fit_table.py', f'--experiments={TINY}',
       '--topologies=v5e:2x2,h100:1x2', f'--markdown={tmp_path / "fit.md"}',
       f'--json={tmp_path / "fit.json"}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads((tmp_path / 'fit.json').read_text())[TINY]
  assert [r['topology'] for r in results] == ['v5e:2x2', 'h100:1x2']
  main.parse_gin([TINY], [], finalize=False)
  model, batch_size = main.configured_model(), gin.query_parameter('%BATCH_SIZE')
  lengths = {'speech': 384, 'text': 96}
  for result, devices in zip(results, (4, 2)):
    assert FIELDS <= result.keys(), result
    assert result['fits'] and result['devices'] == devices
    assert result['mesh'] == {'data': devices, 'fsdp': 1, 'tensor': 1}  # the run's (-1, 1, 1)
    sizes = result['bytes_per_device']
    assert 0 < sizes['params'] < sizes['total'] < result['hbm_bytes'] and sizes['temp'] > 0
    # Exact FLOPs of the step (not XLA's, which counts a scanned body once) at the chip's peak.
    assert result['flops_per_step'] == batch_size * model.train_flops_per_example(lengths,
                                                                                  ['text'])
    peak = {'v5e:2x2': 197e12, 'h100:1x2': 989e12}[result['topology']]
    assert result['step_seconds_at_peak'] == pytest.approx(
        result['flops_per_step'] / devices / peak)
  table = (tmp_path / 'fit.md').read_text()
  assert table.count('| tiny_zipper_frozen_text |') == 2 and '| yes |' in table


@pytest.mark.slow
def test_a_program_too_big_for_the_chip_exits_with_the_shortfall(capfd):
  # 65,536 packed rows of 480 tokens: one [batch, length, 128] activation is 16 GiB.
  assert main.main(['compile', '--topology=v5e:2x2', f'--gin_file={TINY}',
                    '--gin.BATCH_SIZE=65536']) == 1
  out, err = capfd.readouterr()
  result = last_json(out)
  assert not result['fits'] and result['shortfall_bytes'] > 0
  shortfall = [line for line in err.splitlines() if line.startswith('zipper: error:')]
  assert len(shortfall) == 1 and 'does not fit v5e:2x2' in shortfall[0], err[-2000:]
  assert 'GiB more than the 16.00 GiB of HBM' in shortfall[0]



@pytest.mark.slow
def test_cudnn_compiles_for_sharded_recomputed_blocks(capfd):
  """bfloat16 (cuDNN's dtype), every block recomputed in the backward pass, FSDP over two H100s
  (the pod experiments' setting): cuDNN's own partitioning rule refused this step ("Query, key
  and value should have same sharding"); the kernel runs per device instead."""
  bindings = [f"{tower}/TowerConfig.{name}='{value}'" for tower in ('text', 'speech')
              for name, value in (('dtype', 'bfloat16'), ('remat', 'full'))]
  assert main.main(['compile', '--topology=h100:1x2', f'--gin_file={TINY}',
                    '--gin.Partitioner.mesh_shape=(-1, 2, 1)',
                    *(f'--gin.{b}' for b in bindings)]) == 0
  result = last_json(capfd.readouterr().out)
  assert result['fits'] and result['mesh'] == {'data': 1, 'fsdp': 2, 'tensor': 1}

@pytest.mark.slow
def test_the_decode_step_compiles_for_a_tpu_slice_and_is_saved(capfd, tmp_path):
  assert main.main(['compile', '--topology=v5e:2x2', f'--gin_file={TINY}', '--step=decode',
                    '--decode_batch=8', "--prompt_lengths={'speech': 384}",
                    '--max_new_tokens=32', '--output=text',
                    f'--save={tmp_path / "decode.bin"}']) == 0
  result = last_json(capfd.readouterr().out)
  assert result['step'] == 'decode' and result['fits']
  assert result['bytes_per_device']['opt_state'] == 0
  assert (tmp_path / 'decode.bin').stat().st_size > 10_000  # the serialised executable


def test_exact_flops_count_every_layer_where_xla_counts_a_scanned_body_once():
  tower = TowerConfig(vocab_size=256, num_layers=4, embed_dim=128, num_heads=2, head_dim=64,
                      mlp_dim=512)
  lengths = {'text': 64, 'speech': 128}
  counts = {}
  for scan in (True, False):
    towers = {'text': dataclasses.replace(tower, scan_layers=scan),
              'speech': dataclasses.replace(tower, num_layers=2, scan_layers=scan)}
    model = models.ZipperModel(ZipperConfig(towers, (Edge('text', 'speech', 1),
                                                     Edge('speech', 'text', 1))))
    compiled, _ = compile_train_step(model, lengths, 4, frozen=('text',))
    counts[scan] = (4 * model.train_flops_per_example(lengths, ('text',)),
                    compiled.cost_analysis()['flops'])
  (ours_scanned, xla_scanned), (ours_unrolled, xla_unrolled) = counts[True], counts[False]
  assert ours_scanned == ours_unrolled
  # Unrolled, XLA counts every matmul (ours) and a little elementwise work beside them.
  assert ours_unrolled <= xla_unrolled <= 1.05 * ours_unrolled
  assert xla_scanned < 0.8 * ours_scanned


@pytest.mark.slow
@pytest.mark.parametrize('topology,kernel', [('v5e:2x2', 'splash'), ('h100:1x1', 'cudnn')])
def test_splash_and_cudnn_compile_into_the_train_step(topology, kernel):
  """A tower's step: the kernel's own call is in the compiled program (a fallback to `chunked`
  would not be), and its temporaries grow less than the square of the length. (The Zipper's
  step compiles splash for v5e:2x2 in the fit-table test above.)"""
  # Started with the compile-only packages on its path: the script would start itself again.
  done = subprocess.run(
      [sys.executable, 'benchmarks/attention.py', f'--topology={topology}', '--lengths=128,256',
       '--asr_lengths='], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=topologies.compile_only_environment())
  assert done.returncode == 0, done.stderr[-2000:]
  results = json.loads(done.stdout)
  for result in results[kernel].values():
    assert result['kernel_in_program'] and result['temp_bytes'] > 0, result
  # Twice the length: a quadratic kernel's temporaries would grow four times (measured: 1.5x
  # splash, 1.2x cuDNN).
  assert results[kernel]['256']['temp_bytes'] < 4 * results[kernel]['128']['temp_bytes']
