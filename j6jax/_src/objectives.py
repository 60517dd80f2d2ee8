"""Objectives and metrics as pure functions of logits, tokens and masks.

Sequence-level functions take ``logits [..., T, V]`` and ``tokens [..., T]``
and return values aligned to *target* positions: the value at position ``t``
is about predicting ``tokens[t]`` from the tokens before it (position 0 has
no prediction and gets 0). An ``answer_mask [..., T]`` marks the answer's
tokens, so sums over it score exactly the continuation.

Question-level functions take ``loglik [Q, A]`` (summed answer
log-likelihoods, answers in :attr:`MCItem.answers` order: best true answer at
index 0, other true answers, then false ones), ``true_mask [Q, A]`` and
``choice_mask [Q, A]`` (valid, non-padding answers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -1e30


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """``[..., T]``: ``log p(tokens[t] | tokens[<t])``, 0 at ``t = 0``."""
  logp = jax.nn.log_softmax(logits[..., :-1, :].astype(jnp.float32), -1)
  picked = jnp.take_along_axis(logp, tokens[..., 1:, None], -1)[..., 0]
  pad = jnp.zeros(picked.shape[:-1] + (1,), picked.dtype)
  return jnp.concatenate([pad, picked], -1)


def next_token_entropy(logits: jax.Array) -> jax.Array:
  """``[..., T]``: entropy (nats) of the distribution predicting token ``t``."""
  logp = jax.nn.log_softmax(logits[..., :-1, :].astype(jnp.float32), -1)
  ent = -jnp.sum(jnp.exp(logp) * logp, -1)
  pad = jnp.zeros(ent.shape[:-1] + (1,), ent.dtype)
  return jnp.concatenate([pad, ent], -1)


def answer_loglik(
  logits: jax.Array, tokens: jax.Array, answer_mask: jax.Array
) -> jax.Array:
  """``[...]``: summed log-likelihood of the answer tokens."""
  lp = token_logprobs(logits, tokens)
  return jnp.sum(jnp.where(answer_mask, lp, 0.0), -1)


def _masked_mean(x: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  n = jnp.sum(mask, axis)
  return jnp.sum(jnp.where(mask, x, 0.0), axis) / jnp.maximum(n, 1)


def answer_entropy(logits: jax.Array, answer_mask: jax.Array) -> jax.Array:
  """``[...]``: mean next-token entropy over the answer positions."""
  return _masked_mean(next_token_entropy(logits), answer_mask)


def best_answer_nll(
  loglik: jax.Array, n_tokens: jax.Array | None = None
) -> jax.Array:
  """``[Q]``: negative log-likelihood of the best answer (index 0).

  With ``n_tokens [Q, A]``, divided by the best answer's token count (nats
  per token), which keeps long and short answers on one scale.
  """
  nll = -loglik[:, 0]
  if n_tokens is not None:
    nll = nll / jnp.maximum(n_tokens[:, 0], 1)
  return nll


def _shifted(loglik: jax.Array, mask: jax.Array) -> jax.Array:
  """``loglik - max`` over the valid answers: exact for nearby values, so the
  sums below keep float32 precision even when every ``loglik`` is ~ -1000."""
  top = jnp.max(jnp.where(mask, loglik, _NEG), -1, keepdims=True)
  return jnp.where(mask, loglik - jax.lax.stop_gradient(top), _NEG)


def mc_contrastive_loss(
  loglik: jax.Array, true_mask: jax.Array, choice_mask: jax.Array
) -> jax.Array:
  """``[Q]``: ``-log`` of the probability mass on true answers among all.

  .. math::

    -\\log \\frac{\\sum_{a \\in T} e^{\\ell_a}}{\\sum_{a} e^{\\ell_a}}

  computed on log-likelihoods shifted by their maximum (no underflow for
  long answers, no loss of precision at large magnitudes).
  """
  z = _shifted(loglik, choice_mask)
  valid_true = true_mask & choice_mask
  lse_all = jax.nn.logsumexp(z, axis=-1)
  lse_true = jax.nn.logsumexp(jnp.where(valid_true, z, _NEG), axis=-1)
  return lse_all - lse_true


def choice_probs(loglik: jax.Array, choice_mask: jax.Array) -> jax.Array:
  """``[Q, A]``: softmax of the answer log-likelihoods over valid answers."""
  z = jnp.where(choice_mask, loglik, _NEG)
  return jnp.where(choice_mask, jax.nn.softmax(z, axis=-1), 0.0)


def choice_entropy(loglik: jax.Array, choice_mask: jax.Array) -> jax.Array:
  """``[Q]``: entropy of the distribution over a question's answers."""
  p = choice_probs(loglik, choice_mask)
  logp = jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  return -jnp.sum(p * logp, -1)
