"""Reading Llama-family checkpoints from GGUF files (llama.cpp's format).

GGUF lists tensor dimensions fastest-first: ``token_embd.weight`` of SmolLM2
is listed as ``[576, 49152]`` and is the ``(49152, 576)`` (vocab, hidden)
matrix in row-major order. ``gguf.GGUFReader`` already reverses the dims, and
``gguf.quants.dequantize`` turns quantised blocks (Q4_1, Q8_0, K-quants, ...)
into float32 arrays of that row-major shape, ``[out, in]`` for projections.

llama.cpp's converter reorders the rows of the q and k projections of each
head from the "rotate half" layout of Hugging Face checkpoints to the
interleaved layout its rotary kernel expects. :func:`unpermute_rows` undoes
that, so the model here uses one rotary convention for every source.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from typing import Any

import numpy as np

from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.errors import ModelLoadError
from j6jax._src.models.tokenizer import Tokenizer

SUPPORTED_ARCHITECTURES = ("llama",)

_LAYER_TENSORS = {
  "attn_norm": "attn_norm",
  "attn_q": "wq",
  "attn_k": "wk",
  "attn_v": "wv",
  "attn_output": "wo",
  "ffn_norm": "mlp_norm",
  "ffn_gate": "w_gate",
  "ffn_up": "w_up",
  "ffn_down": "w_down",
}
_TOP_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row reordering.

  Within each head of width ``D``, llama.cpp stores the row for pair ``i``,
  half ``c`` (``c = 0`` first half, ``1`` second half of the rotate-half
  layout) at row ``2 i + c``. This moves it back to row ``c * D / 2 + i``.

  Args:
    w: ``[n_heads * D, d_in]`` projection as stored in the GGUF file.
    n_heads: heads of this projection (query heads for q, key/value heads
      for k).

  Returns:
    ``[n_heads * D, d_in]`` in the rotate-half layout.
  """
  rows, cols = w.shape
  half = rows // n_heads // 2
  return w.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _open(path: str):
  import gguf

  if not os.path.exists(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path}: is not a file.")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise ModelLoadError(
      f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF'); "
      f"supported weight files are .gguf and Hugging Face directories with "
      f"config.json and *.safetensors."
    )
  try:
    reader = gguf.GGUFReader(path, "r")
  except Exception as e:  # the reader raises assorted errors on bad bytes
    raise ModelLoadError(
      f"{path}: cannot parse the GGUF file ({size} bytes): "
      f"{type(e).__name__}: {e}. The file is truncated or corrupt."
    ) from e
  for t in reader.tensors:
    end = t.data_offset + t.n_bytes
    if end > size or t.data.nbytes != t.n_bytes:
      raise ModelLoadError(
        f"{path}: truncated: tensor {t.name!r} needs bytes up to {end}, but "
        f"the file has {size}."
      )
  return reader


def _metadata(reader, path: str) -> dict[str, Any]:
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    try:
      out[key] = field.contents()
    except Exception as e:
      raise ModelLoadError(
        f"{path}: cannot read metadata key {key!r}: {e}."
      ) from e
  return out


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
  """All key-values of a GGUF file as Python values (lists for arrays)."""
  path = os.fspath(path)
  return _metadata(_open(path), path)


def config_from_gguf(metadata: dict[str, Any], path: str) -> LlamaConfig:
  """A :class:`LlamaConfig` from GGUF key-values (``{arch}.*``, ids).

  Raises:
    ModelLoadError: for a non-Llama architecture, a missing key, or a
      feature this model does not implement (rope scaling, partial rotary,
      mixture of experts).
  """
  arch = metadata.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ModelLoadError(
      f"{path}: architecture {arch!r} is not supported; only Llama-family "
      f"decoders ({', '.join(SUPPORTED_ARCHITECTURES)}) can be loaded."
    )

  def get(key, default=None, required=False):
    full = f"{arch}.{key}"
    if full not in metadata:
      if required:
        raise ModelLoadError(f"{path}: the metadata has no {full!r}.")
      return default
    value = metadata[full]
    if isinstance(value, list):
      raise ModelLoadError(
        f"{path}: per-layer values for {full!r} are not supported."
      )
    return value

  d = int(get("embedding_length", required=True))
  n_heads = int(get("attention.head_count", required=True))
  head_dim = int(get("attention.key_length", d // n_heads))
  if int(get("attention.value_length", head_dim)) != head_dim:
    raise ModelLoadError(f"{path}: key and value head widths differ.")
  rope_dim = int(get("rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise ModelLoadError(
      f"{path}: partial rotary embeddings (rope.dimension_count={rope_dim}, "
      f"head width {head_dim}) are not supported."
    )
  scaling = get("rope.scaling.type")
  if scaling not in (None, "none"):
    raise ModelLoadError(f"{path}: rope scaling {scaling!r} is not supported.")
  if int(get("expert_count", 0) or 0) > 0:
    raise ModelLoadError(f"{path}: mixture-of-experts is not supported.")
  tokens = metadata.get("tokenizer.ggml.tokens")
  vocab = get("vocab_size", None if tokens is None else len(tokens))
  if vocab is None:
    raise ModelLoadError(f"{path}: cannot tell the vocabulary size.")

  def token_id(key):
    value = metadata.get(f"tokenizer.ggml.{key}")
    return None if value is None else int(value)

  eos = token_id("eos_token_id")
  try:
    return LlamaConfig(
      vocab_size=int(vocab),
      d_model=d,
      n_layers=int(get("block_count", required=True)),
      n_heads=n_heads,
      n_kv_heads=int(get("attention.head_count_kv", n_heads)),
      head_dim=head_dim,
      d_ff=int(get("feed_forward_length", required=True)),
      rope_theta=float(get("rope.freq_base", 10000.0)),
      rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      tie_embeddings=True,
      max_positions=int(get("context_length", 2048)),
      bos_token_id=token_id("bos_token_id"),
      eos_token_ids=() if eos is None else (eos,),
      pad_token_id=token_id("padding_token_id"),
    )
  except ValueError as e:
    raise ModelLoadError(f"{path}: invalid model dimensions: {e}") from e


def _dequantize(tensor, path: str) -> np.ndarray:
  import gguf

  try:
    out = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise ModelLoadError(
      f"{path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, "
      "which cannot be dequantised."
    ) from e
  expected = tuple(int(i) for i in reversed(tensor.shape.tolist()))
  out = np.asarray(out, np.float32)
  if out.shape != expected:
    out = out.reshape(expected)
  return out


def read_gguf(
  path: str | os.PathLike, with_tokenizer: bool = True
) -> tuple[LlamaConfig, dict[str, Any], Tokenizer | None]:
  """Reads config, float32 weights and tokenizer from a GGUF file.

  Args:
    path: the ``.gguf`` file.
    with_tokenizer: also build the tokenizer from the metadata. A vocabulary
      that cannot be built (not byte-level BPE) gives ``None`` and a warning.

  Returns:
    ``(config, weights, tokenizer)``; ``weights`` holds numpy float32 arrays
    in the layout of :mod:`j6jax._src.models.llama` (no ``lm_head`` when the
    file has no ``output.weight``: tied embeddings).

  Raises:
    FileNotFoundError: if the file does not exist.
    ModelLoadError: for a file that is not GGUF, is truncated, misses a
      tensor, has a wrong shape or an unsupported type, or describes a
      non-Llama model.
  """
  path = os.fspath(path)
  reader = _open(path)
  metadata = _metadata(reader, path)
  config = config_from_gguf(metadata, path)
  by_name = {t.name: t for t in reader.tensors}
  layers = {}
  for name in by_name:
    match = _LAYER_NAME.match(name)
    if name in _TOP_TENSORS:
      continue
    if name == "rope_freqs.weight":
      raise ModelLoadError(
        f"{path}: has 'rope_freqs.weight' (Llama 3.1 style rope frequency "
        "scaling), which is not supported."
      )
    if match is None or match.group(2) not in _LAYER_TENSORS:
      raise ModelLoadError(
        f"{path}: unexpected tensor {name!r} (biases, extra norms or other "
        "architectures are not supported)."
      )
    if int(match.group(1)) >= config.n_layers:
      raise ModelLoadError(
        f"{path}: tensor {name!r} is beyond block_count={config.n_layers}."
      )

  H, G, D = config.n_heads, config.n_kv_heads, config.head_dim
  d, F, V = config.d_model, config.d_ff, config.vocab_size
  shapes = {
    "attn_norm": (d,),
    "attn_q": (H * D, d),
    "attn_k": (G * D, d),
    "attn_v": (G * D, d),
    "attn_output": (d, H * D),
    "ffn_norm": (d,),
    "ffn_gate": (F, d),
    "ffn_up": (F, d),
    "ffn_down": (d, F),
  }

  def load(name, shape):
    if name not in by_name:
      raise ModelLoadError(f"{path}: missing tensor {name!r}.")
    array = _dequantize(by_name[name], path)
    if array.shape != shape:
      raise ModelLoadError(
        f"{path}: tensor {name!r} has shape {array.shape} (GGUF dims "
        f"{by_name[name].shape.tolist()}), expected {shape} for this config."
      )
    return array

  per_layer = {key: [] for key in _LAYER_TENSORS.values()}
  for i in range(config.n_layers):
    for short, key in _LAYER_TENSORS.items():
      array = load(f"blk.{i}.{short}.weight", shapes[short])
      if short == "attn_q":
        array = unpermute_rows(array, H)
      elif short == "attn_k":
        array = unpermute_rows(array, G)
      per_layer[key].append(array if array.ndim == 1 else array.T)
  for key, arrays in per_layer.items():
    layers[key] = np.stack(arrays)
    arrays.clear()
  weights = {
    "embed": load("token_embd.weight", (V, d)),
    "layers": layers,
    "final_norm": load("output_norm.weight", (d,)),
  }
  if "output.weight" in by_name:
    weights["lm_head"] = load("output.weight", (V, d))
    config = dataclasses.replace(config, tie_embeddings=False)

  tokenizer = None
  if with_tokenizer:
    try:
      tokenizer = Tokenizer.from_gguf_metadata(metadata, source=path)
    except (NotImplementedError, ValueError) as e:
      warnings.warn(f"No tokenizer: {e}", stacklevel=2)
  return config, weights, tokenizer
