"""Fixtures for the model tests: tiny random models and fabricated GGUF
files (the real model's fixtures live in ``tests/conftest.py``)."""

from __future__ import annotations

import gguf
import jax
import numpy as np
import pytest

from j6jax import models

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [
  "h e",
  "l l",
  "Ġ t",
  "Ġt he",
  "i n",
  "Ġ a",
  "e r",
  "he ll",
  "hell o",
  "Ġ w",
  "o r",
  "Ġw or",
  "Ġwor l",
  "Ġworl d",
  "1 2",
  "12 3",
  "' s",
  "Ã ©",
]
CHAT_TEMPLATE = (
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' "
  "+ message['content'] + '<|im_end|>\n'}}{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY = models.LlamaConfig(
  vocab_size=len(SPECIAL) + 256 + len(MERGES),
  d_model=64,
  n_layers=3,
  n_heads=4,
  n_kv_heads=2,
  head_dim=16,
  d_ff=128,
  rope_theta=10000.0,
  rms_eps=float(np.float32(1e-5)),  # GGUF stores float32
  tie_embeddings=True,
  max_positions=512,
  bos_token_id=1,
  eos_token_ids=(2,),
  pad_token_id=2,
)


def tiny_vocab():
  """Special tokens, the 256 byte-level symbols, then the merged tokens."""
  symbols = _byte_symbols()
  tokens = SPECIAL + symbols + [m.replace(" ", "") for m in MERGES]
  types = [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))
  return tokens, types


def _byte_symbols():
  from j6jax._src.models.tokenizer import byte_alphabet

  return [byte_alphabet()[b] for b in range(256)]


def hf_weights(config, seed=0, untied=False):
  """Random weights with Hugging Face names and [out, in] matrices."""
  rng = np.random.default_rng(seed)
  d, F, V = config.d_model, config.d_ff, config.vocab_size
  q = config.n_heads * config.head_dim
  kv = config.n_kv_heads * config.head_dim

  def mat(rows, cols):
    return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(
      np.float32
    )

  def norm():
    return (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)

  out = {
    "model.embed_tokens.weight": rng.standard_normal((V, d)).astype(np.float32)
  }
  for i in range(config.n_layers):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = norm()
    out[p + "self_attn.q_proj.weight"] = mat(q, d)
    out[p + "self_attn.k_proj.weight"] = mat(kv, d)
    out[p + "self_attn.v_proj.weight"] = mat(kv, d)
    out[p + "self_attn.o_proj.weight"] = mat(d, q)
    out[p + "post_attention_layernorm.weight"] = norm()
    out[p + "mlp.gate_proj.weight"] = mat(F, d)
    out[p + "mlp.up_proj.weight"] = mat(F, d)
    out[p + "mlp.down_proj.weight"] = mat(d, F)
  out["model.norm.weight"] = norm()
  if untied:
    out["lm_head.weight"] = mat(V, d)
  return out


def to_llama_cpp_rows(w, n_heads):
  """llama.cpp's converter order: rotate-half row (c, i) goes to 2 i + c."""
  rows, cols = w.shape
  half = rows // n_heads // 2
  return w.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


_GGUF_NAMES = {
  "input_layernorm": "attn_norm",
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "post_attention_layernorm": "ffn_norm",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
}


def gguf_tensors(config, weights):
  """HF-named weights to GGUF names, q/k rows reordered as llama.cpp does."""
  out = {
    "token_embd.weight": weights["model.embed_tokens.weight"],
    "output_norm.weight": weights["model.norm.weight"],
  }
  if "lm_head.weight" in weights:
    out["output.weight"] = weights["lm_head.weight"]
  for i in range(config.n_layers):
    for hf, short in _GGUF_NAMES.items():
      w = weights[f"model.layers.{i}.{hf}.weight"]
      if short == "attn_q":
        w = to_llama_cpp_rows(w, config.n_heads)
      elif short == "attn_k":
        w = to_llama_cpp_rows(w, config.n_kv_heads)
      out[f"blk.{i}.{short}.weight"] = w
  return out


def write_gguf(
  path,
  config=TINY,
  weights=None,
  *,
  arch="llama",
  quant=None,
  pre="smollm",
  drop=(),
  extra_tensors=None,
  extra_kv=None,
  add_bos=False,
):
  """Writes a GGUF file the way llama.cpp's converter lays it out.

  Args:
    quant: None for float32, or a GGMLQuantizationType for the 2-D weights
      (norms stay float32).
    drop: tensor names to leave out.
    extra_tensors: name -> array (or (array, raw_dtype)) to add.
    extra_kv: key -> (value, writer method name) extra metadata.

  Returns:
    The GGUF-named float32 tensors that were quantised (for comparisons).
  """
  weights = hf_weights(config) if weights is None else weights
  tokens, types = tiny_vocab()
  assert len(tokens) == config.vocab_size, len(tokens)
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(config.n_layers)
  w.add_context_length(config.max_positions)
  w.add_embedding_length(config.d_model)
  w.add_feed_forward_length(config.d_ff)
  w.add_head_count(config.n_heads)
  w.add_head_count_kv(config.n_kv_heads)
  w.add_rope_freq_base(config.rope_theta)
  w.add_rope_dimension_count(config.head_dim)
  w.add_layer_norm_rms_eps(config.rms_eps)
  w.add_vocab_size(config.vocab_size)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_unk_token_id(0)
  w.add_add_bos_token(add_bos)
  w.add_chat_template(CHAT_TEMPLATE)
  for key, (value, method) in (extra_kv or {}).items():
    getattr(w, method)(key, value)
  tensors = gguf_tensors(config, weights)
  stored = {}
  for name, array in tensors.items():
    if name in drop:
      continue
    if quant is not None and array.ndim == 2:
      packed = gguf.quants.quantize(array, quant)
      w.add_tensor(name, packed, raw_dtype=quant)
      stored[name] = gguf.quants.dequantize(packed, quant)
    else:
      w.add_tensor(name, array)
      stored[name] = array
  for name, array in (extra_tensors or {}).items():
    if isinstance(array, tuple):
      w.add_tensor(name, array[0], raw_dtype=array[1])
    else:
      w.add_tensor(name, array)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return stored


class Helpers:
  """The fabrication helpers above, for test modules (via a fixture, since
  pytest's importlib mode does not let tests import conftest)."""

  TINY = TINY
  tiny_vocab = staticmethod(tiny_vocab)
  hf_weights = staticmethod(hf_weights)
  to_llama_cpp_rows = staticmethod(to_llama_cpp_rows)
  gguf_tensors = staticmethod(gguf_tensors)
  write_gguf = staticmethod(write_gguf)


@pytest.fixture(scope="session")
def helpers():
  return Helpers


@pytest.fixture(scope="session")
def tiny_config():
  return TINY


@pytest.fixture(scope="session")
def tiny_weights():
  return models.init_weights(TINY, jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
  """A float32 tied tiny GGUF file and its HF-layout source weights."""
  folder = tmp_path_factory.mktemp("tiny_gguf")
  weights = hf_weights(TINY, seed=1)
  write_gguf(folder / "tiny.gguf", TINY, weights)
  return folder / "tiny.gguf", weights
