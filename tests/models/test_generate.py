"""Generation with a key/value cache, checked against the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from j6jax import models

LAYERS = (0, 2)
_forward = jax.jit(models.forward, static_argnums=0, static_argnames="h_layers")
_decode = jax.jit(models.decode_step, static_argnums=0)


def padded(side):
  rng = np.random.default_rng(0)
  seqs = [[1, *rng.integers(3, 277, n - 1).tolist()] for n in (7, 4)]
  T = 7
  tokens = np.full((2, T), 2, np.int32)
  mask = np.zeros((2, T), np.int32)
  for b, s in enumerate(seqs):
    cols = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
    tokens[b, cols], mask[b, cols] = s, 1
  return seqs, tokens, mask


@pytest.fixture(scope="module")
def prompt(tiny_config):
  p = models.init_prompt(
    tiny_config, n_soft=2, layers=LAYERS, key=jax.random.key(3), scale=0.5
  )
  p["h"] = 0.5 * jax.random.normal(jax.random.key(4), p["h"].shape)
  return p


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_tokens_are_the_argmax_of_the_full_forward(
  tiny_config, tiny_weights, prompt, side
):
  seqs, tokens, mask = padded(side)
  N = 6
  out = models.generate(
    tiny_config,
    tiny_weights,
    tokens,
    attention_mask=mask,
    prompt=prompt,
    h_layers=LAYERS,
    max_new_tokens=N,
    eos_token_ids=(),
  )
  assert out.shape == (2, N) and out.dtype == jnp.int32

  full = jnp.concatenate([tokens, out], axis=1)
  full_mask = jnp.concatenate([mask, jnp.ones_like(out)], axis=1)
  logits = _forward(
    tiny_config,
    tiny_weights,
    full,
    attention_mask=full_mask,
    prompt=prompt,
    h_layers=LAYERS,
  )
  T = tokens.shape[1]
  for b, s in enumerate(seqs):
    last_real = len(s) - 1 if side == "right" else T - 1
    before = [last_real] + list(range(T, T + N - 1))
    np.testing.assert_array_equal(
      np.argmax(logits[b, before], axis=-1), np.asarray(out[b])
    )


def test_cached_decoding_matches_forward_logits(tiny_config, tiny_weights):
  _, tokens, mask = padded("left")
  extra = jnp.asarray([[5, 6, 7], [8, 9, 10]], jnp.int32)
  logits, cache = models.prefill(
    tiny_config, tiny_weights, tokens, attention_mask=mask, max_len=12
  )
  full = jnp.concatenate([tokens, extra], axis=1)
  ref = _forward(
    tiny_config,
    tiny_weights,
    full,
    attention_mask=jnp.concatenate([mask, jnp.ones_like(extra)], axis=1),
  )
  np.testing.assert_allclose(logits, ref[:, 6], rtol=1e-5, atol=1e-5)
  for j in range(3):
    logits, cache = _decode(tiny_config, tiny_weights, cache, extra[:, j])
    np.testing.assert_allclose(logits, ref[:, 7 + j], rtol=1e-5, atol=1e-5)
  assert int(cache.index) == 10
  np.testing.assert_array_equal(cache.positions, [10, 7])


def test_batched_generation_matches_single_sequence(
  tiny_config, tiny_weights, prompt
):
  seqs, tokens, mask = padded("left")
  kwargs = dict(
    prompt=prompt, h_layers=LAYERS, max_new_tokens=6, eos_token_ids=()
  )
  batch = models.generate(
    tiny_config, tiny_weights, tokens, attention_mask=mask, **kwargs
  )
  single = models.generate(tiny_config, tiny_weights, [seqs[0]], **kwargs)
  np.testing.assert_array_equal(batch[0], single[0])


def test_select_token_filters():
  logits = jnp.asarray([[0.0, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 4.99]])
  greedy = models.select_token(logits, None)
  np.testing.assert_array_equal(greedy, [1, 0])
  for seed in range(5):
    key = jax.random.key(seed)
    top1 = models.select_token(logits, key, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    nucleus = models.select_token(logits, key, top_p=1e-6)
    np.testing.assert_array_equal(nucleus, greedy)
    top2 = models.select_token(logits, key, top_k=2, temperature=100.0)
    assert int(top2[0]) in (1, 2) and int(top2[1]) in (0, 3)


def test_sampling(tiny_config, tiny_weights):
  _, tokens, mask = padded("left")
  model = models.LlamaModel(tiny_config, tiny_weights)
  kw = dict(attention_mask=mask, max_new_tokens=4, eos_token_ids=())
  a = model.generate(tokens, key=jax.random.key(1), temperature=50.0, **kw)
  b = model.generate(tokens, key=jax.random.key(1), temperature=50.0, **kw)
  c = model.generate(tokens, key=jax.random.key(2), temperature=50.0, **kw)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert int(a.min()) >= 0 and int(a.max()) < tiny_config.vocab_size
  cold = model.generate(tokens, key=jax.random.key(2), temperature=1e-4, **kw)
  np.testing.assert_array_equal(cold, model.generate(tokens, **kw))
  with pytest.raises(ValueError, match="temperature"):
    model.generate(tokens, key=jax.random.key(1), temperature=0.0, **kw)


def test_generation_stops_at_eos_and_pads(tiny_config, tiny_weights):
  _, tokens, mask = padded("left")
  model = models.LlamaModel(tiny_config, tiny_weights)
  free = model.generate(
    tokens, attention_mask=mask, max_new_tokens=4, eos_token_ids=()
  )
  stop = int(free[0, 1])
  out = model.generate(
    tokens,
    attention_mask=mask,
    max_new_tokens=4,
    eos_token_ids=(stop,),
    pad_token_id=0,
  )
  first = int(np.argmax(np.asarray(free[0]) == stop))
  np.testing.assert_array_equal(out[0, : first + 1], free[0, : first + 1])
  np.testing.assert_array_equal(out[0, first + 1 :], 0)
