"""Loading GGUF files and Hugging Face directories (fabricated tiny files)."""

import json
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from j6jax import models
from j6jax._src.models import gguf_io

TINY = models.LlamaConfig(
  vocab_size=277,
  d_model=64,
  n_layers=3,
  n_heads=4,
  n_kv_heads=2,
  head_dim=16,
  d_ff=128,
  rope_theta=10000.0,
  rms_eps=float(np.float32(1e-5)),
  max_positions=512,
  bos_token_id=1,
  eos_token_ids=(2,),
  pad_token_id=2,
)

_forward = jax.jit(models.forward, static_argnums=0)
TOKENS = jnp.asarray([[1, 50, 60, 70, 80, 90, 100, 110]])


def test_local_tiny_config_is_the_shared_one(helpers):
  assert TINY == helpers.TINY


def expected_layers(source, config=TINY):
  """Our stacked [in, out] layout from HF-named [out, in] weights."""
  names = {
    "attn_norm": "input_layernorm",
    "wq": "self_attn.q_proj",
    "wk": "self_attn.k_proj",
    "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj",
    "mlp_norm": "post_attention_layernorm",
    "w_gate": "mlp.gate_proj",
    "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
  }
  out = {}
  for key, hf in names.items():
    arrays = [source[f"model.layers.{i}.{hf}.weight"] for i in range(3)]
    out[key] = np.stack([a if a.ndim == 1 else a.T for a in arrays])
  return out


def test_gguf_config_and_weights(tiny_gguf):
  path, source = tiny_gguf
  config, weights, tokenizer = models.read_gguf(path)
  assert config == TINY
  assert config.rope_theta == 1e4 and config.tie_embeddings
  assert "lm_head" not in weights  # case C12: no output.weight, tied
  np.testing.assert_array_equal(
    weights["embed"], source["model.embed_tokens.weight"]
  )
  np.testing.assert_array_equal(
    weights["final_norm"], source["model.norm.weight"]
  )
  for key, value in expected_layers(source).items():
    np.testing.assert_array_equal(weights["layers"][key], value, err_msg=key)
  assert tokenizer is not None and tokenizer.bos_token_id == 1


def test_tied_gguf_logits_use_the_embedding_case_c12(tiny_gguf):
  path, source = tiny_gguf
  model = models.load_gguf(path, use_cache=False)
  hidden = jnp.asarray(
    np.random.default_rng(0).standard_normal(64), jnp.float32
  )
  embed = source["model.embed_tokens.weight"]
  np.testing.assert_allclose(
    models.unembed(model.weights, hidden),
    embed @ np.asarray(hidden),
    rtol=1e-5,
    atol=1e-5,
  )
  assert models.output_embedding(model.weights).shape == (TINY.vocab_size, 64)


def test_untied_gguf_uses_output_weight(helpers, tmp_path):
  source = helpers.hf_weights(TINY, seed=2, untied=True)
  helpers.write_gguf(tmp_path / "untied.gguf", TINY, source)
  config, weights, _ = models.read_gguf(tmp_path / "untied.gguf")
  assert not config.tie_embeddings
  np.testing.assert_array_equal(weights["lm_head"], source["lm_head.weight"])


@pytest.mark.parametrize(
  "quant", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1]
)
def test_quantized_gguf_is_dequantized(helpers, tmp_path, quant):
  source = helpers.hf_weights(TINY, seed=3)
  stored = helpers.write_gguf(tmp_path / "q.gguf", TINY, source, quant=quant)
  _, weights, _ = models.read_gguf(tmp_path / "q.gguf")
  np.testing.assert_array_equal(weights["embed"], stored["token_embd.weight"])
  wq = gguf_io.unpermute_rows(stored["blk.1.attn_q.weight"], TINY.n_heads)
  np.testing.assert_array_equal(weights["layers"]["wq"][1], wq.T)
  wk = gguf_io.unpermute_rows(stored["blk.2.attn_k.weight"], TINY.n_kv_heads)
  np.testing.assert_array_equal(weights["layers"]["wk"][2], wk.T)
  q_err = np.abs(
    weights["layers"]["w_up"][0] - source["model.layers.0.mlp.up_proj.weight"].T
  )
  assert 0 < q_err.max() < 0.2


def test_unpermute_inverts_llama_cpp_order(helpers):
  to_llama_cpp_rows = helpers.to_llama_cpp_rows
  w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(64, 3)
  np.testing.assert_array_equal(
    gguf_io.unpermute_rows(to_llama_cpp_rows(w, 4), 4), w
  )
  # Head 0 of width 16: rotate-half row 8 (pair 0, second half) sits at row 1.
  np.testing.assert_array_equal(to_llama_cpp_rows(w, 4)[1], w[8])


# --- clear errors for broken or unsupported files --------------------------


def broken(helpers, tmp_path, kind):
  path = tmp_path / f"{kind}.gguf"
  if kind == "truncated":
    helpers.write_gguf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
  elif kind == "truncated_header":
    helpers.write_gguf(path)
    path.write_bytes(path.read_bytes()[:100])
  elif kind == "not_gguf":
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
  elif kind == "gpt2_arch":
    helpers.write_gguf(path, arch="gpt2")
  elif kind == "missing_tensor":
    helpers.write_gguf(path, drop=("blk.1.attn_k.weight",))
  elif kind == "int_tensor":
    helpers.write_gguf(
      path,
      drop=("blk.0.attn_norm.weight",),
      extra_tensors={"blk.0.attn_norm.weight": np.ones(64, np.int32)},
    )
  elif kind == "bias":
    helpers.write_gguf(
      path, extra_tensors={"blk.0.attn_q.bias": np.ones(64, np.float32)}
    )
  elif kind == "rope_freqs":
    helpers.write_gguf(
      path, extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)}
    )
  elif kind == "rope_scaling":
    helpers.write_gguf(
      path, extra_kv={"llama.rope.scaling.type": ("linear", "add_string")}
    )
  return path


@pytest.mark.parametrize(
  "kind, message",
  [
    ("truncated", "truncated"),
    ("truncated_header", "truncated or corrupt"),
    ("not_gguf", "not a GGUF file"),
    ("gpt2_arch", "architecture 'gpt2' is not supported"),
    ("missing_tensor", "missing tensor 'blk.1.attn_k.weight'"),
    ("int_tensor", "type I32, which cannot be dequantised"),
    ("bias", "unexpected tensor 'blk.0.attn_q.bias'"),
    ("rope_freqs", "rope_freqs.weight"),
    ("rope_scaling", "rope scaling 'linear'"),
  ],
)
def test_bad_gguf_files_raise_naming_file_and_problem(
  helpers, tmp_path, kind, message
):
  path = broken(helpers, tmp_path, kind)
  with pytest.raises(models.ModelLoadError, match=message) as info:
    models.read_gguf(path)
  assert os.fspath(path) in str(info.value)


def test_missing_and_unsupported_paths(helpers, tmp_path):
  with pytest.raises(FileNotFoundError, match="nothere.gguf"):
    models.load_model(tmp_path / "nothere.gguf")
  with pytest.raises(FileNotFoundError, match="nothere.gguf"):
    models.load_gguf(tmp_path / "nothere.gguf")
  path = broken(helpers, tmp_path, "not_gguf")
  with pytest.raises(models.ModelLoadError, match="unsupported weight file"):
    models.load_model(path)


# --- Hugging Face directories (written without torch) ----------------------


def write_hf_dir(folder, source, config=TINY, shards=1, **overrides):
  folder.mkdir(parents=True, exist_ok=True)
  values = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": config.vocab_size,
    "hidden_size": config.d_model,
    "intermediate_size": config.d_ff,
    "num_hidden_layers": config.n_layers,
    "num_attention_heads": config.n_heads,
    "num_key_value_heads": config.n_kv_heads,
    "head_dim": config.head_dim,
    "rms_norm_eps": config.rms_eps,
    "rope_theta": config.rope_theta,
    "max_position_embeddings": config.max_positions,
    "tie_word_embeddings": "lm_head.weight" not in source,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "hidden_act": "silu",
  }
  values.update(overrides)
  (folder / "config.json").write_text(json.dumps(values))
  names = sorted(source)
  if shards == 1:
    save_file(source, str(folder / "model.safetensors"))
    return folder
  weight_map = {}
  for s in range(shards):
    part = {n: source[n] for n in names[s::shards]}
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    save_file(part, str(folder / file))
    weight_map.update({n: file for n in part})
  index = {"metadata": {}, "weight_map": weight_map}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  return folder


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_dir_matches_gguf(tmp_path, tiny_gguf, shards):
  path, source = tiny_gguf
  folder = write_hf_dir(tmp_path / "hf", source, shards=shards)
  from_gguf = models.load_gguf(path, use_cache=False)
  from_hf = models.load_hf(folder)
  assert from_hf.config == from_gguf.config
  jax.tree.map(
    np.testing.assert_array_equal, from_hf.weights, from_gguf.weights
  )
  assert from_hf.tokenizer is None
  np.testing.assert_array_equal(
    _forward(TINY, from_hf.weights, TOKENS),
    _forward(TINY, from_gguf.weights, TOKENS),
  )


def test_hf_dir_head_tied_or_not(helpers, tmp_path):
  source = helpers.hf_weights(TINY, seed=4, untied=True)
  config, weights, _ = models.read_hf_dir(write_hf_dir(tmp_path / "u", source))
  assert not config.tie_embeddings
  np.testing.assert_array_equal(weights["lm_head"], source["lm_head.weight"])
  del source["lm_head.weight"]
  folder = write_hf_dir(tmp_path / "t", source, tie_word_embeddings=False)
  config, weights, _ = models.read_hf_dir(folder)
  assert config.tie_embeddings and "lm_head" not in weights


def test_hf_dir_bfloat16_safetensors(tmp_path, tiny_gguf):
  import ml_dtypes

  _, source = tiny_gguf
  half = {k: v.astype(ml_dtypes.bfloat16) for k, v in source.items()}
  model = models.load_hf(
    write_hf_dir(tmp_path / "bf", half), dtype=jnp.bfloat16
  )
  assert model.dtype == jnp.bfloat16
  assert model.weights["embed"].dtype == jnp.bfloat16


def test_bad_hf_dirs(tmp_path, tiny_gguf):
  _, source = tiny_gguf
  with pytest.raises(FileNotFoundError, match="No config.json"):
    (tmp_path / "empty").mkdir()
    models.load_hf(tmp_path / "empty")
  folder = write_hf_dir(tmp_path / "gpt2", source, model_type="gpt2")
  with pytest.raises(models.ModelLoadError, match="model_type 'gpt2'") as e:
    models.load_hf(folder)
  assert "config.json" in str(e.value)
  folder = write_hf_dir(tmp_path / "trunc", source)
  weights = folder / "model.safetensors"
  weights.write_bytes(weights.read_bytes()[:5000])
  with pytest.raises(models.ModelLoadError, match="truncated") as e:
    models.load_hf(folder)
  assert "model.safetensors" in str(e.value)
  folder = write_hf_dir(tmp_path / "bin", source)
  (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
  with pytest.raises(models.ModelLoadError, match="no \\*.safetensors"):
    models.load_hf(folder)
  partial = {k: v for k, v in source.items() if "layers.2.mlp.up" not in k}
  folder = write_hf_dir(tmp_path / "missing", partial)
  with pytest.raises(models.ModelLoadError, match="layers.2.mlp.up_proj"):
    models.load_hf(folder)
  folder = write_hf_dir(tmp_path / "wide", source, intermediate_size=256)
  with pytest.raises(models.ModelLoadError, match="layers/w_gate") as e:
    models.load_hf(folder)
  assert "wide" in str(e.value) and "(3, 64, 256)" in str(e.value)
  folder = write_hf_dir(tmp_path / "bias", source, attention_bias=True)
  with pytest.raises(models.ModelLoadError, match="attention_bias"):
    models.load_hf(folder)


# --- the disk cache -------------------------------------------------------


def test_cache_is_written_then_read(tmp_path, tiny_gguf, monkeypatch):
  path, _ = tiny_gguf
  first = models.load_gguf(path, cache_dir=tmp_path)
  entries = list((tmp_path / "models").iterdir())
  assert len(entries) == 1 and entries[0].name.startswith("tiny-")
  assert {p.name for p in entries[0].iterdir()} >= {
    "weights.safetensors",
    "config.json",
    "tokenizer.json",
  }

  def no_conversion(*args, **kwargs):
    raise AssertionError("converted again instead of reading the cache")

  monkeypatch.setattr(gguf_io, "read_gguf", no_conversion)
  second = models.load_gguf(path, cache_dir=tmp_path, dtype=jnp.bfloat16)
  assert second.config == first.config and second.dtype == jnp.bfloat16
  assert second.tokenizer.encode("hello") == first.tokenizer.encode("hello")
  np.testing.assert_array_equal(
    second.weights["layers"]["wq"],
    first.weights["layers"]["wq"].astype(jnp.bfloat16),
  )


def test_cache_location_from_env(tmp_path, tiny_gguf, monkeypatch):
  path, _ = tiny_gguf
  monkeypatch.setenv("J6JAX_CACHE", str(tmp_path / "env_cache"))
  assert models.cache_root() == tmp_path / "env_cache"
  models.load_gguf(path)
  assert (tmp_path / "env_cache" / "models").is_dir()
  monkeypatch.delenv("J6JAX_CACHE")
  assert str(models.cache_root()).endswith(os.path.join(".cache", "j6jax"))


def test_damaged_cache_entry_is_rebuilt(tmp_path, tiny_gguf):
  path, _ = tiny_gguf
  models.load_gguf(path, cache_dir=tmp_path)
  (entry,) = (tmp_path / "models").iterdir()
  (entry / "weights.safetensors").write_bytes(b"garbage")
  model = models.load_gguf(path, cache_dir=tmp_path)
  assert model.config == TINY
  assert (entry / "weights.safetensors").stat().st_size > 1000


# --- parity with transformers on the tiny file ----------------------------


@pytest.mark.parametrize("quant", [None, gguf.GGMLQuantizationType.Q8_0])
def test_tiny_gguf_logits_match_transformers(
  helpers, tmp_path, torch_transformers, quant
):
  torch, transformers = torch_transformers
  helpers.write_gguf(
    tmp_path / "t.gguf", TINY, helpers.hf_weights(TINY, seed=5), quant=quant
  )
  ref = transformers.AutoModelForCausalLM.from_pretrained(
    str(tmp_path), gguf_file="t.gguf", dtype=torch.float32
  )
  with torch.no_grad():
    expected = ref(torch.tensor(np.asarray(TOKENS))).logits.numpy()
  model = models.load_gguf(tmp_path / "t.gguf", use_cache=False)
  got = np.asarray(_forward(TINY, model.weights, TOKENS))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_saved_transformers_directory_matches_transformers(
  helpers, tmp_path, torch_transformers
):
  torch, transformers = torch_transformers
  source = helpers.hf_weights(TINY, seed=6)
  hf_config = transformers.LlamaConfig(
    vocab_size=TINY.vocab_size,
    hidden_size=TINY.d_model,
    intermediate_size=TINY.d_ff,
    num_hidden_layers=TINY.n_layers,
    num_attention_heads=TINY.n_heads,
    num_key_value_heads=TINY.n_kv_heads,
    head_dim=TINY.head_dim,
    rms_norm_eps=TINY.rms_eps,
    rope_theta=TINY.rope_theta,
    tie_word_embeddings=True,
  )
  ref = transformers.LlamaForCausalLM(hf_config).eval()
  state = {k: torch.from_numpy(v) for k, v in source.items()}
  ref.load_state_dict(state, strict=False)
  with torch.no_grad():
    expected = ref(torch.tensor(np.asarray(TOKENS))).logits.numpy()
  ref.save_pretrained(tmp_path / "saved")
  model = models.load_hf(tmp_path / "saved")
  assert model.config.tie_embeddings and model.config.rope_theta == 1e4
  got = np.asarray(_forward(model.config, model.weights, TOKENS))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
