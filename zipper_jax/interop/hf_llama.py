"""Llama-family decoders in Hugging Face's layout (config.json + HF-named tensors), both ways.

An HF Llama and our `Tower` are the same network: pre-norm RMSNorm that multiplies by its weight
(our `scale`, not `1 + scale`), rotary embeddings over split halves (HF's `rotate_half`, our
`apply_rotary`) with the same frequencies, grouped K/V heads, a SwiGLU MLP. Moving weights across
is renaming, transposing (HF stores `[out, in]`) and splitting the head axis out; `layout` says it
once for both directions. Qwen2 adds biases on the query, key and value projections
(`TowerConfig.qkv_bias`). What a Tower cannot compute exactly is refused with the reason.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower, TowerConfig

ARCHITECTURES = ('LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM')
# Architectures people will try that a Tower does not compute, and why.
REFUSED = {
    'GemmaForCausalLM': 'Gemma scales embeddings by sqrt(hidden_size) and uses a GELU MLP',
    'Gemma2ForCausalLM': 'Gemma 2 scales embeddings, soft-caps logits and adds post-norms',
    'Gemma3ForCausalLM': 'Gemma 3 scales embeddings, normalises queries and keys and adds '
                         'post-norms',
    'Qwen3ForCausalLM': 'Qwen3 normalises queries and keys (q_norm, k_norm)',
}
# Tensors some checkpoints carry that are not weights.
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


def tower_config(hf: Mapping[str, Any]) -> TowerConfig:
  """The `TowerConfig` of an HF config.json, or a ValueError naming what a Tower cannot do."""
  architecture = (hf.get('architectures') or ['<none given>'])[0]
  if architecture in REFUSED:
    raise ValueError(f'{architecture} cannot be imported: {REFUSED[architecture]}')
  if architecture not in ARCHITECTURES:
    raise ValueError(f'unknown architecture {architecture!r}; importable: {list(ARCHITECTURES)}')
  problems = []
  if hf.get('hidden_act', 'silu') != 'silu':
    problems.append(f'hidden_act={hf["hidden_act"]!r} (a Tower\'s MLP is SwiGLU)')
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  if rope.get('rope_type', rope.get('type', 'default')) != 'default':
    problems.append(f'rope type {rope.get("rope_type", rope.get("type"))!r} (only plain rotary)')
  if hf.get('partial_rotary_factor', 1.0) != 1.0:
    problems.append(f'partial_rotary_factor={hf["partial_rotary_factor"]}')
  if hf.get('attention_bias') or hf.get('mlp_bias'):
    problems.append('attention_bias or mlp_bias (a Tower has biases on q, k, v only, as Qwen2)')
  window = hf.get('sliding_window')
  if window and (architecture == 'MistralForCausalLM' or hf.get('use_sliding_window')):
    problems.append(f'sliding_window={window} (a Tower attends to the whole prefix)')
  if set(hf.get('layer_types') or ['full_attention']) != {'full_attention'}:
    problems.append(f'layer_types={sorted(set(hf["layer_types"]))}')
  if problems:
    raise ValueError(f'{architecture} with ' + '; '.join(problems) + ' cannot be imported')
  heads = hf['num_attention_heads']
  return TowerConfig(
      vocab_size=hf['vocab_size'], num_layers=hf['num_hidden_layers'],
      embed_dim=hf['hidden_size'], num_heads=heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads, mlp_dim=hf['intermediate_size'],
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      rope_theta=float(rope.get('rope_theta', hf.get('rope_theta', 10_000.0))),
      norm_epsilon=float(hf.get('rms_norm_eps', 1e-6)),
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      qkv_bias=architecture == 'Qwen2ForCausalLM')


def hf_config(config: TowerConfig, eos_id: int | None = None, bos_id: int | None = None) -> dict:
  """The config.json with which transformers builds `config`'s network."""
  return {
      'architectures': ['Qwen2ForCausalLM' if config.qkv_bias else 'LlamaForCausalLM'],
      'model_type': 'qwen2' if config.qkv_bias else 'llama',
      'vocab_size': config.vocab_size, 'num_hidden_layers': config.num_layers,
      'hidden_size': config.embed_dim, 'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.kv_heads, 'head_dim': config.head_dim,
      'intermediate_size': config.mlp_dim, 'hidden_act': 'silu',
      'rope_theta': config.rope_theta, 'rms_norm_eps': config.norm_epsilon,
      'tie_word_embeddings': config.tie_embeddings, 'attention_bias': False, 'mlp_bias': False,
      'bos_token_id': bos_id, 'eos_token_id': eos_id, 'dtype': 'float32',
  }


def layout(config: TowerConfig) -> dict[str, tuple[tuple[str, ...], int | None, tuple[int, ...],
                                                    bool]]:
  """HF tensor name -> (our parameter path, layer, HF shape, transposed).

  Ours is `(w.T if transposed else w).reshape(our shape)`, at index `layer` of our stacked
  `blocks` (None: not a block's): HF's fused head axis `heads * head_dim` becomes our two axes.
  """
  c = config
  e, h, k, d = c.embed_dim, c.num_heads, c.kv_heads, c.head_dim
  names = {'model.embed_tokens.weight': (('embedder', 'embedding'), None, (c.vocab_size, e), False),
           'model.norm.weight': (('final_norm', 'scale'), None, (e,), False)}
  if not c.tie_embeddings:
    names['lm_head.weight'] = (('lm_head', 'kernel'), None, (c.vocab_size, e), True)
  block = {'self_attn.o_proj.weight': (('attention', 'out', 'kernel'), (e, h * d), True),
           'mlp.gate_proj.weight': (('mlp', 'gate', 'kernel'), (c.mlp_dim, e), True),
           'mlp.up_proj.weight': (('mlp', 'up', 'kernel'), (c.mlp_dim, e), True),
           'mlp.down_proj.weight': (('mlp', 'down', 'kernel'), (e, c.mlp_dim), True),
           'input_layernorm.weight': (('pre_attention_norm', 'scale'), (e,), False),
           'post_attention_layernorm.weight': (('pre_mlp_norm', 'scale'), (e,), False)}
  for name, our_name, width in (('q_proj', 'query', h * d), ('k_proj', 'key', k * d),
                                ('v_proj', 'value', k * d)):
    block[f'self_attn.{name}.weight'] = (('attention', our_name, 'kernel'), (width, e), True)
    if c.qkv_bias:
      block[f'self_attn.{name}.bias'] = (('attention', our_name, 'bias'), (width,), False)
  for i in range(c.num_layers):
    for name, (path, shape, transposed) in block.items():
      names[f'model.layers.{i}.{name}'] = (('blocks',) + path, i, shape, transposed)
  return names


@functools.cache
def tower_shapes(config: TowerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Every parameter path of a Tower with `config`, and its shape (traced, nothing allocated)."""
  inputs = TowerInput.from_tokens(jnp.zeros((1, 1), jnp.int32))
  shapes = jax.eval_shape(lambda: nn.unbox(Tower(config).init(jax.random.key(0), inputs)))
  return {tuple(key.key for key in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes['params'])}


class LazyTensor:
  """A tensor of a file, read as float32 only when numpy asks for it (`np.asarray`): importing
  holds one tensor of the source at a time, never the whole model twice."""

  def __init__(self, shape, read: Callable[[], np.ndarray]):
    self.shape, self._read = tuple(shape), read

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self._read(), dtype or np.float32)


def tower_params(tensors: Mapping[str, Any], config: TowerConfig) -> dict:
  """Our parameter tree (float32 numpy) from HF-named tensors (arrays or `LazyTensor`s), built
  one tensor at a time; a ValueError names every missing, unexpected or mis-shaped tensor. The
  vocabulary axes are zero-padded to `padded_vocab_size` (padded ids are masked out)."""
  names, shapes = layout(config), tower_shapes(config)
  hf_shapes = tower_shapes(dataclasses.replace(config, vocab_multiple=1))
  unmapped = shapes.keys() - {path for path, *_ in names.values()}
  if unmapped:  # a Tower parameter this module does not know: it must learn it first
    raise NotImplementedError(f'no HF name for Tower parameters {sorted(unmapped)}')
  given = {name: t for name, t in tensors.items() if not name.endswith(IGNORED_SUFFIXES)}
  if config.tie_embeddings and 'lm_head.weight' in given:
    # Some tied checkpoints store the head as well; it must be the embedding.
    head = given.pop('lm_head.weight')
    if not np.array_equal(head, given.get('model.embed_tokens.weight')):
      raise ValueError('tie_word_embeddings is set but lm_head.weight differs from '
                       'model.embed_tokens.weight')
  problems = [f'missing {name}' for name in names.keys() - given.keys()]
  problems += [f'unexpected {name}' for name in given.keys() - names.keys()]
  problems += [f'{name}: shape {tuple(given[name].shape)}, expected {shape}'
               for name, (_, _, shape, _) in names.items()
               if name in given and tuple(given[name].shape) != shape]
  if problems:
    raise ValueError('the checkpoint does not match its config: ' + '; '.join(sorted(problems)))
  params = {}
  for name, (path, layer, _, transposed) in names.items():
    w = np.asarray(given[name], np.float32)
    w = (w.T if transposed else w).reshape(hf_shapes[path][0 if layer is None else 1:])
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    if path[-1] not in node:
      node[path[-1]] = np.zeros(shapes[path], np.float32)
    node[path[-1]][(() if layer is None else (layer,)) + tuple(slice(0, n) for n in w.shape)] = w
  return params


def hf_tensor(params, config: TowerConfig, name: str) -> np.ndarray:
  """One HF-named float32 tensor from our parameter tree, padded vocabulary rows dropped (the
  inverse of `tower_params`): an export fetches one tensor at a time from wherever `params` live."""
  path, layer, shape, transposed = layout(config)[name]
  w = params
  for key in path:
    w = w[key]
  unpadded = tower_shapes(dataclasses.replace(config, vocab_multiple=1))[path]
  if layer is not None:
    unpadded = unpadded[1:]
  index = (() if layer is None else (layer,)) + tuple(slice(0, n) for n in unpadded)
  w = np.asarray(w[index], np.float32)
  return np.ascontiguousarray(w.reshape(shape[::-1]).T if transposed else w.reshape(shape))
