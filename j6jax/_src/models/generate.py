"""Greedy and sampled generation with a key/value cache.

The prompt (with the soft prompt ``w`` and the steering ``h`` in place) is run
once to fill the cache ("prefill"); each new token then costs one pass over a
single position ("decode"). New tokens are written at one shared cache slot
per step for the whole batch; their rotary positions continue each sequence's
own count of real tokens, so left- and right-padded batches both work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.llama import (
  Prompt,
  Steering,
  Weights,
  causal_permission,
  prepare_inputs,
  rms_norm,
  run_layers,
  unembed,
)
from j6jax._src.models.rope import rope_tables


class KVCache(NamedTuple):
  """Keys and values of every layer for a batch of sequences."""

  k: jax.Array  # [L, B, K, G, D] rotated keys
  v: jax.Array  # [L, B, K, G, D] values
  mask: jax.Array  # [B, K] bool, filled slots that hold real tokens
  positions: jax.Array  # [B] int32, rotary position of the next token
  index: jax.Array  # [] int32, next slot to write


def prefill(
  config: LlamaConfig,
  weights: Weights,
  tokens: ArrayLike,
  *,
  max_len: int,
  attention_mask: ArrayLike | None = None,
  prompt: Prompt | None = None,
  h_layers: Sequence[int] = (),
  h_mask: ArrayLike | None = None,
  insert_after_bos: bool = True,
) -> tuple[jax.Array, KVCache]:
  """Runs the prompt and returns the next-token logits and a filled cache.

  Arguments as in :func:`j6jax.models.forward`, plus:

  Args:
    max_len: ``K``, cache slots; at least ``T + n_soft`` plus the number of
      tokens to generate.

  Returns:
    ``(logits, cache)``: ``[B, V]`` float32 logits read at each sequence's
    last real token, and a :class:`KVCache` with ``T + n_soft`` filled slots.
  """
  seq = prepare_inputs(
    config,
    weights,
    tokens,
    attention_mask=attention_mask,
    prompt=prompt,
    h_layers=h_layers,
    h_mask=h_mask,
    insert_after_bos=insert_after_bos,
  )
  B, S, _ = seq.x.shape
  if max_len < S:
    raise ValueError(f"max_len={max_len} is shorter than the prompt ({S}).")
  cos, sin = rope_tables(
    seq.positions, config.head_dim, config.rope_theta, seq.x.dtype
  )
  x, (k, v) = run_layers(
    config,
    weights["layers"],
    seq.x,
    cos,
    sin,
    causal_permission(seq.mask),
    seq.steering,
    collect_kv=True,
  )
  last = jnp.max(jnp.where(seq.mask, jnp.arange(S), 0), axis=1)
  x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
  logits = unembed(weights, rms_norm(x, weights["final_norm"], config.rms_eps))
  pad = [(0, 0), (0, 0), (0, max_len - S), (0, 0), (0, 0)]
  cache = KVCache(
    k=jnp.pad(k, pad),
    v=jnp.pad(v, pad),
    mask=jnp.pad(seq.mask, [(0, 0), (0, max_len - S)]),
    positions=jnp.sum(seq.mask, axis=1, dtype=jnp.int32),
    index=jnp.asarray(S, jnp.int32),
  )
  return logits, cache


def decode_step(
  config: LlamaConfig,
  weights: Weights,
  cache: KVCache,
  token: ArrayLike,
  *,
  steering: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
  """Feeds one token per sequence and returns the next logits.

  Args:
    config: the architecture.
    weights: the frozen model.
    cache: the cache from :func:`prefill` or a previous step.
    token: ``[B]`` int token ids.
    steering: optional ``[L, d]`` per-layer ``h`` (zero rows for layers
      without one) added at the new position.

  Returns:
    ``(logits, cache)``: ``[B, V]`` float32 logits and the updated cache.
  """
  token = jnp.asarray(token, jnp.int32)
  B = token.shape[0]
  x = jnp.take(weights["embed"], token, axis=0)[:, None, :]
  mask = cache.mask.at[:, cache.index].set(True)
  positions = cache.positions[:, None]
  cos, sin = rope_tables(positions, config.head_dim, config.rope_theta, x.dtype)
  steer = None
  if steering is not None:
    steer = Steering(steering, jnp.ones((B, 1), x.dtype))
  x, (k, v) = run_layers(
    config,
    weights["layers"],
    x,
    cos,
    sin,
    mask[:, None, :],
    steer,
    cache=(cache.k, cache.v),
    index=cache.index,
  )
  x = rms_norm(x[:, 0], weights["final_norm"], config.rms_eps)
  new = KVCache(k, v, mask, cache.positions + 1, cache.index + 1)
  return unembed(weights, x), new


def select_token(
  logits: jax.Array,
  key: jax.Array | None,
  *,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
) -> jax.Array:
  """Picks one token per row: argmax without a key, else a sample.

  Args:
    logits: ``[B, V]``.
    key: ``None`` for greedy decoding, else a PRNG key.
    temperature: divides the logits before sampling (> 0).
    top_k: keep only the ``top_k`` largest logits (static).
    top_p: keep the smallest set of tokens whose probability reaches
      ``top_p`` (nucleus sampling).

  Returns:
    ``[B]`` int32 token ids.
  """
  if key is None:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = jnp.where(before < top_p, ordered, jnp.inf)
    cutoff = jnp.min(keep, axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=(
    "config",
    "h_layers",
    "insert_after_bos",
    "steer_generated",
    "max_new_tokens",
    "top_k",
    "eos_token_ids",
    "pad_token_id",
    "use_top_p",
  ),
)
def _generate(
  config,
  weights,
  tokens,
  attention_mask,
  prompt,
  h_mask,
  key,
  temperature,
  top_p,
  *,
  h_layers,
  insert_after_bos,
  steer_generated,
  max_new_tokens,
  top_k,
  eos_token_ids,
  pad_token_id,
  use_top_p,
):
  n_soft = 0 if prompt is None or "w" not in prompt else prompt["w"].shape[0]
  max_len = tokens.shape[1] + n_soft + max_new_tokens
  logits, cache = prefill(
    config,
    weights,
    tokens,
    max_len=max_len,
    attention_mask=attention_mask,
    prompt=prompt,
    h_layers=h_layers,
    h_mask=h_mask,
    insert_after_bos=insert_after_bos,
  )
  steering = None
  if steer_generated and prompt is not None and "h" in prompt:
    rows = jnp.asarray(h_layers, jnp.int32)
    h = prompt["h"]
    zeros = jnp.zeros((config.n_layers, config.d_model), h.dtype)
    steering = zeros.at[rows].add(h)
  eos = jnp.asarray(eos_token_ids or (-1,), jnp.int32)
  B = tokens.shape[0]

  def pick(logits, key, done):
    sub = None
    if key is not None:
      key, sub = jax.random.split(key)
    token = select_token(
      logits,
      sub,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p if use_top_p else None,
    )
    token = jnp.where(done, pad_token_id, token)
    return token, key, done | jnp.isin(token, eos)

  first, key, done = pick(logits, key, jnp.zeros((B,), bool))

  def step(carry, _):
    cache, token, key, done = carry
    logits, cache = decode_step(
      config, weights, cache, token, steering=steering
    )
    token, key, done = pick(logits, key, done)
    return (cache, token, key, done), token

  _, rest = jax.lax.scan(
    step, (cache, first, key, done), None, length=max_new_tokens - 1
  )
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
  config: LlamaConfig,
  weights: Weights,
  tokens: ArrayLike,
  *,
  max_new_tokens: int = 20,
  attention_mask: ArrayLike | None = None,
  prompt: Prompt | None = None,
  h_layers: Sequence[int] = (),
  h_mask: ArrayLike | None = None,
  insert_after_bos: bool = True,
  steer_generated: bool = True,
  key: jax.Array | None = None,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  eos_token_ids: Sequence[int] | None = None,
  pad_token_id: int | None = None,
) -> jax.Array:
  """Generates tokens after each prompt, greedily or by sampling.

  Jitted inside (``config``, ``h_layers``, ``max_new_tokens``, ``top_k`` and
  the token ids are static); the weights are ordinary arguments.

  Args:
    config: the architecture.
    weights: the frozen model.
    tokens: ``[B, T]`` prompt ids, padded on either side.
    max_new_tokens: ``N``, tokens to generate (>= 1).
    attention_mask: ``[B, T]``, 1 for real tokens (``None``: no padding).
    prompt: optional prompt parameters ``{"w", "h"}`` as in ``forward``.
    h_layers: layers after which ``h`` is added.
    h_mask: ``[B, T]`` where ``h`` applies inside the prompt.
    insert_after_bos: where ``w`` goes (see ``forward``).
    steer_generated: also add ``h`` at the generated positions.
    key: ``None`` for greedy decoding, else a PRNG key for sampling.
    temperature: sampling temperature (> 0); ignored when greedy.
    top_k: optional top-k filter when sampling.
    top_p: optional nucleus filter when sampling.
    eos_token_ids: ids that finish a sequence (default: the config's); after
      one, the sequence is filled with ``pad_token_id``.
    pad_token_id: filler after the end (default: the config's pad id, else
      the first EOS id, else 0).

  Returns:
    ``[B, N]`` int32 generated ids (the end token included, then padding).
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if key is not None and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  eos = tuple(config.eos_token_ids if eos_token_ids is None else eos_token_ids)
  if pad_token_id is None:
    pad_token_id = config.pad_token_id
  if pad_token_id is None:
    pad_token_id = eos[0] if eos else 0
  tokens = jnp.asarray(tokens, jnp.int32)
  mask = None if attention_mask is None else jnp.asarray(attention_mask)
  return _generate(
    config,
    weights,
    tokens,
    mask,
    None if prompt is None else dict(prompt),
    None if h_mask is None else jnp.asarray(h_mask),
    key,
    jnp.asarray(temperature, jnp.float32),
    jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
    h_layers=tuple(int(i) for i in h_layers),
    insert_after_bos=insert_after_bos,
    steer_generated=steer_generated,
    max_new_tokens=int(max_new_tokens),
    top_k=top_k,
    eos_token_ids=tuple(int(i) for i in eos),
    pad_token_id=int(pad_token_id),
    use_top_p=top_p is not None,
  )
