"""MC1/MC2 of the untuned model equal the same protocol run in PyTorch.

The protocol (README, "Evaluation protocol") is computed twice on a fixed
subset of TruthfulQA: by j6jax (JAX model, j6jax tokenizer, batched and
padded evaluation) and by Hugging Face transformers' PyTorch model and
tokenizer loaded from the same GGUF file, one unpadded sequence at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from j6jax._src import data, metrics
from j6jax._src import train as tr

N_QUESTIONS = 6


def _hf_loglik(hf_model, hf_tok, items):
  torch = pytest.importorskip("torch")
  A = max(len(i.answers) for i in items)
  ll = np.full((len(items), A), -np.inf)
  with torch.no_grad():
    for q, item in enumerate(items):
      ctx = hf_tok(f"Q: {item.question}\nA:", add_special_tokens=True)
      ctx = ctx["input_ids"]
      for a, text in enumerate(item.answers):
        cont = hf_tok(" " + text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(hf_model(ids).logits.double(), -1)[0]
        ll[q, a] = sum(
          float(logp[len(ctx) - 1 + t, tok]) for t, tok in enumerate(cont)
        )
  return ll


@pytest.mark.slow
def test_untuned_mc_metrics_match_pytorch(real, hf_real, truthfulqa_csv):
  hf_model, hf_tok = hf_real
  lm = real.model
  items = data.load_truthfulqa(truthfulqa_csv)[:N_QUESTIONS]
  cfg = tr.TrainConfig()
  from j6jax import models

  prompt = models.init_prompt(lm.config, n_soft=0, layers=cfg.h_layers)
  ours = tr.evaluate(
    tr.make_model_fn(lm.config, cfg.h_layers),
    prompt,
    lm.weights,
    lm.tokenizer,
    items,
    batch_size=8,
  )
  ref = _hf_loglik(hf_model, hf_tok, items)
  A = ref.shape[1]
  true = np.zeros((len(items), A), bool)
  valid = np.zeros((len(items), A), bool)
  for q, item in enumerate(items):
    true[q, : len(item.correct)] = True
    valid[q, : len(item.answers)] = True
  got = np.array(ours["loglik"])
  np.testing.assert_allclose(got[valid], ref[valid], rtol=0, atol=2e-3)
  np.testing.assert_array_equal(
    metrics.mc1(got, true, valid), metrics.mc1(ref, true, valid)
  )
  np.testing.assert_allclose(
    metrics.mc2(got, true, valid), metrics.mc2(ref, true, valid), atol=1e-3
  )
  summary = metrics.summarize(ref, true, valid)
  assert ours["mc1"] == summary["mc1"]
  assert abs(ours["mc2"] - summary["mc2"]) <= 1e-3
