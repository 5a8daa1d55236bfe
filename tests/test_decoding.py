import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SPEECH, TEXT, init, random_tokens
from zipper_jax import baseline, decoding, models
from zipper_jax.inputs import TowerInput
from zipper_jax.tower import Tower
from zipper_jax.zipper import ZipperConfig

NEW = 6


def asr_prompt(speech_lengths=(7, 4)):
  """Ragged speech prompts, text decoded from a one-token prefix after each prompt's end."""
  speech = TowerInput.from_tokens(random_tokens(0, (2, 7), SPEECH.vocab_size),
                                  lengths=list(speech_lengths))
  text = TowerInput.from_tokens(jnp.ones((2, 1), jnp.int32), offset=jnp.asarray(speech_lengths))
  return {'speech': speech, 'text': text}


def tts_prompt():
  text = TowerInput.from_tokens(random_tokens(1, (2, 5), TEXT.vocab_size), lengths=[5, 3])
  speech = TowerInput.from_tokens(jnp.ones((2, 2), jnp.int32), offset=jnp.asarray([5, 3]))
  return {'text': text, 'speech': speech}


@pytest.mark.parametrize('zipper', ['two_way_zipper', 'clocked_zipper', 'staged_zipper'])
@pytest.mark.parametrize('output, prompt', [('text', asr_prompt), ('speech', tts_prompt)])
def test_cached_zipper_decoding_matches_recomputation(request, zipper, output, prompt):
  model, params = request.getfixturevalue(zipper)
  decoder = decoding.Decoder.for_zipper(model, output)
  cached = decoding.generate(decoder, params, prompt(), max_new_tokens=NEW, eos_id=None,
                             return_logits=True)
  tokens, logits = decoding.greedy_without_cache(decoder, params, prompt(), max_new_tokens=NEW)
  np.testing.assert_array_equal(cached.tokens, tokens)
  np.testing.assert_allclose(cached.logits, logits, atol=1e-4)
  assert len(set(np.asarray(tokens).ravel().tolist())) > 1  # not a degenerate constant output


def test_equal_models_share_their_compiled_decoding(clocked_zipper):
  """Models built apart from equal configs (a driver evaluating several runs of one shape)
  trace and compile decoding once."""
  module, params = clocked_zipper
  config = module.config
  first = models.ZipperModel(config)
  second = models.ZipperModel(ZipperConfig(dict(reversed(config.towers.items())), config.edges,
                                           cross_attention_clock={'speech': 1.0, 'text': 3.0}))
  assert first == second and hash(first) == hash(second)
  assert first != models.ZipperModel(config, label_smoothing=0.1)
  assert first != models.ZipperModel(ZipperConfig(config.towers, config.edges))  # no clock
  assert models.TowerModel(TEXT) == models.TowerModel(TEXT) != models.TowerModel(TEXT, 'speech')
  assert models.SingleDecoderModel(TEXT, 48) != models.SingleDecoderModel(TEXT, 40)
  first.predict(params, asr_prompt(), output='text', eos_id=None, max_new_tokens=NEW)
  compiled = decoding.generate._cache_size()
  second.predict(params, asr_prompt(), output='text', eos_id=None, max_new_tokens=NEW)
  assert decoding.generate._cache_size() == compiled
  assert first.decoder('text') is second.decoder('text')


@pytest.fixture(scope='module')
def single_decoder():
  config = baseline.single_decoder_config(TEXT, SPEECH.vocab_size)
  model = Tower(config)
  params = init(model, TowerInput.from_tokens(jnp.ones((1, 4), jnp.int32)))
  return model, params


def left_padded_concatenation():
  """[speech; BOS] prompts of lengths 6 and 4 in one vocabulary, left-padded to 6."""
  speech = baseline.speech_token_ids(random_tokens(2, (2, 5), SPEECH.vocab_size),
                                     TEXT.vocab_size)
  tokens = jnp.concatenate([speech, jnp.ones((2, 1), jnp.int32)], axis=1)
  tokens = tokens.at[1, :2].set(0)
  segment_ids = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1]])
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
  return {'tower': TowerInput(tokens, positions, segment_ids, positions)}


def test_cached_single_decoder_decoding_matches_recomputation(single_decoder):
  model, params = single_decoder
  decoder = decoding.Decoder.for_tower(model)
  prompt = left_padded_concatenation()
  cached = decoding.generate(decoder, params, prompt, max_new_tokens=NEW, eos_id=None,
                             return_logits=True)
  tokens, logits = decoding.greedy_without_cache(decoder, params, prompt, max_new_tokens=NEW)
  np.testing.assert_array_equal(cached.tokens, tokens)
  np.testing.assert_allclose(cached.logits, logits, atol=1e-4)
  # The left-padded row decodes as it would alone, unpadded.
  alone = {'tower': jax.tree.map(lambda x: x[1:, 2:], prompt['tower'])}
  alone_tokens, _ = decoding.greedy_without_cache(decoder, params, alone, max_new_tokens=NEW)
  np.testing.assert_array_equal(tokens[1:], alone_tokens)


def test_generation_is_one_compiled_loop(two_way_zipper):
  model, params = two_way_zipper
  decoder = decoding.Decoder.for_zipper(model, 'text')
  jaxpr = jax.make_jaxpr(lambda p, x: decoding.generate(
      decoder, p, x, max_new_tokens=NEW, eos_id=3))(params, asr_prompt())
  assert 'while' in str(jaxpr)


def test_rows_stop_at_the_end_token(two_way_zipper):
  model, params = two_way_zipper
  decoder = decoding.Decoder.for_zipper(model, 'text')
  free = decoding.generate(decoder, params, asr_prompt(), max_new_tokens=NEW, eos_id=None).tokens
  row = np.asarray(free[0])
  stop = next(i for i in range(1, NEW) if row[i] not in row[:i])  # first new token's first use
  out = decoding.generate(decoder, params, asr_prompt(), max_new_tokens=NEW, eos_id=int(row[stop]))
  np.testing.assert_array_equal(out.tokens[0, :stop + 1], row[:stop + 1])
  assert np.all(np.asarray(out.tokens[0, stop + 1:]) == 0)
  assert int(out.lengths[0]) == stop + 1


def test_sampling_respects_top_k_and_top_p(two_way_zipper):
  model, params = two_way_zipper
  decoder = decoding.Decoder.for_zipper(model, 'text')
  greedy = decoding.generate(decoder, params, asr_prompt(), max_new_tokens=NEW, eos_id=None)
  for kwargs in [dict(top_k=1), dict(top_p=1e-6)]:
    out = decoding.generate(decoder, params, asr_prompt(), jax.random.key(3), max_new_tokens=NEW,
                            eos_id=None, temperature=1.5, **kwargs)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
  out = decoding.generate(decoder, params, asr_prompt(), jax.random.key(4), max_new_tokens=NEW,
                          eos_id=None, temperature=5.0, top_k=3, return_logits=True)
  top3 = np.argsort(-np.asarray(out.logits), axis=-1)[..., :3]
  assert np.all((top3 == np.asarray(out.tokens)[..., None]).any(-1))
  assert not np.array_equal(out.tokens, greedy.tokens)  # hot sampling does leave greedy's path


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  draws = jax.vmap(lambda k: decoding.sample(logits, k, 1.0, top_p=0.7))(
      jax.random.split(jax.random.key(0), 400))
  assert set(np.asarray(draws).ravel().tolist()) == {0, 1}


def sequence_log_prob(logits, tokens):
  log_probs = jax.nn.log_softmax(logits)
  return np.take_along_axis(np.asarray(log_probs), np.asarray(tokens)[..., None], -1).sum((-1, -2))


def test_beam_search(two_way_zipper):
  model, params = two_way_zipper
  decoder = decoding.Decoder.for_zipper(model, 'text')
  greedy = decoding.generate(decoder, params, asr_prompt(), max_new_tokens=NEW, eos_id=None,
                             return_logits=True)
  one = decoding.beam_search(decoder, params, asr_prompt(), beam_size=1, max_new_tokens=NEW,
                             eos_id=None)
  np.testing.assert_array_equal(one.tokens[:, 0], greedy.tokens)
  np.testing.assert_allclose(one.scores[:, 0], sequence_log_prob(greedy.logits, greedy.tokens),
                             rtol=1e-4)
  beams = decoding.beam_search(decoder, params, asr_prompt(), beam_size=4, max_new_tokens=NEW,
                               eos_id=None)
  assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)  # best first
  assert np.all(np.asarray(beams.scores[:, 0]) >= np.asarray(one.scores[:, 0]) - 1e-5)
  # A beam's score is the log-probability that a full forward pass gives its tokens.
  text = jnp.concatenate([jnp.ones((2, 1), jnp.int32), beams.tokens[:, 1]], axis=1)
  inputs = {**asr_prompt(), 'text': TowerInput.from_tokens(text, offset=jnp.asarray([7, 4]))}
  logits, _ = decoder.apply(params, inputs, None)
  np.testing.assert_allclose(beams.scores[:, 1],
                             sequence_log_prob(logits['text'][:, :-1], beams.tokens[:, 1]),
                             rtol=1e-4)
