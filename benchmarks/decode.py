"""Cached generation tokens/s, against full recomputation and against Hugging Face `generate`.

  python benchmarks/decode.py            # prints JSON

One Llama-shaped decoder, three ways, greedy, the same prompt length and number of new tokens:
our KV-cached `decoding.generate` (one compiled while-loop), our `greedy_without_cache` (every
step recomputes the whole sequence), and `transformers`' `LlamaForCausalLM.generate` with its KV
cache on PyTorch CPU (`requirements/bench.txt`). Batch 1 and 8.

At batch 1 a decode step reads every weight once and does little else, so its ceiling is memory
bandwidth: the roofline printed beside the rates is the bandwidth XLA reaches summing a large
array, measured here, over the bytes of weights one token reads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zipper_jax import decoding
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower, TowerConfig

CONFIG = TowerConfig(vocab_size=8192, num_layers=8, embed_dim=512, num_heads=8, num_kv_heads=4,
                     head_dim=64, mlp_dim=1536)


def timed(fn, repeats):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 10) -> float:
  """Bytes/s of a jitted sum over an array far larger than the caches."""
  array, total = jnp.ones((nbytes // 4,), jnp.float32), jax.jit(jnp.sum)
  return nbytes / timed(lambda: total(array).block_until_ready(), repeats)


def bytes_per_token(params) -> int:
  """Weights a decode step reads: all of them but the embedding table, of which one row."""
  table = params['embedder']['embedding']
  return sum(x.nbytes for x in jax.tree.leaves(params)) - table.nbytes + table[0].nbytes


def ours(prompt, new_tokens, repeats):
  model = Tower(CONFIG)
  inputs = {'tower': TowerInput.from_tokens(jnp.asarray(prompt))}
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs['tower']))['params']
  decoder = decoding.Decoder.for_tower(model)
  cached = timed(lambda: jax.block_until_ready(decoding.generate(
      decoder, params, inputs, max_new_tokens=new_tokens, eos_id=None).tokens), repeats)
  full = timed(lambda: jax.block_until_ready(decoding.greedy_without_cache(
      decoder, params, inputs, max_new_tokens=new_tokens)[0]), repeats)
  return cached, full, bytes_per_token(params)


def transformers_generate(prompt, new_tokens, repeats):
  import torch
  import transformers
  config = transformers.LlamaConfig(
      vocab_size=CONFIG.vocab_size, hidden_size=CONFIG.embed_dim,
      intermediate_size=CONFIG.mlp_dim, num_hidden_layers=CONFIG.num_layers,
      num_attention_heads=CONFIG.num_heads, num_key_value_heads=CONFIG.kv_heads,
      head_dim=CONFIG.head_dim, rope_theta=CONFIG.rope_theta, rms_norm_eps=CONFIG.norm_epsilon,
      tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  ids = torch.as_tensor(np.asarray(prompt), dtype=torch.long)

  def generate():
    with torch.inference_mode():
      model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
  return timed(generate, repeats), torch.__version__, transformers.__version__


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--prompt_length', type=int, default=32)
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  bandwidth = measure_bandwidth()
  results = {'config': {k: str(v) for k, v in vars(CONFIG).items()},
             'prompt_length': args.prompt_length, 'new_tokens': args.new_tokens,
             'bandwidth_bytes_per_second_measured': bandwidth, 'batches': {}}
  for batch in map(int, args.batches.split(',')):
    prompt = np.random.default_rng(batch).integers(1, CONFIG.vocab_size,
                                                   (batch, args.prompt_length))
    cached, full, weight_bytes = ours(prompt, args.new_tokens, args.repeats)
    hf, torch_version, hf_version = transformers_generate(prompt, args.new_tokens, args.repeats)
    rate = lambda seconds: batch * args.new_tokens / seconds
    # Decode steps alone; every measured time also holds the prompt's prefill.
    roofline = batch * bandwidth / weight_bytes
    results['batches'][batch] = {
        'cached_tokens_per_second': rate(cached),
        'full_recomputation_tokens_per_second': rate(full),
        'transformers_tokens_per_second': rate(hf),
        'cached_over_transformers': hf / cached, 'cached_over_full_recomputation': full / cached,
        'roofline_tokens_per_second': roofline, 'cached_over_roofline': rate(cached) / roofline}
    results['weight_bytes_per_token'] = weight_bytes
    results['versions'] = {'jax': jax.__version__, 'torch': torch_version,
                           'transformers': hf_version}
  print(json.dumps(results, indent=2))
  return results


if __name__ == '__main__':
  main()
