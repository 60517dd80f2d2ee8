"""Reading Llama-family checkpoints from Hugging Face model directories.

A directory holds ``config.json``, the weights as ``model.safetensors`` (or
shards listed in ``model.safetensors.index.json``) and, usually,
``tokenizer.json``. The tensors are read with ``safetensors``' numpy backend
(bfloat16 through ``ml_dtypes``), so PyTorch is never imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.errors import ModelLoadError
from j6jax._src.models.tokenizer import Tokenizer

_LAYER_TENSORS = {
  "input_layernorm": "attn_norm",
  "self_attn.q_proj": "wq",
  "self_attn.k_proj": "wk",
  "self_attn.v_proj": "wv",
  "self_attn.o_proj": "wo",
  "post_attention_layernorm": "mlp_norm",
  "mlp.gate_proj": "w_gate",
  "mlp.up_proj": "w_up",
  "mlp.down_proj": "w_down",
}


def _ids(value):
  if value is None:
    return ()
  return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def config_from_hf(values: dict[str, Any], path: str) -> LlamaConfig:
  """A :class:`LlamaConfig` from a Hugging Face ``config.json`` dict.

  Raises:
    ModelLoadError: for a model type other than ``llama``, or features this
      model does not implement (biases, rope scaling, other activations).
  """
  kind = values.get("model_type")
  if kind != "llama":
    raise ModelLoadError(
      f"{path}: model_type {kind!r} (architectures "
      f"{values.get('architectures')}) is not supported; only 'llama'."
    )
  for flag in ("attention_bias", "mlp_bias"):
    if values.get(flag):
      raise ModelLoadError(f"{path}: {flag}=true is not supported.")
  act = values.get("hidden_act", "silu")
  if act != "silu":
    raise ModelLoadError(f"{path}: hidden_act {act!r} is not supported.")
  rope = values.get("rope_parameters") or {}
  scaling = values.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", scaling.get("rope_type", "default"))
  if scaling.get("type") not in (None, "default") or rope_type != "default":
    raise ModelLoadError(
      f"{path}: rope scaling {rope_type!r} is not supported."
    )
  theta = rope.get("rope_theta", values.get("rope_theta", 10000.0))
  d, n_heads = int(values["hidden_size"]), int(values["num_attention_heads"])
  pad = values.get("pad_token_id")
  try:
    return LlamaConfig(
      vocab_size=int(values["vocab_size"]),
      d_model=d,
      n_layers=int(values["num_hidden_layers"]),
      n_heads=n_heads,
      n_kv_heads=int(values.get("num_key_value_heads") or n_heads),
      head_dim=int(values.get("head_dim") or d // n_heads),
      d_ff=int(values["intermediate_size"]),
      rope_theta=float(theta),
      rms_eps=float(values.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(values.get("tie_word_embeddings", False)),
      max_positions=int(values.get("max_position_embeddings", 2048)),
      bos_token_id=(_ids(values.get("bos_token_id")) or (None,))[0],
      eos_token_ids=_ids(values.get("eos_token_id")),
      pad_token_id=None if pad is None else int(pad),
    )
  except KeyError as e:
    raise ModelLoadError(f"{path}: config.json has no {e.args[0]!r}.") from e
  except ValueError as e:
    raise ModelLoadError(f"{path}: invalid model dimensions: {e}") from e


def _weight_files(directory: str) -> list[str]:
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(directory, n) for n in names]
  single = os.path.join(directory, "model.safetensors")
  if os.path.isfile(single):
    return [single]
  others = sorted(
    n for n in os.listdir(directory) if n.endswith(".safetensors")
  )
  if others:
    return [os.path.join(directory, n) for n in others]
  found = sorted(os.listdir(directory))
  raise ModelLoadError(
    f"{directory}: no *.safetensors weights (found {found}); PyTorch .bin "
    "checkpoints are not supported."
  )


def _read_tensors(files: list[str]) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError, safe_open

  tensors = {}
  for file in files:
    if not os.path.isfile(file):
      raise FileNotFoundError(f"Weight shard not found: {file}")
    try:
      with safe_open(file, framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
          tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as e:
      raise ModelLoadError(
        f"{file}: cannot read safetensors ({os.path.getsize(file)} bytes): "
        f"{e}. The file is truncated or corrupt."
      ) from e
  return tensors


def read_hf_dir(
  directory: str | os.PathLike,
) -> tuple[LlamaConfig, dict[str, Any], Tokenizer | None]:
  """Reads config, weights and tokenizer from a Hugging Face directory.

  Args:
    directory: holds ``config.json`` and ``*.safetensors`` (and optionally
      ``tokenizer.json``).

  Returns:
    ``(config, weights, tokenizer)``: numpy weights in the checkpoint's dtype
    and the layout of :mod:`j6jax._src.models.llama`; ``tokenizer`` is
    ``None`` without ``tokenizer.json``. A checkpoint without
    ``lm_head.weight``, or with ``tie_word_embeddings``, is tied.

  Raises:
    FileNotFoundError: if the directory or ``config.json`` is missing.
    ModelLoadError: for unreadable, truncated, incomplete or unsupported
      files (the message names the file).
  """
  directory = os.fspath(directory)
  config_path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Model directory not found: {directory}")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"No config.json in {directory}")
  try:
    with open(config_path) as f:
      values = json.load(f)
  except json.JSONDecodeError as e:
    raise ModelLoadError(f"{config_path}: invalid JSON: {e}.") from e
  config = config_from_hf(values, config_path)
  tensors = _read_tensors(_weight_files(directory))

  def take(name):
    if name not in tensors:
      raise ModelLoadError(f"{directory}: missing tensor {name!r}.")
    return tensors.pop(name)

  layers = {key: [] for key in _LAYER_TENSORS.values()}
  for i in range(config.n_layers):
    for short, key in _LAYER_TENSORS.items():
      array = take(f"model.layers.{i}.{short}.weight")
      layers[key].append(array if array.ndim == 1 else array.T)
  weights = {
    "embed": take("model.embed_tokens.weight"),
    "layers": {k: np.stack(v) for k, v in layers.items()},
    "final_norm": take("model.norm.weight"),
  }
  head = tensors.pop("lm_head.weight", None)
  if head is not None and not config.tie_embeddings:
    weights["lm_head"] = head
  elif head is None and not config.tie_embeddings:
    config = dataclasses.replace(config, tie_embeddings=True)
  extra = sorted(n for n in tensors if not n.endswith("rotary_emb.inv_freq"))
  if extra:
    raise ModelLoadError(
      f"{directory}: unexpected tensors {extra[:5]} (not a plain Llama "
      "decoder)."
    )
  tokenizer = None
  if os.path.isfile(os.path.join(directory, "tokenizer.json")):
    tokenizer = Tokenizer.from_hf_dir(directory)
  return config, weights, tokenizer
