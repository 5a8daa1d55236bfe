"""Every attention kernel that runs here equals the reference (`xla`), outputs and gradients, on
the masks the Zipper makes; `splash` runs in Pallas's interpreter here. (`cudnn` and `splash`
compile for an H100 and a TPU slice: tests/test_compile.py.)"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SPEECH, TEXT, TWO_WAY, asr_inputs, init, open_gates, random_tokens
from zipper_jax import attention
from zipper_jax.attention import Visibility
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower, init_cache
from zipper_jax.zipper import Zipper, ZipperConfig

HERE = ['chunked', 'splash']  # the kernels this CPU runs besides the reference
BLOCK = 16  # `chunked` with several key blocks, the last one partial


def kernel_function(kernel):
  if kernel == 'chunked':
    return lambda *args: attention.chunked(*args, block_size=BLOCK)
  return lambda *args: attention.attend(*args, kernel=kernel)


def qkv(queries, keys, heads, kv_heads, head_dim=8, seed=0):
  q, k, v = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(q, (2, queries, heads, head_dim)),
          jax.random.normal(k, (2, keys, kv_heads, head_dim)),
          jax.random.normal(v, (2, keys, kv_heads, head_dim)))


def packed(lengths, total):
  """Segment ids and positions of rows packing segments of `lengths`, padded to `total`."""
  segments = np.zeros((len(lengths), total), np.int32)
  positions = np.zeros_like(segments)
  for row, row_lengths in enumerate(lengths):
    start = 0
    for segment, n in enumerate(row_lengths, 1):
      segments[row, start:start + n] = segment
      positions[row, start:start + n] = np.arange(n)
      start += n
  return jnp.asarray(positions), jnp.asarray(segments)


def self_attention(lengths, total):
  positions, segments = packed(lengths, total)
  return Visibility(positions, segments, positions, segments)


def interleaved_cross_attention():
  """Text queries after, between and before speech keys; padded rows; queries that see nothing
  (text before any speech, and padding)."""
  speech_order = jnp.asarray([[0, 1, 2, 3, 9, 10, 11, 12, 13, 14] + list(range(20, 30))] * 2)
  speech_segments = jnp.asarray([[1] * 20, [1] * 6 + [2] * 10 + [0] * 4])
  text_order = jnp.asarray([list(range(4, 9)) + list(range(15, 20)) + list(range(30, 33))] * 2)
  text_segments = jnp.asarray([[1] * 13, [1] * 5 + [2] * 6 + [0] * 2])
  text_order = text_order.at[:, 0].set(-1)  # sees no speech at all
  return Visibility(text_order, text_segments, speech_order, speech_segments, strict=True)


CASES = {
    'packed causal self-attention': (lambda: self_attention([[20, 17], [5, 30]], 45), 45, 45, 4, 4),
    'grouped-query self-attention': (lambda: self_attention([[45], [12, 12, 21]], 45), 45, 45, 4, 2),
    'interleaved cross-attention': (interleaved_cross_attention, 13, 20, 4, 2),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('kernel', HERE)
def test_kernel_equals_reference(kernel, case):
  make_visibility, queries, keys, heads, kv_heads = CASES[case]
  visibility = make_visibility()
  q, k, v = qkv(queries, keys, heads, kv_heads)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, visibility)))
  out, reference = kernel_function(kernel)(q, k, v, visibility), attention.xla(q, k, v, visibility)
  np.testing.assert_allclose(out, reference, atol=1e-5)
  seen_nothing = ~jnp.any(visibility.mask(), axis=-1)
  assert jnp.any(seen_nothing) == (case != 'grouped-query self-attention')
  assert jnp.all(jnp.where(seen_nothing[..., None, None], out, 0) == 0)  # exactly zero
  grads = jax.jit(jax.grad(loss(kernel_function(kernel)), argnums=(0, 1, 2)))(q, k, v)
  reference_grads = jax.jit(jax.grad(loss(attention.xla), argnums=(0, 1, 2)))(q, k, v)
  for grad, reference_grad in zip(grads, reference_grads):
    np.testing.assert_allclose(grad, reference_grad, atol=1e-5)


@pytest.mark.parametrize('case', sorted(CASES))
def test_reference_equals_jax_dot_product_attention(case):
  """The reference's own softmax against JAX's (which XLA:CPU differentiates slowly): outputs
  and gradients, grouped queries, and zero for a query that sees no key."""
  make_visibility, queries, keys, heads, kv_heads = CASES[case]
  visibility = make_visibility()
  q, k, v = qkv(queries, keys, heads, kv_heads)
  def jax_attention(q, k, v):
    mask = visibility.mask()[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return jnp.where(jnp.any(mask, axis=-1)[:, 0, :, None, None], out, 0)
  ours = lambda q, k, v: attention.xla(q, k, v, visibility)
  np.testing.assert_allclose(ours(q, k, v), jax_attention(q, k, v), atol=1e-5)
  loss = lambda f: jax.jit(jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=(0, 1, 2)))
  for grad, expected in zip(loss(ours)(q, k, v), loss(jax_attention)(q, k, v)):
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_chunked_memory_is_linear_in_length():
  """The compiled gradient's temporaries: `xla` grows with the square of the length, `chunked`
  linearly (blocks of keys, scores recomputed in the backward pass)."""
  def temp_bytes(f, length):
    visibility = self_attention([[length]] * 2, length)
    q, k, v = qkv(length, length, 4, 4)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v, visibility)), argnums=(0, 1, 2)))
    return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
  chunked = lambda *args: attention.chunked(*args, block_size=128)
  assert temp_bytes(chunked, 4096) / temp_bytes(chunked, 1024) < 4.5
  assert temp_bytes(attention.xla, 4096) / temp_bytes(attention.xla, 1024) > 12


def test_follows_index_order():
  positions, segments = packed([[3, 4, 2]], 12)
  assert attention.follows_index_order(positions, segments).tolist() == [True]
  left_padded = TowerInput.from_tokens(jnp.ones((1, 6), jnp.int32))
  assert attention.follows_index_order(left_padded.positions - 2,
                                       jnp.asarray([[0, 0, 1, 1, 1, 1]])).tolist() == [True]
  returning = jnp.asarray([[1, 1, 2, 2, 1, 1]])  # segment 1 again after segment 2
  assert not attention.follows_index_order(jnp.asarray([[0, 1, 0, 1, 2, 3]]), returning)[0]
  assert not attention.follows_index_order(jnp.asarray([[0, 2, 1, 3]]), jnp.ones((1, 4)))[0]


def test_splash_falls_back_where_positions_do_not_follow_the_index():
  positions = jnp.asarray([list(range(15, -1, -1)), list(range(16))])  # row 0 counts down
  segments = jnp.ones((2, 16), jnp.int32)
  visibility = Visibility(positions, segments, positions, segments)
  q, k, v = qkv(16, 16, 2, 2)
  np.testing.assert_allclose(attention.splash(q, k, v, visibility),
                             attention.xla(q, k, v, visibility), atol=1e-5)


def with_kernel(config, kernel):
  return dataclasses.replace(config, attention_kernel=kernel)


@pytest.fixture
def small_blocks(monkeypatch):
  """`chunked` (and splash's fallback to it) in blocks of 4 keys: several blocks, even here."""
  monkeypatch.setattr(attention, 'BLOCK_SIZE', 4)


@pytest.mark.parametrize('kernel', HERE)
def test_zipper_is_the_same_with_every_kernel(kernel, small_blocks):
  """Causal self-attention, interleaved cross-attention with padding and queries that see nothing,
  gates open: logits and gradients as with the reference kernel."""
  def model(kernel):
    towers = {'text': with_kernel(TEXT, kernel), 'speech': with_kernel(SPEECH, kernel)}
    return Zipper(ZipperConfig(towers, TWO_WAY))
  inputs = asr_inputs(speech_lengths=[7, 4])
  params = open_gates(init(model('xla'), inputs))
  def loss(kernel):
    logits = lambda p: model(kernel).apply({'params': p}, inputs)[0]
    return jax.jit(jax.value_and_grad(
        lambda p: sum(jnp.sum(jnp.sin(x)) for x in logits(p).values())))
  (value, grads), (reference, reference_grads) = loss(kernel)(params), loss('xla')(params)
  np.testing.assert_allclose(value, reference, rtol=1e-5)
  # A norm's or gate's gradient sums terms of every token (up to ~100 here), which cancel:
  # float32 sums in another order differ by up to 1e-5 of them (a wrong mask: by their size).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=5e-5, atol=2e-6 * np.abs(b).max() + 1e-6), grads, reference_grads)


@pytest.mark.parametrize('kernel', HERE)
def test_cached_decode_step_is_the_same_with_every_kernel(kernel, small_blocks):
  """Prefill of a left-padded prompt into the cache, then one token against it."""
  prompt = random_tokens(3, (2, 6), TEXT.vocab_size)
  segments = jnp.asarray([[0, 0, 1, 1, 1, 1], [1] * 6])
  positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
  prefill = TowerInput(prompt, positions, segments, positions)
  step = TowerInput.from_tokens(random_tokens(4, (2, 1), TEXT.vocab_size)).replace(
      positions=positions[:, -1:] + 1)
  @functools.partial(jax.jit, static_argnums=0)
  def decode(kernel, params):
    tower = Tower(with_kernel(TEXT, kernel))
    first, cache = tower.apply({'params': params}, prefill, init_cache(TEXT, 2, 10))
    second, _ = tower.apply({'params': params}, step, cache)
    return first, second
  params = init(Tower(TEXT), prefill)
  for out, reference in zip(decode(kernel, params), decode('xla', params)):
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_unknown_kernel_is_named():
  with pytest.raises(ValueError, match="attention_kernel='flash'"):
    with_kernel(TEXT, 'flash')
