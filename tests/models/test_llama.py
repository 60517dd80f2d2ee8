"""The decoder with prompt parameters, on a tiny random-weight config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from j6jax import models
from j6jax._src.models import llama

BOS = 1


_forward = jax.jit(
  models.forward,
  static_argnums=0,
  static_argnames=("h_layers", "insert_after_bos"),
)


def fwd(config, weights, tokens, **kwargs):
  """The jitted forward pass (one compilation per shape and prompt form)."""
  return _forward(config, weights, jnp.asarray(tokens), **kwargs)


def rand_tokens(seed, length, bos=True, vocab=277):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=length).tolist()
  return [BOS, *ids[1:]] if bos else ids


# --- output embedding (case C12) ------------------------------------------


def test_tied_output_is_token_embedding_case_c12(cases):
  toy = cases["C12"]["input"]["toy"]
  embed = jnp.asarray(toy["embedding_vocab3_dim2"], jnp.float32)
  hidden = jnp.asarray(toy["final_hidden"], jnp.float32)
  logits = models.unembed({"embed": embed}, hidden)
  expected = cases["C12"]["expected"]["toy_logits"]
  np.testing.assert_array_equal(np.asarray(logits), expected)  # atol 0


def test_untied_output_uses_lm_head():
  embed = jnp.eye(3, 2)
  head = jnp.asarray([[0.0, 2.0], [1.0, 0.0], [3.0, 3.0]])
  logits = models.unembed({"embed": embed, "lm_head": head}, jnp.ones(2))
  np.testing.assert_array_equal(np.asarray(logits), [2.0, 1.0, 6.0])


def test_untied_config_forward_uses_its_head(tiny_config):
  config = dataclasses.replace(tiny_config, tie_embeddings=False)
  weights = models.init_weights(config, jax.random.key(3))
  as_tied = {**weights, "lm_head": weights["embed"]}  # same program
  tokens = [rand_tokens(0, 6)]
  a = fwd(config, weights, tokens)
  b = fwd(config, as_tied, tokens)
  assert a.shape == b.shape == (1, 6, config.vocab_size)
  assert not np.allclose(a, b)


# --- exactness of an empty prompt -----------------------------------------


@pytest.mark.parametrize(
  "prompt_keys", [("w",), ("h",), ("w", "h")], ids=lambda k: "+".join(k)
)
def test_empty_w_and_zero_h_give_the_plain_logits_exactly(
  tiny_config, tiny_weights, prompt_keys
):
  tokens = [rand_tokens(1, 9), rand_tokens(2, 9)]
  mask = [[1] * 9, [1] * 6 + [0] * 3]
  layers = (0, 2)
  prompt = models.init_prompt(tiny_config, n_soft=0, layers=layers)
  prompt = {k: prompt[k] for k in prompt_keys}
  h_layers = layers if "h" in prompt_keys else ()
  plain = fwd(tiny_config, tiny_weights, tokens, attention_mask=mask)
  with_prompt = fwd(
    tiny_config,
    tiny_weights,
    tokens,
    attention_mask=mask,
    prompt=prompt,
    h_layers=h_layers,
  )
  np.testing.assert_array_equal(np.asarray(with_prompt), np.asarray(plain))


def test_logits_shape_and_dtype(tiny_config, tiny_weights):
  prompt = models.init_prompt(
    tiny_config, n_soft=3, layers=(1,), key=jax.random.key(0)
  )
  logits = fwd(
    tiny_config, tiny_weights, [rand_tokens(0, 7)], prompt=prompt, h_layers=(1,)
  )
  assert logits.shape == (1, 7, tiny_config.vocab_size)
  assert logits.dtype == jnp.float32


# --- soft prompt insertion and the logits mapping -------------------------


@pytest.mark.parametrize("bos", [True, False], ids=["after_bos", "at_start"])
def test_soft_prompt_equals_splicing_its_tokens(tiny_config, tiny_weights, bos):
  tokens = rand_tokens(4, 8, bos=bos)
  soft_ids = [40, 41, 42]
  w = jnp.take(tiny_weights["embed"], jnp.asarray(soft_ids), axis=0)
  start = 1 if bos else 0
  spliced = tokens[:start] + soft_ids + tokens[start:]
  n = len(soft_ids)

  out = fwd(tiny_config, tiny_weights, [tokens], prompt={"w": w})
  ref = fwd(tiny_config, tiny_weights, [spliced])

  # logits[:, i] is read just before token i + 1 in the extended sequence.
  index = [(i + 1 if i + 1 < start else i + 1 + n) - 1 for i in range(8)]
  np.testing.assert_allclose(out[0], ref[0, index], rtol=1e-5, atol=1e-5)
  assert int(models.insertion_index(jnp.asarray([tokens]), None, BOS)[0]) == (
    start
  )


def test_insert_before_bos_when_asked(tiny_config, tiny_weights):
  tokens = rand_tokens(5, 6)
  soft_ids = [50, 51]
  w = jnp.take(tiny_weights["embed"], jnp.asarray(soft_ids), axis=0)
  out = fwd(
    tiny_config,
    tiny_weights,
    [tokens],
    prompt={"w": w},
    insert_after_bos=False,
  )
  ref = fwd(tiny_config, tiny_weights, [soft_ids + tokens])
  np.testing.assert_allclose(out[0], ref[0, 2:], rtol=1e-5, atol=1e-5)


# --- padding ----------------------------------------------------------------


def pad(seqs, side, pad_id=2):
  T = max(len(s) for s in seqs)
  tokens = np.full((len(seqs), T), pad_id, np.int32)
  mask = np.zeros((len(seqs), T), np.int32)
  for b, s in enumerate(seqs):
    cols = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
    tokens[b, cols], mask[b, cols] = s, 1
  return tokens, mask


def real_columns(length, T, side):
  return np.arange(length) if side == "right" else np.arange(T - length, T)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("with_prompt", [False, True], ids=["plain", "w+h"])
def test_padded_batch_matches_single_sequences(
  tiny_config, tiny_weights, side, with_prompt
):
  seqs = [rand_tokens(10, 11), rand_tokens(11, 5), rand_tokens(12, 8, False)]
  tokens, mask = pad(seqs, side)
  T = tokens.shape[1]
  kwargs, answer = {}, []
  for s in seqs:  # h on the last three tokens of each sequence
    answer.append([0] * (len(s) - 3) + [1] * 3)
  if with_prompt:
    prompt = models.init_prompt(
      tiny_config, n_soft=3, layers=(0, 2), key=jax.random.key(1)
    )
    prompt["h"] = 0.5 * jax.random.normal(jax.random.key(2), (2, 64))
    kwargs = {"prompt": prompt, "h_layers": (0, 2)}
  h_mask = np.zeros_like(mask, np.float32)
  for b, s in enumerate(seqs):
    h_mask[b, real_columns(len(s), T, side)] = answer[b]

  batched = fwd(
    tiny_config,
    tiny_weights,
    tokens,
    attention_mask=mask,
    h_mask=h_mask if with_prompt else None,
    **kwargs,
  )
  for b, s in enumerate(seqs):
    single = fwd(
      tiny_config,
      tiny_weights,
      [s],
      h_mask=[answer[b]] if with_prompt else None,
      **kwargs,
    )
    cols = real_columns(len(s), T, side)
    np.testing.assert_allclose(
      batched[b, cols], single[0], rtol=1e-5, atol=2e-5
    )


# --- steering vectors h --------------------------------------------------


def test_h_mask_leaves_earlier_positions_untouched(tiny_config, tiny_weights):
  tokens = [rand_tokens(6, 10)]
  h = jax.random.normal(jax.random.key(4), (1, 64))
  h_mask = [[0] * 6 + [1] * 4]
  plain = fwd(tiny_config, tiny_weights, tokens)
  steered = fwd(
    tiny_config,
    tiny_weights,
    tokens,
    prompt={"h": h},
    h_layers=(1,),
    h_mask=h_mask,
  )
  np.testing.assert_array_equal(
    np.asarray(steered[0, :6]), np.asarray(plain[0, :6])
  )
  assert np.abs(steered[0, 6:] - plain[0, 6:]).min() > 0


def test_h_after_last_layer_adds_before_final_norm(tiny_config, tiny_weights):
  tokens = [rand_tokens(7, 5)]
  h = jax.random.normal(jax.random.key(5), (1, 64))
  steered = fwd(
    tiny_config, tiny_weights, tokens, prompt={"h": h}, h_layers=(2,)
  )

  prepared = llama.prepare_inputs(
    tiny_config, tiny_weights, jnp.asarray(tokens)
  )
  cos, sin = models.rope_tables(prepared.positions, 16, 1e4)
  x, _ = llama.run_layers(
    tiny_config,
    tiny_weights["layers"],
    prepared.x,
    cos,
    sin,
    llama.causal_permission(prepared.mask),
  )
  x = llama.rms_norm(x + h, tiny_weights["final_norm"], tiny_config.rms_eps)
  np.testing.assert_allclose(
    steered, models.unembed(tiny_weights, x), rtol=1e-5, atol=1e-5
  )


# --- gradients ---------------------------------------------------------------


def objectives(prompt, model, batch, h_layers=(0, 2)):
  """[answer NLL, mean entropy] of a batch: the two J6 objectives."""
  logits = model(
    batch["tokens"],
    attention_mask=batch["mask"],
    prompt=prompt,
    h_layers=h_layers,
    h_mask=batch["answer"],
  )
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  target = batch["tokens"][:, 1:]
  picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  weight = batch["answer"][:, 1:]
  nll = -jnp.sum(picked * weight) / jnp.sum(weight)
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  real = batch["mask"][:, :-1]
  return jnp.stack([nll, jnp.sum(entropy * real) / jnp.sum(real)])


def make_batch(dtype=jnp.float32):
  seqs = [rand_tokens(20, 9), rand_tokens(21, 6)]
  tokens, mask = pad(seqs, "right")
  answer = np.zeros_like(mask)
  answer[0, 5:9] = 1
  answer[1, 3:6] = 1
  return {
    "tokens": jnp.asarray(tokens),
    "mask": jnp.asarray(mask),
    "answer": jnp.asarray(answer, dtype),
  }


def test_jacobian_rows_match_central_differences_in_float64(tiny_config):
  with jax.enable_x64(True):
    weights = models.init_weights(tiny_config, jax.random.key(7), jnp.float64)
    model = models.LlamaModel(tiny_config, weights)
    batch = make_batch(jnp.float64)
    prompt = models.init_prompt(
      tiny_config,
      n_soft=2,
      layers=(0, 2),
      key=jax.random.key(8),
      dtype=jnp.float64,
      scale=0.5,
    )
    prompt["h"] = 0.3 * jax.random.normal(jax.random.key(9), (2, 64))

    jac = jax.jit(jax.jacrev(objectives))(prompt, model, batch)
    values = jax.jit(objectives)
    eps = 1e-5
    for group in ("w", "h"):
      direction = jax.tree.map(jnp.zeros_like, prompt)
      direction[group] = jax.random.normal(
        jax.random.key(10), prompt[group].shape, jnp.float64
      )
      plus = jax.tree.map(lambda p, d: p + eps * d, prompt, direction)
      minus = jax.tree.map(lambda p, d: p - eps * d, prompt, direction)
      numeric = (values(plus, model, batch) - values(minus, model, batch)) / (
        2 * eps
      )
      analytic = jnp.einsum("mij,ij->m", jac[group], direction[group])
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
      assert float(jnp.abs(analytic).min()) > 1e-3


def test_jacrev_under_jit_traces_weights_not_constants(tiny_config):
  weights = models.init_weights(tiny_config, jax.random.key(11))
  model = models.LlamaModel(tiny_config, weights)
  batch = make_batch()
  prompt = models.init_prompt(
    tiny_config, n_soft=2, layers=(0, 2), key=jax.random.key(12)
  )
  traces = []

  def counted(p, m, b):
    traces.append(1)
    return objectives(p, m, b)

  jac_fn = jax.jit(jax.jacrev(counted))
  jac = jac_fn(prompt, model, batch)
  assert jac["w"].shape == (2, 2, 64) and jac["h"].shape == (2, 2, 64)
  assert bool(jnp.all(jnp.isfinite(jac["w"])))

  other = models.LlamaModel(
    tiny_config, models.init_weights(tiny_config, jax.random.key(13))
  )
  jac_other = jac_fn(prompt, other, batch)
  assert len(traces) == 1  # new weights, same program
  assert not np.allclose(jac_other["h"], jac["h"])

  closed = jax.make_jaxpr(jax.jacrev(objectives))(prompt, model, batch)
  const_size = sum(np.size(c) for c in closed.consts)
  assert const_size < 1000  # no weight matrices baked in


# --- bfloat16 -------------------------------------------------------------


def test_bfloat16_model_is_close_to_float32(tiny_config, tiny_weights):
  tokens = [rand_tokens(30, 12)]
  prompt = models.init_prompt(
    tiny_config, n_soft=2, layers=(1,), key=jax.random.key(0)
  )
  f32 = models.LlamaModel(tiny_config, tiny_weights)
  bf16 = f32.astype(jnp.bfloat16)
  assert bf16.dtype == jnp.bfloat16
  run = jax.jit(lambda m, p: m(jnp.asarray(tokens), prompt=p, h_layers=(1,)))
  a, b = run(f32, prompt), run(bf16, prompt)
  assert b.dtype == jnp.float32
  scale = float(jnp.abs(a).max())
  assert float(jnp.abs(a - b).max()) < 0.05 * scale
  grad = jax.jit(jax.grad(lambda p, m: run(m, p).sum()))(prompt, bf16)
  assert grad["w"].dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(grad["h"])))


# --- init_prompt and validation ---------------------------------------------


def test_init_prompt_shapes_and_values(tiny_config, tiny_weights):
  p = models.init_prompt(
    tiny_config, n_soft=4, layers=(0, 1), key=jax.random.key(0)
  )
  assert p["w"].shape == (4, 64) and p["h"].shape == (2, 64)
  assert not p["h"].any()
  assert 0.005 < float(p["w"].std()) < 0.05
  empty = models.init_prompt(tiny_config)
  assert empty["w"].shape == (0, 64) and empty["h"].shape == (0, 64)


def test_init_prompt_from_text(tiny_config, tiny_weights):
  class Fake:
    def encode(self, text, add_special_tokens=True):
      return [7, 8]

  model = models.LlamaModel(tiny_config, tiny_weights, Fake())
  p = models.init_prompt(model, n_soft=3, init_text="ab")
  rows = tiny_weights["embed"][jnp.asarray([7, 8, 7])]
  np.testing.assert_array_equal(np.asarray(p["w"]), np.asarray(rows))
  p = models.init_prompt(model, n_soft=None, init_text="ab")
  assert p["w"].shape == (2, 64)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"prompt": {"h": jnp.zeros((2, 64))}, "h_layers": (1,)}, "len\\(h_layers"),
    ({"prompt": {"h": jnp.zeros((1, 64))}, "h_layers": (3,)}, "in \\[0, 3\\)"),
    ({"prompt": {"h": jnp.zeros((2, 64))}, "h_layers": (1, 1)}, "unique"),
    ({"prompt": {"x": jnp.zeros((1, 64))}}, "Unknown prompt"),
    ({"prompt": {"w": jnp.zeros((1, 32))}}, "n_soft, 64"),
    ({"h_layers": (1,)}, "no prompt"),
  ],
)
def test_bad_prompts_are_rejected(tiny_config, tiny_weights, kwargs, message):
  with pytest.raises(ValueError, match=message):
    fwd(tiny_config, tiny_weights, [rand_tokens(0, 4)], **kwargs)


def test_config_validation():
  with pytest.raises(ValueError, match="n_kv_heads must divide"):
    models.LlamaConfig(10, 8, 1, 3, 2, 4, 16)
  config = models.LlamaConfig(10, 8, 1, 2, 1, 4, 16, eos_token_ids=[1, 2])
  assert models.LlamaConfig.from_dict(config.to_dict()) == config
  assert hash(config) == hash(models.LlamaConfig.from_dict(config.to_dict()))
