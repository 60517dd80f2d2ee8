"""Tests of the data readers, the prompt split, objectives and metrics."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from j6jax._src import data, metrics, prompts
from j6jax._src import objectives as obj


def _toy_tokenizer(spec):
  tokenizers = pytest.importorskip("tokenizers")
  model = tokenizers.models.BPE(
    vocab=spec["vocab"], merges=[tuple(m.split()) for m in spec["merges"]]
  )
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
    add_prefix_space=False
  )
  return lambda s: tok.encode(s, add_special_tokens=False).ids


def test_c13_tokenisation_boundary(cases):
  case = cases["C13"]
  encode = _toy_tokenizer(case["input"]["toy_byte_level_bpe"])
  exp = case["expected"]
  for text, ids in exp["tokens"].items():
    assert encode(text) == ids, text
  p1, p2, p3 = case["input"]["pairs"]
  want = exp["pair1_and_pair2_score_same_tokens"]
  for p in (p1, p2):
    ctx, cont = prompts.encode_pair(encode, p["context"], p["continuation"])
    assert (ctx, cont) == (want["context_ids"], want["continuation_ids"])
  ctx, cont = prompts.encode_pair(encode, p3["context"], p3["continuation"])
  assert ctx == exp["pair3"]["context_ids"]
  assert cont == exp["pair3"]["continuation_ids"]
  with pytest.raises(ValueError, match="no tokens"):
    prompts.encode_pair(encode, "A:", "")


def test_plain_and_chat_formats():
  ctx, cont = prompts.context_and_continuation("Why?", "Because ")
  assert (ctx, cont) == ("Q: Why?\nA:", " Because")
  ctx, cont = prompts.context_and_continuation(
    "Why?", "Because", style="chat", chat_template=lambda q: f"<u>{q}</u>"
  )
  assert (ctx, cont) == ("<u>Why?</u>", "Because")
  with pytest.raises(ValueError, match="chat_template"):
    prompts.context_and_continuation("Why?", "x", style="chat")
  with pytest.raises(ValueError, match="style must be"):
    prompts.context_and_continuation("Why?", "x", style="json")


def test_c15_mc2_stable(cases):
  inp, exp = cases["C15"]["input"], cases["C15"]["expected"]

  def arrays(t, f):
    ll = np.array([t + f])
    true = np.array([[True] * len(t) + [False] * len(f)])
    return ll, true, np.ones_like(true)

  ll, true, valid = arrays(
    inp["true_answer_loglik"], inp["false_answer_loglik"]
  )
  np.testing.assert_allclose(
    metrics.mc2(ll, true, valid), [exp["mc2"]], atol=1e-6
  )
  np.testing.assert_allclose(metrics.mc1(ll, true, valid), [exp["mc1"]])
  sc = inp["shifted_control"]
  ll2, *_ = arrays(sc["true"], sc["false"])
  np.testing.assert_allclose(
    metrics.mc2(ll2, true, valid), [exp["shifted_control_mc2"]], atol=1e-6
  )
  with np.errstate(invalid="ignore"):
    naive = np.exp(ll[0, :2]).sum() / np.exp(ll[0]).sum()
  assert np.isnan(naive)  # what the stable form avoids
  # The differentiable loss agrees in float32 to float32 precision.
  np.testing.assert_allclose(
    np.exp(-obj.mc_contrastive_loss(jnp.asarray(ll), true, valid)),
    [exp["mc2"]],
    atol=1e-5,
  )


def test_sequence_objectives_closed_form():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((2, 5, 7)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 7, (2, 5)))
  mask = jnp.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], bool)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  want = [
    sum(logp[b, t - 1, tokens[b, t]] for t in range(5) if mask[b, t])
    for b in range(2)
  ]
  np.testing.assert_allclose(
    obj.answer_loglik(logits, tokens, mask), want, rtol=1e-5
  )
  ent = -(np.exp(logp) * logp).sum(-1)
  want_e = [
    np.mean([ent[b, t - 1] for t in range(5) if mask[b, t]]) for b in range(2)
  ]
  np.testing.assert_allclose(
    obj.answer_entropy(logits, mask), want_e, rtol=1e-5
  )


def test_question_objectives_and_metrics():
  ll = jnp.array([[-1.0, -2.0, -0.5, -3.0], [-1.0, -5.0, -2.0, 0.0]])
  true = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
  valid = jnp.array([[1, 1, 1, 1], [1, 0, 1, 0]], bool)
  p0 = np.exp([-1, -2, -0.5, -3]) / np.exp([-1, -2, -0.5, -3]).sum()
  np.testing.assert_allclose(
    obj.mc_contrastive_loss(ll, true, valid)[0],
    -np.log(p0[:2].sum()),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    metrics.mc2(ll, true, valid)[0], p0[:2].sum(), rtol=1e-6
  )
  # MC1 ignores other true answers; padding (index 3 of row 2) is ignored.
  np.testing.assert_allclose(metrics.mc1(ll, true, valid), [0.0, 1.0])
  p1 = np.exp([-1, -2.0]) / np.exp([-1, -2.0]).sum()
  np.testing.assert_allclose(
    obj.choice_entropy(ll, valid)[1], -(p1 * np.log(p1)).sum(), rtol=1e-6
  )
  np.testing.assert_allclose(
    metrics.choice_entropy(ll, valid), obj.choice_entropy(ll, valid), rtol=1e-5
  )
  summary = metrics.summarize(ll, true, valid)
  assert summary["mc1"] == 0.5 and summary["n_questions"] == 2
  q = np.exp([-1, -0.5, -3]) / np.exp([-1, -0.5, -3]).sum()
  np.testing.assert_allclose(
    metrics.brier(ll, true, valid)[0],
    (q[0] - 1) ** 2 + q[1] ** 2 + q[2] ** 2,
    rtol=1e-6,
  )
  np.testing.assert_allclose(obj.best_answer_nll(ll), [1.0, 1.0])
  np.testing.assert_allclose(
    obj.best_answer_nll(ll, jnp.full((2, 4), 2)), [0.5, 0.5]
  )


def test_expected_calibration_error():
  conf = jnp.array([0.95, 0.95, 0.55, 0.15])
  correct = jnp.array([1, 0, 1, 0])
  # Bins: (0.9,1] holds two with acc 0.5 (gap 0.45); (0.5,0.6] one with
  # acc 1 (gap 0.45); (0.1,0.2] one with acc 0 (gap 0.15).
  want = (2 * 0.45 + 0.45 + 0.15) / 4
  np.testing.assert_allclose(
    metrics.expected_calibration_error(conf, correct), want, rtol=1e-6
  )
  np.testing.assert_allclose(
    metrics.expected_calibration_error(
      jnp.array([0.0, 1.0]), jnp.array([0, 1])
    ),
    0.0,
    atol=1e-7,
  )


def test_load_truthfulqa(truthfulqa_csv):
  items = data.load_truthfulqa(truthfulqa_csv)
  assert len(items) == 817
  first = items[0]
  assert first.best == "The watermelon seeds pass through your digestive system"
  assert first.correct.count(first.best) == 1
  assert "You grow watermelons in your stomach" in first.incorrect
  assert all(not set(i.correct) & set(i.incorrect) for i in items)
  s1 = data.split(items, seed=3)
  s2 = data.split(items, seed=3)
  assert [i.question for i in s1.test] == [i.question for i in s2.test]
  assert len(s1.train) + len(s1.validation) + len(s1.test) == 817
  qs = [{i.question for i in p} for p in (s1.train, s1.validation, s1.test)]
  assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])


def test_truthfulqa_errors(tmp_path):
  bad = tmp_path / "tqa.csv"
  bad.write_text("Question,Best Answer\nq,a\n")
  with pytest.raises(data.DataError, match=r"tqa.csv: missing column"):
    data.load_truthfulqa(bad)
  with pytest.raises(data.DataError, match="not found"):
    data.load_truthfulqa(tmp_path / "nope.csv")
  rows = (
    "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,"
    "Source\nA,B,Why?,Yes,Yes,,src\n"
  )
  bad.write_text(rows)
  with pytest.raises(data.DataError, match=r"tqa.csv:2: field 'incorrect'"):
    data.load_truthfulqa(bad)


def test_load_mc_jsonl_and_csv(tmp_path):
  path = tmp_path / "mine.jsonl"
  recs = [
    {"question": "2+2?", "correct": ["4"], "incorrect": ["5", "22"]},
    {"question": "Sky?", "correct": "blue; azure", "incorrect": "green"},
  ]
  path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
  items = data.load_mc(path)
  assert items[1].correct == ("blue", "azure") and items[0].best == "4"
  csvp = tmp_path / "mine.csv"
  csvp.write_text("question,correct,incorrect\n2+2?,4,5; 22\n")
  assert data.load_mc(csvp)[0].incorrect == ("5", "22")
  q, a, b = '"question": "q"', '"correct": ["a"]', '"incorrect": ["b"]'
  cases = {
    f"{{{q}, {a}}}": r"mine.jsonl:1: missing field 'incorrect'",
    f'{{{q}, "correct": [], {b}}}': r":1: field 'correct'",
    f'{{"question": "", {a}, {b}}}': r":1: field 'question'",
    f'{{{q}, "correct": [1], {b}}}': "list of strings",
    f'{{{q}, {a}, "incorrect": ["a"]}}': "true and false",
    "not json": r"mine.jsonl:1: invalid JSON",
    "[1, 2]": "JSON object",
  }
  for line, msg in cases.items():
    path.write_text(line + "\n")
    with pytest.raises(data.DataError, match=msg):
      data.load_mc(path)
  path.write_text("")
  with pytest.raises(data.DataError, match="no questions"):
    data.load_mc(path)
  (tmp_path / "x.txt").write_text("x")
  with pytest.raises(data.DataError, match="unsupported suffix"):
    data.load_mc(tmp_path / "x.txt")


def test_capitals_default_set():
  a = data.capitals(seed=0)
  b = data.capitals(seed=0)
  assert len(a) > 150
  assert [i.incorrect for i in a] == [i.incorrect for i in b]
  by_q = {i.question: i for i in a}
  fr = by_q["What is the capital of France?"]
  assert fr.correct == ("Paris",) and len(fr.incorrect) == 3
  assert "Paris" not in fr.incorrect
  assert data.capitals(seed=1)[0].question != a[0].question or (
    data.capitals(seed=1)[0].incorrect != a[0].incorrect
  )


def test_split_errors():
  items = data.capitals(limit=3)
  with pytest.raises(data.DataError, match="validation split is empty"):
    data.split(items, fractions=(0.9, 0.05, 0.05))
  with pytest.raises(data.DataError, match="three numbers"):
    data.split(items, fractions=(1.0, -1.0, 0.0))


def test_hypervolume_2d_closed_forms():
  hv = metrics.hypervolume_2d
  assert hv([[1.0, 2.0]], [4.0, 4.0]) == pytest.approx(6.0)
  # Two boxes 3x1 and 2x3 overlapping in 2x1: 7.
  assert hv([[1.0, 3.0], [2.0, 1.0]], [4.0, 4.0]) == pytest.approx(7.0)
  # Order and dominated points do not matter.
  pts = [[2.0, 1.0], [3.0, 3.5], [1.0, 3.0], [2.5, 2.0]]
  assert hv(pts, [4.0, 4.0]) == pytest.approx(7.0)
  # Points that do not beat the reference in both coordinates add nothing.
  assert hv([[5.0, 0.0], [0.0, 4.0]], [4.0, 4.0]) == 0.0
  assert hv(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


def test_hypervolume_2d_matches_a_grid_count():
  rng = np.random.default_rng(0)
  pts = rng.uniform(0, 1, (6, 2))
  n = 400
  g = (np.arange(n) + 0.5) / n
  x, y = np.meshgrid(g, g, indexing="ij")
  covered = np.zeros_like(x, bool)
  for p0, p1 in pts:
    covered |= (x >= p0) & (y >= p1)
  want = covered.mean()
  assert metrics.hypervolume_2d(pts, [1.0, 1.0]) == pytest.approx(
    want, abs=5e-3
  )


def test_hypervolume_2d_errors():
  with pytest.raises(ValueError, match="reference must have shape"):
    metrics.hypervolume_2d([[0.0, 0.0]], [1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="finite"):
    metrics.hypervolume_2d([[np.nan, 0.0]], [1.0, 1.0])
