"""Test set-up: 8 fake CPU devices for sharding tests (set before JAX is first imported)."""
import dataclasses
import os
import shutil
import tempfile

# Tests run small programs once or a few times, so what compiles fastest wins: no LLVM
# optimisations (a fifth of the suite's time from a cold cache), and XLA's loop emitters rather
# than its fusion emitters (test_train, test_decoding and test_zipper from a cold cache: 313 s
# -> 257 s).
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' ' + FAST_COMPILE

# The speech-text tasks read their corpus from here; the `corpus` fixture writes a toy one.
os.environ['ZIPPER_CORPUS_DIR'] = tempfile.mkdtemp(prefix='zipper_corpus_')

# Tests compile the same small programs many times (every training run, in every worker and in
# the processes tests launch): JAX's persistent cache, configured through the environment so that
# those processes share it, turns all but the first compilation of each into a disk read.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '.cache',
                                   'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

from zipper_jax import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # as the `zipper` command does, before JAX starts a thread

import filelock  # noqa: E402
import gin  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zipper_jax.inputs import TowerInput  # noqa: E402
from zipper_jax.tower import TowerConfig  # noqa: E402
from zipper_jax.zipper import Edge, Zipper, ZipperConfig  # noqa: E402

TEXT = TowerConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                   num_kv_heads=2)
SPEECH = TowerConfig(vocab_size=48, num_layers=3, embed_dim=24, num_heads=3, head_dim=8,
                     mlp_dim=48)
TWO_WAY = (Edge('text', 'speech', 1), Edge('speech', 'text', 1))


def zipper_error(capsys, argv) -> str:
  """The one line `zipper argv` prints for a user's error (it exits 2)."""
  from zipper_jax import main
  capsys.readouterr()
  assert main.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('zipper: error: '), lines
  return lines[0]


def random_tokens(seed, shape, vocab, low=1):
  return jnp.asarray(np.random.default_rng(seed).integers(low, vocab, shape), jnp.int32)


def asr_inputs(batch=2, speech_length=7, text_length=5, seed=0, speech_lengths=None):
  """Speech first, then text: text token j sits at interleaved position (#speech tokens) + j."""
  lengths = speech_lengths if speech_lengths is not None else [speech_length] * batch
  speech = TowerInput.from_tokens(random_tokens(seed, (batch, speech_length), SPEECH.vocab_size),
                                  lengths=lengths)
  text = TowerInput.from_tokens(random_tokens(seed + 1, (batch, text_length), TEXT.vocab_size),
                                offset=jnp.asarray(lengths))
  return {'speech': speech, 'text': text}


def open_gates(params, value=0.5):
  """The same parameters with every cross-attention gate set to `value` (fresh ones are 0)."""
  is_gate = lambda path: path[-1].key in ('attention_gate', 'mlp_gate')
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, value) if is_gate(path) else x, params)


def init(model, inputs, seed=0):
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), inputs))['params']


@pytest.fixture(autouse=True)
def clean_gin():
  """Gin's config is global to the process: each test starts and leaves it empty."""
  gin.clear_config(clear_constants=True)
  yield
  gin.clear_config(clear_constants=True)


@pytest.fixture(scope='session')
def two_way_zipper():
  model = Zipper(ZipperConfig({'text': TEXT, 'speech': SPEECH}, TWO_WAY))
  return model, open_gates(init(model, asr_inputs()))


@pytest.fixture(scope='session')
def clocked_zipper():
  """Cross-attention on a shared clock: a text token lasts three speech tokens."""
  model = Zipper(ZipperConfig({'text': TEXT, 'speech': SPEECH}, TWO_WAY,
                              cross_attention_clock={'text': 3.0, 'speech': 1.0}))
  return model, open_gates(init(model, asr_inputs()))


@pytest.fixture(scope='session')
def staged_zipper():
  """10 text blocks with 4 speech blocks: 2 scanned stages, text reading the speech input and
  then each stage the previous stage's last speech block (SmolLM2's 30 with 12, scaled down)."""
  towers = {'text': dataclasses.replace(TEXT, num_layers=10),
            'speech': dataclasses.replace(SPEECH, num_layers=4)}
  model = Zipper(ZipperConfig(towers, TWO_WAY))
  return model, open_gates(init(model, asr_inputs()))


@pytest.fixture(scope='session')
def corpus():
  """The toy corpus's sentences, written to $ZIPPER_CORPUS_DIR once per test process."""
  from zipper_jax.speech import synthetic_corpus
  return synthetic_corpus.write_corpus(os.environ['ZIPPER_CORPUS_DIR'])


# A real corpus, as small as it gets: synthesised speech, a 1024-unit tokenizer, a resynthesiser.
MICRO_CORPUS = {'text_only': 60, 'speech_only': 30, 'aligned': 12, 'validation': 4,
                'test_clean': 4, 'test_other': 4}
MICRO_SEED = 3


def built_once(tmp_path_factory, worker_id, name, build) -> str:
  """The directory `build(directory)` fills, built once per test session and shared by the xdist
  workers (read only): the first worker to ask builds it, the others wait for it."""
  # Workers' temporary folders share a parent that is unique to this session.
  root = tmp_path_factory.getbasetemp()
  root = root if worker_id == 'master' else root.parent
  directory, done = root / name, root / f'{name}.done'
  with filelock.FileLock(str(root / f'{name}.lock')):
    if not done.exists():
      shutil.rmtree(directory, ignore_errors=True)  # what a failed build left
      build(str(directory))
      done.touch()
  return str(directory)


@pytest.fixture(scope='session')
def micro_corpus(tmp_path_factory, worker_id):
  """MICRO_CORPUS, built once per test session."""
  from zipper_jax.speech import corpus
  return built_once(tmp_path_factory, worker_id, 'micro_corpus',
                    lambda directory: corpus.build(directory, MICRO_CORPUS, seed=MICRO_SEED,
                                                   workers=2))
