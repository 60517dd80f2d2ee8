"""Tests of the training job on a tiny random-weight model."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from j6jax import models
from j6jax._src import data
from j6jax._src import objectives as obj
from j6jax._src import train as tr


@pytest.fixture(scope="module")
def tiny(tiny_lm):
  return tiny_lm


ITEMS = [
  data.make_item("Capital of France?", ["Paris", "It is Paris"], ["Rome"]),
  data.make_item("2+2?", ["4"], ["5", "22", "3"]),
  data.make_item("Sky colour?", ["Blue"], ["Green", "Red"]),
  data.make_item("Ice is?", ["Cold"], ["Hot", "Warm", "Wet", "Dry"]),
  data.make_item("Fish live in?", ["Water"], ["Trees"]),
]

CFG = dict(
  steps=4,
  batch_questions=2,
  max_true=2,
  max_false=2,
  n_soft=2,
  h_layers=(0,),
  eval_every=2,
  checkpoint_every=2,
  learning_rate=0.05,
)


def test_encode_items_masks_and_boundary(tiny):
  tok = tiny.tokenizer
  b = tr.encode_items(tok, ITEMS[:2], max_true=2, max_false=2)
  assert b.tokens.shape[:2] == (2, 4)
  np.testing.assert_array_equal(b.true_mask, [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(b.choice_mask, [[1, 1, 1, 0], [1, 0, 1, 1]])
  ctx = tok.encode("Q: Capital of France?\nA:", add_special_tokens=True)
  cont = tok.encode(" Paris", add_special_tokens=False)
  row = b.tokens[0, 0][b.attention_mask[0, 0]].tolist()
  assert row == ctx + cont
  assert b.tokens[0, 0][b.answer_mask[0, 0]].tolist() == cont
  with pytest.raises(data.DataError, match="more than max_len=5"):
    tr.encode_items(tok, ITEMS[:1], max_true=1, max_false=1, max_len=5)
  with pytest.raises(data.DataError, match="empty split"):
    tr.encode_items(tok, [], max_true=1, max_false=1)
  chat = tr.encode_answer(tok, "Why?", "Because", "chat")
  assert tok.decode(chat[0]) == "<s>user\nWhy?</s>\n<s>assistant\n"
  assert tok.decode(chat[1]) == "Because"


def test_evaluate_matches_single_sequence_scoring(tiny):
  model_fn = tr.make_model_fn(tiny.config, (0,))
  prompt = models.init_prompt(
    tiny.config, n_soft=2, layers=(0,), key=jax.random.PRNGKey(1)
  )
  res = tr.evaluate(
    model_fn, prompt, tiny.weights, tiny.tokenizer, ITEMS, batch_size=3
  )
  single = jax.jit(
    lambda ids, n_ctx: obj.answer_loglik(
      model_fn(tiny.weights, ids, None, prompt, None),
      ids,
      jnp.arange(ids.shape[1])[None] >= n_ctx,
    )[0]
  )
  for q, item in enumerate(ITEMS):
    for a, text in enumerate(item.answers):
      ctx, cont = tr.encode_answer(tiny.tokenizer, item.question, text, "plain")
      want = single(jnp.array([ctx + cont]), len(ctx))
      np.testing.assert_allclose(
        res["loglik"][q][a], want, rtol=1e-4, atol=1e-4
      )
  for k in ("mc1", "mc2", "ece", "brier", "choice_entropy", "answer_entropy"):
    assert np.isfinite(res[k]), k
  assert 0 <= res["mc1"] <= 1 and 0 <= res["mc2"] <= 1


def _prompt_of(tiny, run_dir):
  prompt, _ = tr.load_run_prompt(tiny, run_dir)
  return prompt


def _lines(path):
  return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_resume_equals_straight_run(tiny, tmp_path):
  cfg = tr.TrainConfig(**CFG)
  tr.train(tiny, ITEMS, ITEMS[:2], cfg, tmp_path / "straight")
  tr.train(tiny, ITEMS, ITEMS[:2], cfg, tmp_path / "resumed", stop_after=3)
  assert len(_lines(tmp_path / "resumed" / "steps.jsonl")) == 3
  # Resume from the step-2 checkpoint: step 3's line is rewritten.
  (tmp_path / "resumed" / "checkpoints" / "3").exists()
  tr.train(tiny, ITEMS, ITEMS[:2], cfg, tmp_path / "resumed")
  a = _prompt_of(tiny, tmp_path / "straight")
  b = _prompt_of(tiny, tmp_path / "resumed")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=0, atol=0)
  s1 = _lines(tmp_path / "straight" / "steps.jsonl")
  s2 = _lines(tmp_path / "resumed" / "steps.jsonl")
  assert [r["step"] for r in s2] == [1, 2, 3, 4]
  for r1, r2 in zip(s1, s2, strict=True):
    assert r1["questions"] == r2["questions"]
    np.testing.assert_allclose(r1["factuality"], r2["factuality"], rtol=1e-6)
    np.testing.assert_allclose(r1["alpha"], r2["alpha"], rtol=1e-6)
  assert len(s1[0]["j6_components"]) == 6
  ev = _lines(tmp_path / "straight" / "eval.jsonl")
  assert [r["step"] for r in ev] == [0, 2, 4]
  # The prompt moved and the objective values are finite.
  init = tr.initial_prompt(tiny, cfg)
  assert not np.allclose(a["w"], init["w"])
  assert all(np.isfinite(r["factuality"]) for r in s1)


def test_interrupt_writes_checkpoint(tiny, tmp_path):
  cfg = tr.TrainConfig(**{**CFG, "checkpoint_every": 100})
  calls = []

  def progress(steps):
    for s in steps:
      if len(calls) == 1:
        raise KeyboardInterrupt
      calls.append(s)
      yield s

  with pytest.raises(KeyboardInterrupt):
    tr.train(tiny, ITEMS, [], cfg, tmp_path / "run", progress=progress)
  ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
  assert "1" in ckpts
  out = tr.train(tiny, ITEMS, [], cfg, tmp_path / "run")
  assert out["steps_done"] == 4
  assert len(_lines(tmp_path / "run" / "steps.jsonl")) == 4


def test_run_dir_with_other_run_is_refused(tiny, tmp_path):
  cfg = tr.TrainConfig(**{**CFG, "steps": 1, "eval_every": 0})
  tr.train(tiny, ITEMS, [], cfg, tmp_path / "run")
  other = tr.TrainConfig(**{**CFG, "steps": 1, "method": "j6-hard"})
  with pytest.raises(tr.RunDirError, match=r"different run.*'method'"):
    tr.train(tiny, ITEMS, [], other, tmp_path / "run")
  out = tr.train(tiny, ITEMS, [], other, tmp_path / "run", overwrite=True)
  assert out["method"] == "j6-hard"


def test_same_seed_same_result(tiny, tmp_path):
  cfg = tr.TrainConfig(**{**CFG, "steps": 2, "eval_every": 0})
  tr.train(tiny, ITEMS, [], cfg, tmp_path / "a")
  tr.train(tiny, ITEMS, [], cfg, tmp_path / "b")
  a = _lines(tmp_path / "a" / "steps.jsonl")
  b = _lines(tmp_path / "b" / "steps.jsonl")
  assert a == b


def test_prompt_longer_than_model_context(tiny, tmp_path):
  import dataclasses

  short = models.LlamaModel(
    dataclasses.replace(tiny.config, max_positions=20),
    tiny.weights,
    tiny.tokenizer,
  )
  cfg = tr.TrainConfig(**{**CFG, "steps": 1})
  assert tr.context_limit(short, cfg) == 18
  with pytest.raises(data.DataError, match="more than max_len=18"):
    tr.train(short, ITEMS, [], cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_config_validation():
  with pytest.raises(ValueError, match="factuality must be one of"):
    tr.TrainConfig(factuality="bleu")
  with pytest.raises(ValueError, match="Unknown method 'sgd'.*'nash_mtl'"):
    tr.TrainConfig(method="sgd")
  with pytest.raises(ValueError, match="Unknown method 'MeanState'"):
    tr.TrainConfig(method="MeanState")
  with pytest.raises(ValueError, match="do not fit method 'j6-hard'"):
    tr.TrainConfig(method="j6-hard", method_kwargs={"mode": "soft"})
  with pytest.raises(ValueError, match="steps must be >= 1"):
    tr.TrainConfig(steps=0)
  with pytest.raises(ValueError, match="Unknown config key"):
    tr.TrainConfig.from_dict({"stepz": 3})
  cfg = tr.TrainConfig(method="j6", method_kwargs={"temperature": 0.5})
  assert tr.TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method", tr.METHODS)
def test_every_method_takes_a_finite_step(tiny, method):
  import optax

  cfg = tr.TrainConfig(**{**CFG, "method": method})
  tx = optax.chain(tr.make_method(method), optax.adam(0.05))
  prompt = tr.initial_prompt(tiny, cfg)
  state = tx.init(prompt)
  step = tr.make_train_step(tr.make_model_fn(tiny.config, (0,)), tx, cfg)
  enc = tr.encode_items(tiny.tokenizer, ITEMS[:2], max_true=2, max_false=2)
  batch = tr.MCBatch(*map(jnp.asarray, enc))
  new, state, values, comps = step(prompt, state, tiny.weights, batch)
  for leaf in jax.tree.leaves((new, values, comps)):
    assert np.all(np.isfinite(np.asarray(leaf))), method
  # Hard J6 moves one group only; every method moves something.
  moved = [not np.allclose(new[k], prompt[k]) for k in ("h", "w")]
  assert any(moved), method
