"""A Llama-family decoder as pure functions over a weights pytree.

The weights are a plain nested dict (the frozen model) and the trainable prompt
parameters are a separate pytree ``{"w": [n_soft, d], "h": [n_h, d]}``, so a
function ``f(prompt, weights, batch)`` built on :func:`forward` can be
differentiated with ``jax.jacrev`` with respect to ``prompt`` alone while the
weights stay ordinary (traced) arguments of ``jax.jit``.

Weights layout (``L`` layers stacked on the leading axis, matrices stored
``[in, out]`` so a projection is ``x @ W``)::

  {
    "embed": [V, d],
    "layers": {
      "attn_norm": [L, d], "wq": [L, d, H*D], "wk": [L, d, G*D],
      "wv": [L, d, G*D], "wo": [L, H*D, d], "mlp_norm": [L, d],
      "w_gate": [L, d, F], "w_up": [L, d, F], "w_down": [L, F, d],
    },
    "final_norm": [d],
    "lm_head": [V, d],   # only for untied checkpoints
  }

Prompt insertion and logits positions
-------------------------------------
``w`` (``[n, d]``) is inserted into every sequence right after its first real
token when that token is the BOS token, else right before its first real token
(with left padding, between the pads and the text). Positions (for the rotary
embeddings) count real tokens and soft vectors, so padding on either side does
not move them, and the attention mask is extended with ones for the soft
vectors.

:func:`forward` returns logits for the original token positions only,
``[B, T, V]``, aligned so that ``logits[:, i]`` predicts ``tokens[:, i + 1]``
exactly as for the plain model: ``logits[:, i]`` is read at the extended
position just before token ``i + 1``. For the token right before the insertion
point (the BOS) that is the last soft vector. The logits of the other soft
vectors are dropped.

``h`` (``[n_h, d]``) is added to the residual stream after the decoder layers
listed in the static ``h_layers`` (0-based, ``len(h_layers) == n_h``), at every
position (soft vectors included) or, with ``h_mask`` (``[B, T]`` over the input
tokens), only where the mask is nonzero, scaled by it; soft vectors then get no
``h``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.rope import apply_rope, rope_tables

Weights = dict[str, Any]
"""The frozen model: a nested dict of arrays (layout in the module doc)."""
Prompt = Mapping[str, jax.Array]
"""Prompt parameters ``{"w": [n_soft, d], "h": [n_h, d]}`` (either optional)."""

LAYER_KEYS = (
  "attn_norm",
  "wq",
  "wk",
  "wv",
  "wo",
  "mlp_norm",
  "w_gate",
  "w_up",
  "w_down",
)

# Finite, so a fully masked row (a left pad) gives a uniform softmax, not NaN.
_MASKED_SCORE = -1e30


def compute_dtype(weights: Weights) -> jnp.dtype:
  """The activation dtype of a model: the dtype of its token embedding."""
  return jnp.dtype(weights["embed"].dtype)


def weight_shapes(config: LlamaConfig) -> dict[str, Any]:
  """The shape of every weight for ``config`` (untied head included if so).

  Returns:
    A dict with the structure of the weights pytree holding shape tuples.
  """
  L, d, V, F = config.n_layers, config.d_model, config.vocab_size, config.d_ff
  q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
  shapes = {
    "embed": (V, d),
    "layers": {
      "attn_norm": (L, d),
      "wq": (L, d, q),
      "wk": (L, d, kv),
      "wv": (L, d, kv),
      "wo": (L, q, d),
      "mlp_norm": (L, d),
      "w_gate": (L, d, F),
      "w_up": (L, d, F),
      "w_down": (L, F, d),
    },
    "final_norm": (d,),
  }
  if not config.tie_embeddings:
    shapes["lm_head"] = (V, d)
  return shapes


def init_weights(
  config: LlamaConfig, key: jax.Array, dtype: DTypeLike = jnp.float32
) -> Weights:
  """Random weights for ``config`` (for tests and benchmarks).

  Matrices are normal with standard deviation ``1 / sqrt(fan_in)``, the
  embedding standard normal, norm scales ``1 + 0.1 * normal``.

  Args:
    config: the architecture.
    key: a PRNG key.
    dtype: the parameter dtype.

  Returns:
    A weights pytree with the layout of the module docstring.
  """
  return _init_weights(config, key, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_weights(config, key, dtype):
  shapes = weight_shapes(config)
  flat, treedef = jax.tree_util.tree_flatten_with_path(
    shapes, is_leaf=lambda s: isinstance(s, tuple)
  )
  keys = jax.random.split(key, len(flat))

  def one(path, shape, k):
    name = jax.tree_util.keystr(path)
    noise = jax.random.normal(k, shape, jnp.float32)
    if "norm" in name:
      value = 1.0 + 0.1 * noise
    elif "embed" in name:
      value = noise
    else:
      value = noise / math.sqrt(shape[-2])
    return value.astype(dtype)

  leaves = [one(p, s, k) for (p, s), k in zip(flat, keys, strict=True)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def check_weights(config: LlamaConfig, weights: Weights) -> None:
  """Raises ``ValueError`` naming any weight missing or of the wrong shape."""
  expected = weight_shapes(config)
  if not config.tie_embeddings and "lm_head" not in weights:
    raise ValueError("Untied config but the weights have no 'lm_head'.")
  for name in ("embed", "final_norm", "layers"):
    if name not in weights:
      raise ValueError(f"The weights have no {name!r} entry.")
  pairs = [(k, weights[k], expected[k]) for k in ("embed", "final_norm")]
  if "lm_head" in weights:
    pairs.append(("lm_head", weights["lm_head"], expected["embed"]))
  for key in LAYER_KEYS:
    if key not in weights["layers"]:
      raise ValueError(f"The weights have no 'layers/{key}' entry.")
    shape = expected["layers"][key]
    pairs.append((f"layers/{key}", weights["layers"][key], shape))
  for name, array, shape in pairs:
    if tuple(array.shape) != tuple(shape):
      raise ValueError(
        f"Weight {name!r} has shape {tuple(array.shape)}, but the config "
        f"needs {tuple(shape)}."
      )


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMSNorm: ``scale * x / sqrt(mean(x^2) + eps)`` over the last axis.

  The statistics run in float32 (or wider); the normalised activations are cast
  back to ``x.dtype`` before the scale is applied.

  Args:
    x: ``[..., d]`` activations.
    scale: ``[d]`` learned scale.
    eps: added to the mean square.

  Returns:
    ``[..., d]`` in the promoted dtype of ``x`` and ``scale``.
  """
  acc = jnp.promote_types(x.dtype, jnp.float32)
  x32 = x.astype(acc)
  inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale * (x32 * inv).astype(x.dtype)


def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array
) -> jax.Array:
  """Grouped-query softmax attention.

  Query head ``j`` reads key/value head ``j // (H // G)``.

  Args:
    q: ``[B, S, H, D]`` queries (rotated).
    k: ``[B, K, G, D]`` keys (rotated).
    v: ``[B, K, G, D]`` values.
    allowed: ``[B, S, K]`` boolean, true where query ``s`` may read key ``k``.

  Returns:
    ``[B, S, H, D]`` in the dtype of ``v``; scores and softmax run in float32
    or wider.
  """
  B, S, H, D = q.shape
  G = k.shape[2]
  acc = jnp.promote_types(q.dtype, jnp.float32)
  qg = q.reshape(B, S, G, H // G, D)
  scores = jnp.einsum(
    "bsgrd,bkgd->bgrsk", qg, k, preferred_element_type=acc
  ) / math.sqrt(D)
  scores = jnp.where(allowed[:, None, None], scores, _MASKED_SCORE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bgrsk,bkgd->bsgrd", probs, v)
  return out.reshape(B, S, H, D)


def _qkv(config, lw, x, cos, sin):
  B, S, _ = x.shape
  H, G, D = config.n_heads, config.n_kv_heads, config.head_dim
  q = (x @ lw["wq"]).reshape(B, S, H, D)
  k = (x @ lw["wk"]).reshape(B, S, G, D)
  v = (x @ lw["wv"]).reshape(B, S, G, D)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _mlp(lw, x):
  return (jax.nn.silu(x @ lw["w_gate"]) * (x @ lw["w_up"])) @ lw["w_down"]


def _block(config, lw, x, cos, sin, allowed, kv=None, index=None):
  """One decoder block; with ``kv`` it writes into (and reads) a cache."""
  B, S, _ = x.shape
  hidden = rms_norm(x, lw["attn_norm"], config.rms_eps)
  q, k, v = _qkv(config, lw, hidden, cos, sin)
  if kv is not None:
    k = jax.lax.dynamic_update_slice_in_dim(kv[0], k, index, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(kv[1], v, index, axis=1)
  a = attention(q, k, v, allowed).reshape(B, S, -1) @ lw["wo"]
  x = x + a
  x = x + _mlp(lw, rms_norm(x, lw["mlp_norm"], config.rms_eps))
  return x, (k, v)


class Steering(NamedTuple):
  """``h`` spread over all layers, and where to apply it."""

  per_layer: jax.Array  # [L, d], zero rows for layers without h
  gate: jax.Array  # [B, S], multiplies h at each position


def run_layers(
  config: LlamaConfig,
  layers: Mapping[str, jax.Array],
  x: jax.Array,
  cos: jax.Array,
  sin: jax.Array,
  allowed: jax.Array,
  steering: Steering | None = None,
  cache: tuple[jax.Array, jax.Array] | None = None,
  index: ArrayLike | None = None,
  collect_kv: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
  """All decoder blocks, as one ``lax.scan`` over the stacked layer weights.

  Args:
    config: the architecture.
    layers: the ``"layers"`` entry of the weights (leaves ``[L, ...]``).
    x: ``[B, S, d]`` input of the first block.
    cos: ``[B, S, D // 2]`` rotary table for the ``S`` positions of ``x``.
    sin: ``[B, S, D // 2]``.
    allowed: ``[B, S, K]`` attention permission (``K = S`` without cache).
    steering: optional ``h`` vectors added after each block.
    cache: optional ``(k, v)``, each ``[L, B, K, G, D]``; the new keys and
      values are written at slot ``index`` and attention reads the whole
      cache.
    index: the first cache slot to write (a scalar).
    collect_kv: return the keys and values (always true with a cache).

  Returns:
    ``(x, kv)``: the residual stream ``[B, S, d]`` after the last block, and
    ``None`` or the keys/values of every layer: ``[L, B, S, G, D]`` each
    without a cache, the updated cache ``[L, B, K, G, D]`` with one.
  """
  collect_kv = collect_kv or cache is not None

  def body(x, xs):
    lw, kv, h = xs
    x, kv = _block(config, lw, x, cos, sin, allowed, kv, index)
    if h is not None:
      x = x + h.astype(x.dtype) * steering.gate[..., None].astype(x.dtype)
    return x, (kv if collect_kv else None)

  h = None if steering is None else steering.per_layer
  return jax.lax.scan(body, x, (layers, cache, h))


def output_embedding(weights: Weights) -> jax.Array:
  """The ``[V, d]`` output matrix: ``lm_head`` if present, else ``embed``.

  Tied checkpoints (SmolLM2; GGUF files without ``output.weight``) reuse the
  token embedding, so ``logits = x @ E^T`` (shared case C12).
  """
  return weights["lm_head"] if "lm_head" in weights else weights["embed"]


def unembed(weights: Weights, x: jax.Array) -> jax.Array:
  """Logits ``x @ W_out^T`` for final hidden states ``[..., d]``: ``[..., V]``.

  Returned in float32 (or wider).

  Examples:
    The toy of case C12: a tied 3-token vocabulary.

    >>> import jax.numpy as jnp
    >>> embed = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> unembed({"embed": embed}, jnp.array([2.0, -1.0])).tolist()
    [2.0, -1.0, 1.0]
  """
  w = output_embedding(weights)
  acc = jnp.promote_types(w.dtype, jnp.float32)
  return jnp.einsum("...d,vd->...v", x, w, preferred_element_type=acc)


def insertion_index(
  tokens: ArrayLike,
  attention_mask: ArrayLike | None,
  bos_token_id: int | None,
  after_bos: bool = True,
) -> jax.Array:
  """Where the soft prompt ``w`` starts in each sequence.

  Args:
    tokens: ``[B, T]`` token ids.
    attention_mask: ``[B, T]``, nonzero for real tokens (``None``: all real).
    bos_token_id: the BOS id, or ``None`` when the model has none.
    after_bos: insert after a leading BOS (true) or before it.

  Returns:
    ``[B]`` int32: the index of the first real token, plus one when that token
    is the BOS and ``after_bos``.

  Examples:
    A BOS-led row, and a left-padded one whose text starts with BOS (id 1):

    >>> import jax.numpy as jnp
    >>> tokens = jnp.array([[1, 5, 6], [2, 1, 7]])
    >>> mask = jnp.array([[1, 1, 1], [0, 1, 1]])
    >>> insertion_index(tokens, mask, bos_token_id=1).tolist()
    [1, 2]
  """
  tokens = jnp.asarray(tokens)
  mask = _mask_or_ones(tokens, attention_mask)
  first = jnp.argmax(mask, axis=1).astype(jnp.int32)
  if bos_token_id is None or not after_bos:
    return first
  lead = jnp.take_along_axis(tokens, first[:, None], axis=1)[:, 0]
  return first + (lead == bos_token_id).astype(jnp.int32)


def _mask_or_ones(tokens, attention_mask):
  if attention_mask is None:
    return jnp.ones(jnp.shape(tokens), bool)
  mask = jnp.asarray(attention_mask)
  if mask.shape != jnp.shape(tokens):
    raise ValueError(
      f"attention_mask has shape {mask.shape}, but tokens have shape "
      f"{jnp.shape(tokens)}."
    )
  return mask.astype(bool)


def split_prompt(
  config: LlamaConfig, prompt: Prompt | None, h_layers: Sequence[int]
) -> tuple[jax.Array | None, jax.Array | None]:
  """Validates a prompt pytree and returns ``(w, h)`` (each maybe ``None``).

  Raises:
    ValueError: for unknown keys, wrong shapes, or ``h`` rows that do not
      match ``h_layers``.
  """
  h_layers = tuple(h_layers)
  if prompt is None:
    if h_layers:
      raise ValueError("h_layers is given but there is no prompt with 'h'.")
    return None, None
  unknown = sorted(set(prompt) - {"w", "h"})
  if unknown:
    raise ValueError(
      f"Unknown prompt entries {unknown}; a prompt has 'w' and/or 'h'."
    )
  w, h = prompt.get("w"), prompt.get("h")
  d = config.d_model
  if w is not None and (w.ndim != 2 or w.shape[1] != d):
    raise ValueError(f"prompt['w'] must be [n_soft, {d}], got {w.shape}.")
  if h is None:
    if h_layers:
      raise ValueError("h_layers is given but the prompt has no 'h'.")
    return w, None
  if h.ndim != 2 or h.shape != (len(h_layers), d):
    raise ValueError(
      f"prompt['h'] must be [len(h_layers), d] = {(len(h_layers), d)} for "
      f"h_layers={h_layers}, got {h.shape}."
    )
  check_layers(config, h_layers)
  return w, h


def check_layers(config: LlamaConfig, layers: Sequence[int]) -> tuple[int, ...]:
  """Validates 0-based layer indices (unique, in range) and returns them."""
  layers = tuple(int(i) for i in layers)
  bad = [i for i in layers if not 0 <= i < config.n_layers]
  if bad:
    raise ValueError(
      f"h layer indices must lie in [0, {config.n_layers}), got {bad}."
    )
  if len(set(layers)) != len(layers):
    raise ValueError(f"h layer indices must be unique, got {layers}.")
  return layers


class Sequences(NamedTuple):
  """The decoder's input after soft-prompt insertion."""

  x: jax.Array  # [B, S, d] embeddings, soft vectors in place
  mask: jax.Array  # [B, S] bool, real tokens and soft vectors
  positions: jax.Array  # [B, S] int32 rotary positions
  out_index: jax.Array | None  # [B, T] extended index of logits, or None
  steering: Steering | None


def prepare_inputs(
  config: LlamaConfig,
  weights: Weights,
  tokens: ArrayLike,
  *,
  attention_mask: ArrayLike | None = None,
  prompt: Prompt | None = None,
  h_layers: Sequence[int] = (),
  h_mask: ArrayLike | None = None,
  insert_after_bos: bool = True,
) -> Sequences:
  """Embeds tokens, inserts ``w``, and builds mask, positions and steering.

  Arguments as in :func:`forward`.

  Returns:
    A :class:`Sequences` with ``S = T + n_soft``.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}.")
  B, T = tokens.shape
  mask = _mask_or_ones(tokens, attention_mask)
  w, h = split_prompt(config, prompt, h_layers)
  x = jnp.take(weights["embed"], tokens, axis=0)
  gate = None
  if h is not None:
    gate = jnp.ones((B, T), x.dtype) if h_mask is None else jnp.asarray(h_mask)
    if gate.shape != (B, T):
      raise ValueError(f"h_mask must be [B, T] = {(B, T)}, got {gate.shape}.")
  n = 0 if w is None else w.shape[0]
  out_index = None
  if n:
    start = insertion_index(
      tokens, mask, config.bos_token_id, insert_after_bos
    )[:, None]
    j = jnp.arange(T + n)[None, :]
    rel = j - start
    soft = (rel >= 0) & (rel < n)
    src = jnp.clip(jnp.where(j < start, j, j - n), 0, T - 1)
    w_rows = jnp.take(w.astype(x.dtype), jnp.clip(rel, 0, n - 1), axis=0)
    tok_rows = jnp.take_along_axis(x, src[..., None], axis=1)
    x = jnp.where(soft[..., None], w_rows, tok_rows)
    mask = soft | jnp.take_along_axis(mask, src, axis=1)
    if gate is not None:
      on_soft = 1 if h_mask is None else 0
      gate = jnp.where(soft, on_soft, jnp.take_along_axis(gate, src, axis=1))
    nxt = jnp.arange(1, T + 1)[None, :]
    out_index = jnp.where(nxt < start, nxt, nxt + n) - 1
  positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
  steering = None
  if h is not None:
    L, d = config.n_layers, config.d_model
    rows = jnp.asarray(check_layers(config, h_layers), jnp.int32)
    per_layer = jnp.zeros((L, d), h.dtype).at[rows].add(h)
    steering = Steering(per_layer, gate)
  return Sequences(x, mask, positions, out_index, steering)


def causal_permission(mask: jax.Array) -> jax.Array:
  """``[B, S, S]``: query ``s`` may read key ``k <= s`` when ``k`` is real."""
  S = mask.shape[1]
  causal = jnp.tril(jnp.ones((S, S), bool))
  return causal[None] & mask[:, None, :]


def forward(
  config: LlamaConfig,
  weights: Weights,
  tokens: ArrayLike,
  *,
  attention_mask: ArrayLike | None = None,
  prompt: Prompt | None = None,
  h_layers: Sequence[int] = (),
  h_mask: ArrayLike | None = None,
  insert_after_bos: bool = True,
) -> jax.Array:
  """Next-token logits of a Llama-family decoder with prompt parameters.

  Pure in all array arguments: jit it with ``config`` and ``h_layers``
  static, and differentiate with respect to ``prompt`` (see the module
  docstring for insertion and positions).

  Args:
    config: the architecture (static).
    weights: the frozen model (layout in the module docstring).
    tokens: ``[B, T]`` int token ids.
    attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding (left or
      right); ``None`` means no padding.
    prompt: optional ``{"w": [n_soft, d], "h": [len(h_layers), d]}``; either
      entry may be left out. ``w`` of length 0 and zero ``h`` give exactly the
      plain model's logits (compared within the same mode: both jitted, or
      both eager). Cast to the model dtype inside.
    h_layers: 0-based layers after which ``h`` rows are added (static).
    h_mask: optional ``[B, T]`` weights over input positions (e.g. 1 on
      answer tokens); ``None`` applies ``h`` everywhere.
    insert_after_bos: put ``w`` after a leading BOS token (default) or before
      the first token.

  Returns:
    ``[B, T, V]`` float32 logits at the original token positions:
    ``logits[:, i]`` predicts ``tokens[:, i + 1]``. Logits at padding
    positions are meaningless.
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
  cos, sin = rope_tables(
    seq.positions, config.head_dim, config.rope_theta, seq.x.dtype
  )
  allowed = causal_permission(seq.mask)
  x, _ = run_layers(
    config, weights["layers"], seq.x, cos, sin, allowed, seq.steering
  )
  if seq.out_index is not None:
    x = jnp.take_along_axis(x, seq.out_index[..., None], axis=1)
  x = rms_norm(x, weights["final_norm"], config.rms_eps)
  return unembed(weights, x)
