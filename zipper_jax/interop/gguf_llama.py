"""llama.cpp GGUF files of Llama-family decoders, read into Hugging Face's layout.

A GGUF holds the weights (often quantised), the architecture as metadata keys, and the tokenizer's
vocabulary and merges. `read` dequantises the weights to float32 with the `gguf` package, renames
them to HF's names and turns the metadata into a config.json, so that `hf_llama` maps both sources
onto a Tower the same way. llama.cpp's converter permutes the rows of a Llama's query and key
projections into its interleaved rotary layout (adjacent features form a pair); `read` permutes them
back to the split-halves layout of HF and of our `apply_rotary`. Qwen2 files keep split halves
(llama.cpp's NEOX rotary) and are read as they are.
"""
from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from zipper_jax.interop.hf_llama import LazyTensor

ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}
INTERLEAVED_ROTARY = ('llama',)  # query and key rows permuted by llama.cpp's converter
TENSORS = {'token_embd.weight': 'model.embed_tokens.weight',
           'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight'}
BLOCK_TENSORS = {
    'attn_norm.weight': 'input_layernorm.weight',
    'ffn_norm.weight': 'post_attention_layernorm.weight',
    'attn_q.weight': 'self_attn.q_proj.weight', 'attn_k.weight': 'self_attn.k_proj.weight',
    'attn_v.weight': 'self_attn.v_proj.weight', 'attn_output.weight': 'self_attn.o_proj.weight',
    'attn_q.bias': 'self_attn.q_proj.bias', 'attn_k.bias': 'self_attn.k_proj.bias',
    'attn_v.bias': 'self_attn.v_proj.bias',
    'ffn_gate.weight': 'mlp.gate_proj.weight', 'ffn_up.weight': 'mlp.up_proj.weight',
    'ffn_down.weight': 'mlp.down_proj.weight',
}
# How llama.cpp splits text before byte-level BPE (`tokenizer.ggml.pre`), as `tokenizers` does it.
PRE_TOKENIZERS = {
    'default': lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    'gpt2': lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    'smollm': lambda: pre_tokenizers.Sequence([  # as SmolLM2's own tokenizer.json
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)]),
}
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


class GGUFModel(NamedTuple):
  config: dict[str, Any]  # as an HF config.json
  tensors: dict[str, LazyTensor]  # HF names, float32 when read
  tokenizer: tokenizers.Tokenizer | None  # None when not asked for
  eos_id: int | None
  bos_id: int | None


def read(path: str, with_tokenizer: bool = True) -> GGUFModel:
  reader = gguf.GGUFReader(path)
  config = hf_config(reader)
  return GGUFModel(config, hf_tensors(reader, config),
                   tokenizer(reader) if with_tokenizer else None,
                   config['eos_token_id'], config['bos_token_id'])


def field(reader: gguf.GGUFReader, key: str, *default):
  """A metadata value; without `default`, a KeyError names the missing key."""
  found = reader.get_field(key)
  if found is None:
    if default:
      return default[0]
    raise KeyError(f'GGUF metadata has no {key!r}')
  return found.contents()


def hf_config(reader: gguf.GGUFReader) -> dict[str, Any]:
  """The config.json of the model a GGUF holds; a ValueError says what cannot be imported."""
  architecture = field(reader, 'general.architecture')
  if architecture not in ARCHITECTURES:
    raise ValueError(f'GGUF architecture {architecture!r} cannot be imported; importable: '
                     f'{sorted(ARCHITECTURES)}')
  key = lambda name, *default: field(reader, f'{architecture}.{name}', *default)
  heads, embed = key('attention.head_count'), key('embedding_length')
  head_dim = key('attention.key_length', embed // heads)
  kv_heads = key('attention.head_count_kv', heads)
  problems = []
  if isinstance(kv_heads, list):
    problems.append('a number of K/V heads per layer')
  if key('attention.value_length', head_dim) != head_dim:
    problems.append('values narrower or wider than keys')
  if key('rope.dimension_count', head_dim) != head_dim:
    problems.append(f'rotary on {key("rope.dimension_count")} of {head_dim} features')
  if key('rope.scaling.type', 'none') != 'none':
    problems.append(f'rope scaling {key("rope.scaling.type")!r}')
  if problems:
    raise ValueError(f'{architecture} GGUF with ' + '; '.join(problems) + ' cannot be imported')
  names = {tensor.name for tensor in reader.tensors}
  # Metadata are float32: their shortest float32 spelling is what the model was made with.
  as_written = lambda x: float(str(np.float32(x)))
  return {
      'architectures': [ARCHITECTURES[architecture]],
      'vocab_size': key('vocab_size', len(field(reader, 'tokenizer.ggml.tokens', ()))),
      'num_hidden_layers': key('block_count'), 'hidden_size': embed,
      'intermediate_size': key('feed_forward_length'), 'num_attention_heads': heads,
      'num_key_value_heads': kv_heads, 'head_dim': head_dim, 'hidden_act': 'silu',
      'rope_theta': as_written(key('rope.freq_base', 10_000.0)),
      'rms_norm_eps': as_written(key('attention.layer_norm_rms_epsilon')),
      'tie_word_embeddings': 'output.weight' not in names,
      'bos_token_id': field(reader, 'tokenizer.ggml.bos_token_id', None),
      'eos_token_id': field(reader, 'tokenizer.ggml.eos_token_id', None),
  }


def hf_tensors(reader: gguf.GGUFReader, config: dict[str, Any]) -> dict[str, LazyTensor]:
  """Every tensor under its HF name, dequantised to float32 when read; a ValueError names any
  unknown."""
  tensors, unknown = {}, []
  interleaved = config['architectures'][0] in [ARCHITECTURES[a] for a in INTERLEAVED_ROTARY]
  for tensor in reader.tensors:
    block = re.fullmatch(r'blk\.(\d+)\.(.+)', tensor.name)
    if block and block.group(2) in BLOCK_TENSORS:
      name = f'model.layers.{block.group(1)}.{BLOCK_TENSORS[block.group(2)]}'
    elif tensor.name in TENSORS:
      name = TENSORS[tensor.name]
    else:
      unknown.append(tensor.name)
      continue
    # GGUF lists dimensions fastest first: [in, out] is numpy's (out, in), HF's order.
    shape = tuple(int(n) for n in reversed(tensor.shape))
    heads = None
    if interleaved and name.endswith(('q_proj.weight', 'k_proj.weight')):
      heads = config['num_attention_heads' if 'q_proj' in name else 'num_key_value_heads']
    tensors[name] = LazyTensor(shape, functools.partial(_dequantized, tensor, shape, heads))
  if unknown:
    raise ValueError(f'GGUF tensors with no place in a Tower: {unknown}')
  return tensors


def _dequantized(tensor, shape: tuple[int, ...], heads: int | None) -> np.ndarray:
  w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
  return w if heads is None else split_halves(w, heads)


def split_halves(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows of each head from llama.cpp's interleaved rotary order back to split halves (the
  inverse of its converter's `permute`)."""
  pairs = w.shape[0] // heads // 2
  return w.reshape(heads, pairs, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tokenizer(reader: gguf.GGUFReader) -> tokenizers.Tokenizer:
  """The byte-level BPE tokenizer a GGUF describes; a ValueError for any other kind."""
  kind = field(reader, 'tokenizer.ggml.model', None)
  pre = field(reader, 'tokenizer.ggml.pre', 'default')
  if kind != 'gpt2' or pre not in PRE_TOKENIZERS:
    raise ValueError(
        f'cannot rebuild the GGUF\'s tokenizer (model {kind!r}, pre-tokenizer {pre!r}; '
        f'rebuilt: byte-level BPE "gpt2" with {sorted(PRE_TOKENIZERS)}): give the model\'s '
        'tokenizer.json instead (`zipper import --tokenizer`)')
  tokens = field(reader, 'tokenizer.ggml.tokens')
  merges = [tuple(merge.split(' ')) for merge in field(reader, 'tokenizer.ggml.merges')]
  result = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  result.pre_tokenizer = PRE_TOKENIZERS[pre]()
  result.decoder = decoders.ByteLevel()
  types = field(reader, 'tokenizer.ggml.token_type', [])
  result.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                             for t, token_type in zip(tokens, types) if token_type == CONTROL])
  result.add_tokens([tokenizers.AddedToken(t, normalized=False)
                     for t, token_type in zip(tokens, types) if token_type == USER_DEFINED])
  return result
