"""Evaluation metrics for multiple-choice answers, in float64 NumPy.

Inputs follow :mod:`j6jax._src.objectives`: ``loglik [Q, A]`` summed answer
log-likelihoods (best true answer at index 0, other true answers, then false
ones), ``true_mask [Q, A]`` and ``choice_mask [Q, A]``. Metrics run after the
model, on the host, in float64, so they add no rounding of their own.
"""

from __future__ import annotations

import numpy as np


def _arrays(loglik, true_mask, choice_mask):
  ll = np.asarray(loglik, np.float64)
  true = np.asarray(true_mask, bool)
  valid = np.asarray(choice_mask, bool)
  if ll.ndim != 2 or ll.shape != true.shape or ll.shape != valid.shape:
    raise ValueError(
      "loglik, true_mask and choice_mask must all be [Q, A]; got shapes "
      f"{ll.shape}, {true.shape}, {valid.shape}."
    )
  if not valid[:, 0].all() or not true[:, 0].all():
    raise ValueError("Index 0 of every question must be its best answer.")
  return ll, true, valid


def _probs(ll: np.ndarray, mask: np.ndarray) -> np.ndarray:
  z = np.where(mask, ll, -np.inf)
  z = z - z.max(-1, keepdims=True)
  p = np.where(mask, np.exp(z), 0.0)
  return p / p.sum(-1, keepdims=True)


def mc1_mask(true_mask, choice_mask) -> np.ndarray:
  """MC1's choices: the best answer (index 0) and the false answers."""
  true = np.asarray(true_mask, bool)
  first = np.zeros_like(true)
  first[:, 0] = True
  return np.asarray(choice_mask, bool) & (first | ~true)


def mc1(loglik, true_mask, choice_mask) -> np.ndarray:
  """``[Q]``: 1 where the best answer out-scores every false answer.

  MC1 (TruthfulQA): the choices are the best answer and the false answers;
  a tie with a false answer counts as wrong.
  """
  ll, true, valid = _arrays(loglik, true_mask, choice_mask)
  mask = mc1_mask(true, valid)
  mask[:, 0] = False
  others = np.where(mask, ll, -np.inf).max(-1)
  return (ll[:, 0] > others).astype(np.float64)


def mc2(loglik, true_mask, choice_mask) -> np.ndarray:
  """``[Q]``: normalised probability mass on the true answers (TruthfulQA).

  .. math::

    \\mathrm{MC2} = \\frac{\\sum_{a \\in T} e^{\\ell_a - M}}
      {\\sum_{a} e^{\\ell_a - M}}, \\quad M = \\max_a \\ell_a

  with summed (not length-averaged) log-likelihoods. The shift by ``M``
  keeps it finite when every ``exp(l)`` underflows (CASES.md, C15).
  """
  ll, true, valid = _arrays(loglik, true_mask, choice_mask)
  p = _probs(ll, valid)
  return np.where(true & valid, p, 0.0).sum(-1)


def choice_entropy(loglik, choice_mask) -> np.ndarray:
  """``[Q]``: entropy (nats) of the softmax over a question's answers."""
  ll = np.asarray(loglik, np.float64)
  valid = np.asarray(choice_mask, bool)
  p = _probs(ll, valid)
  return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def mc1_confidence(loglik, true_mask, choice_mask) -> np.ndarray:
  """``[Q]``: probability of the top MC1 choice (softmax over MC1 choices)."""
  ll, true, valid = _arrays(loglik, true_mask, choice_mask)
  return _probs(ll, mc1_mask(true, valid)).max(-1)


def brier(loglik, true_mask, choice_mask) -> np.ndarray:
  """``[Q]``: Brier score ``sum_a (p_a - y_a)^2`` over MC1's choices.

  ``p`` is the softmax of the log-likelihoods over MC1's choices and ``y``
  one-hot on the best answer; 0 is perfect, 2 the worst.
  """
  ll, true, valid = _arrays(loglik, true_mask, choice_mask)
  mask = mc1_mask(true, valid)
  p = _probs(ll, mask)
  y = np.zeros_like(p)
  y[:, 0] = 1.0
  return np.where(mask, (p - y) ** 2, 0.0).sum(-1)


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
  """Expected calibration error with ``n_bins`` equal-width bins.

  ``sum_b (n_b / n) |acc_b - conf_b|``; bin ``b`` holds confidences in
  ``((b - 1) / n_bins, b / n_bins]``, the first bin closed at 0.

  Args:
    confidence: ``[Q]`` probability given to the chosen answer.
    correct: ``[Q]`` 1 where the chosen answer is right.
    n_bins: number of bins.
  """
  conf = np.asarray(confidence, np.float64)
  acc = np.asarray(correct, np.float64)
  if conf.shape != acc.shape or conf.ndim != 1:
    raise ValueError(
      f"confidence and correct must be [Q]; got {conf.shape}, {acc.shape}."
    )
  if conf.size == 0:
    return 0.0
  idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
  gap = 0.0
  for b in range(n_bins):
    sel = idx == b
    gap += abs(acc[sel].sum() - conf[sel].sum())
  return float(gap / conf.size)


def summarize(loglik, true_mask, choice_mask, n_bins: int = 10) -> dict:
  """MC1, MC2, choice entropy, ECE and Brier, averaged over questions."""
  c1 = mc1(loglik, true_mask, choice_mask)
  conf = mc1_confidence(loglik, true_mask, choice_mask)
  return {
    "mc1": float(c1.mean()),
    "mc2": float(mc2(loglik, true_mask, choice_mask).mean()),
    "choice_entropy": float(choice_entropy(loglik, choice_mask).mean()),
    "ece": expected_calibration_error(conf, c1, n_bins),
    "brier": float(brier(loglik, true_mask, choice_mask).mean()),
    "n_questions": int(np.asarray(loglik).shape[0]),
  }


def hypervolume_2d(points, reference) -> float:
  """Area dominated by ``points`` ``[n, 2]`` and bounded by ``reference``.

  Both coordinates are minimised (e.g. factuality loss and entropy). A point
  that does not beat the reference in both coordinates adds nothing; the
  union of the boxes ``[p, reference]`` is measured, so dominated points add
  nothing either. One point ``p`` gives ``(r0 - p0) * (r1 - p1)``.
  """
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  ref = np.asarray(reference, np.float64)
  if ref.shape != (2,):
    raise ValueError(f"reference must have shape (2,), got {ref.shape}.")
  if not np.all(np.isfinite(pts)):
    raise ValueError("points must be finite.")
  pts = pts[np.all(pts < ref, axis=1)]
  area, best1 = 0.0, ref[1]
  for p0, p1 in sorted(map(tuple, pts)):
    if p1 < best1:
      area += (ref[0] - p0) * (best1 - p1)
      best1 = p1
  return float(area)
