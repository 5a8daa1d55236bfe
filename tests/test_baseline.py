import jax
import jax.numpy as jnp
import numpy as np

from conftest import SPEECH, TEXT, init, random_tokens
from zipper_jax import baseline
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower


def test_single_decoder_grows_a_pretrained_text_tower():
  text = Tower(TEXT)
  tokens = TowerInput.from_tokens(random_tokens(0, (2, 6), TEXT.vocab_size))
  text_params = init(text, tokens)
  config = baseline.single_decoder_config(TEXT, SPEECH.vocab_size)
  params = baseline.single_decoder_params(text_params, TEXT, SPEECH.vocab_size,
                                         jax.random.key(1))

  assert config.vocab_size == TEXT.vocab_size + SPEECH.vocab_size
  embedding = params['embedder']['embedding']
  assert embedding.shape == (config.padded_vocab_size, TEXT.embed_dim)
  text_rows = text_params['embedder']['embedding'][:TEXT.vocab_size]  # without its padding
  np.testing.assert_array_equal(embedding[:TEXT.vocab_size], text_rows)
  new_rows = embedding[TEXT.vocab_size:config.vocab_size]
  assert np.abs(new_rows.mean() - text_rows.mean()) < 0.1
  np.testing.assert_array_equal(embedding[config.vocab_size:], 0)
  assert len(np.unique(np.asarray(new_rows), axis=0)) == SPEECH.vocab_size

  # On text the grown model gives the text tower's logits over the text vocabulary.
  single, _ = Tower(config).apply({'params': params}, tokens)
  alone, _ = text.apply({'params': text_params}, tokens)
  assert single.shape[-1] == config.padded_vocab_size
  np.testing.assert_allclose(single[..., :TEXT.vocab_size], alone[..., :TEXT.vocab_size], atol=1e-5)


def test_speech_ids_follow_the_text_vocabulary():
  units = jnp.asarray([[0, 5, SPEECH.vocab_size - 1]])
  ids = baseline.speech_token_ids(units, TEXT.vocab_size)
  np.testing.assert_array_equal(ids, [[TEXT.vocab_size, TEXT.vocab_size + 5,
                                       TEXT.vocab_size + SPEECH.vocab_size - 1]])
