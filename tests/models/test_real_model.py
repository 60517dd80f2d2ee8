"""SmolLM2-135M-Instruct against transformers' PyTorch Llama (same GGUF)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from j6jax import models

pytestmark = pytest.mark.slow

LONG = (
  "Photosynthesis is the process by which green plants, algae and some "
  "bacteria convert light energy into chemical energy. During this process, "
  "carbon dioxide and water are combined, using the energy of sunlight, to "
  "produce glucose and oxygen. The reactions take place in the chloroplasts, "
  "which contain the pigment chlorophyll. Scientists divide photosynthesis "
  "into the light-dependent reactions and the Calvin cycle, and both stages "
  "are essential for life on Earth because they provide food and oxygen. "
  "Without photosynthesis, the atmosphere would hold almost no free oxygen, "
  "and most of the ecosystems we know, from forests to coral reefs, could "
  "not exist in their present form."
)
_forward = jax.jit(models.forward, static_argnums=0)


def prompts(tokenizer):
  chat = [{"role": "user", "content": "What is the capital of France?"}]
  return {
    "plain": tokenizer.encode("The history of the Roman Empire began"),
    "chat": tokenizer.apply_chat_template(chat, add_generation_prompt=True),
    "unicode": tokenizer.encode("Ünïcödé: 東京は日本の首都です。 café ☕ → 🙂"),
    "long": tokenizer.encode(LONG),
  }


def hf_logits(hf_model, ids):
  import torch

  with torch.no_grad():
    return hf_model(torch.tensor([ids])).logits[0].numpy()


def test_load_times_and_config(real):
  config = real.model.config
  assert config.rope_theta == 1e5  # read from the checkpoint, not assumed
  assert (config.n_layers, config.d_model, config.n_kv_heads) == (30, 576, 3)
  assert config.tie_embeddings and "lm_head" not in real.model.weights
  assert real.model.weights["embed"].shape == (49152, 576)
  print(
    f"\nload_default: first {real.first_load_s:.2f}s, "
    f"cached {real.cached_load_s:.2f}s"
  )
  assert real.cached_load_s < real.first_load_s


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_on_padded_batch(real, hf_real, side):
  hf_model, _ = hf_real
  tok = real.model.tokenizer
  named = prompts(tok)
  assert len(named["long"]) > 100
  tokens, mask = tok.pad_batch(list(named.values()), padding_side=side)
  got = np.asarray(
    _forward(real.model.config, real.model.weights, tokens, attention_mask=mask)
  )
  T = tokens.shape[1]
  worst = {}
  for b, (name, ids) in enumerate(named.items()):
    expected = hf_logits(hf_model, ids)
    cols = (
      np.arange(len(ids)) if side == "right" else np.arange(T - len(ids), T)
    )
    worst[name] = float(np.abs(got[b, cols] - expected).max())
  print(f"\nmax |logits - transformers| ({side} padded): {worst}")
  assert max(worst.values()) <= 1e-3, worst


def test_unpadded_single_prompt_matches_transformers(real, hf_real):
  hf_model, _ = hf_real
  ids = prompts(real.model.tokenizer)["chat"]
  got = np.asarray(_forward(real.model.config, real.model.weights, [ids]))[0]
  diff = float(np.abs(got - hf_logits(hf_model, ids)).max())
  print(f"\nmax |logits - transformers| (single chat prompt): {diff:.2e}")
  assert diff <= 1e-3


def test_greedy_generation_matches_transformers(real, hf_real):
  import torch

  hf_model, _ = hf_real
  named = prompts(real.model.tokenizer)
  chosen = [named["plain"], named["chat"]]
  tokens, mask = real.model.tokenizer.pad_batch(chosen, padding_side="left")
  ours = np.asarray(
    real.model.generate(tokens, attention_mask=mask, max_new_tokens=20)
  )
  for b, ids in enumerate(chosen):
    with torch.no_grad():
      out = hf_model.generate(
        torch.tensor([ids]), max_new_tokens=20, do_sample=False
      )
    theirs = out[0, len(ids) :].numpy()
    np.testing.assert_array_equal(ours[b, : len(theirs)], theirs)
    if len(theirs) < 20:  # transformers stopped at <|im_end|>; we pad with it
      assert theirs[-1] == 2 and (ours[b, len(theirs) :] == 2).all()
  assert (ours[0] != 2).all()  # the plain prompt runs the full 20 tokens
  text = real.model.tokenizer.decode(ours[1], skip_special_tokens=True)
  assert "Paris" in text


def test_bfloat16_real_model_agrees_with_float32(real):
  bf16 = models.load_default(cache_dir=real.cache_dir, dtype=jnp.bfloat16)
  ids = prompts(real.model.tokenizer)["chat"]
  a = np.asarray(_forward(real.model.config, real.model.weights, [ids]))[0]
  b = np.asarray(_forward(bf16.config, bf16.weights, [ids]))[0]
  assert np.isfinite(b).all()
  agree = np.mean(a.argmax(-1) == b.argmax(-1))
  assert agree >= 0.8, agree


def test_prompt_parameters_on_the_real_model(real):
  model = real.model
  ids = prompts(model.tokenizer)["chat"]
  prompt = models.init_prompt(
    model, n_soft=4, layers=(10, 20), init_text="Answer truthfully."
  )
  assert prompt["w"].shape == (4, 576) and prompt["h"].shape == (2, 576)
  plain = _forward(model.config, model.weights, [ids])
  empty = models.init_prompt(model, n_soft=0, layers=(10, 20))
  run = jax.jit(lambda m, p: m(jnp.asarray([ids]), prompt=p, h_layers=(10, 20)))
  same = run(model, empty)  # the same jitted program as `plain`, bar h and w
  np.testing.assert_array_equal(np.asarray(same), np.asarray(plain))
  moved = run(model, prompt)
  assert moved.shape == plain.shape
  assert float(jnp.abs(moved - plain).max()) > 1e-2
