"""Shared fixtures: paths to the shared data beside the checkout, and the
real SmolLM2-135M-Instruct (ours and transformers', once per session)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def cases() -> dict:
  """The failure cases of ``../shared/cases.json``, keyed by id."""
  path = SHARED / "cases.json"
  if not path.exists():
    pytest.skip(f"{path} not found (the shared folder beside the checkout)")
  data = json.loads(path.read_text())
  return {c["id"]: c for c in data["cases"]}


@pytest.fixture(scope="session")
def truthfulqa_csv() -> Path:
  """Path of the real TruthfulQA CSV in ``../shared/data``."""
  path = SHARED / "data" / "TruthfulQA.csv"
  if not path.exists():
    pytest.skip(f"{path} not found (the shared folder beside the checkout)")
  return path


# The real model (SmolLM2-135M-Instruct), loaded once per session --------


@pytest.fixture(scope="session")
def torch_transformers():
  """``(torch, transformers)``, test-only references; skips without them."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("accelerate")  # transformers needs it for GGUF files
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  return torch, transformers


@dataclasses.dataclass
class RealModel:
  """The loaded model, its cache folder and the two load times."""

  model: j6jax.models.LlamaModel  # noqa: F821 - a string annotation
  cache_dir: str
  first_load_s: float
  cached_load_s: float


@pytest.fixture(scope="session")
def real(tmp_path_factory):
  """SmolLM2-135M-Instruct, converted into a fresh cache, then reloaded."""
  try:
    path = _models().default_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  cache = str(tmp_path_factory.mktemp("j6jax_cache"))
  start = time.perf_counter()
  _models().load_gguf(path, cache_dir=cache)
  first = time.perf_counter() - start
  start = time.perf_counter()
  model = _models().load_default(cache_dir=cache)
  cached = time.perf_counter() - start
  return RealModel(model, cache, first, cached)


@pytest.fixture(scope="session")
def hf_real(torch_transformers):
  """The same GGUF file loaded by transformers' PyTorch Llama (float32)."""
  torch, transformers = torch_transformers
  path = _models().default_gguf_path()
  folder, name = os.fspath(path.parent), path.name
  model = transformers.AutoModelForCausalLM.from_pretrained(
    folder, gguf_file=name, dtype=torch.float32
  )
  model.eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return model, tokenizer


def _models():
  from j6jax import models

  return models


TINY_CHAT = (
  "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
  "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_lm():
  """A tiny random-weight Llama with a byte-level tokenizer (no merges): the
  training job's code path at a size that compiles in seconds."""
  pytest.importorskip("tokenizers")
  return make_tiny_lm()


def make_tiny_lm():
  """The model of the ``tiny_lm`` fixture (also for subprocess scripts)."""
  import jax
  import tokenizers

  from j6jax import models
  from j6jax._src.models.tokenizer import byte_alphabet

  chars = sorted(set(byte_alphabet().values()))
  vocab = {c: i for i, c in enumerate(chars)}
  backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
    add_prefix_space=False, use_regex=True
  )
  backend.decoder = tokenizers.decoders.ByteLevel()
  backend.add_special_tokens(
    [tokenizers.AddedToken(t, special=True) for t in ("<s>", "</s>")]
  )
  tok = models.Tokenizer(
    backend, bos_token="<s>", eos_token="</s>", chat_template=TINY_CHAT
  )
  config = models.LlamaConfig(
    vocab_size=tok.vocab_size,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_ff=64,
    rope_theta=10000.0,
    bos_token_id=tok.bos_token_id,
    eos_token_ids=(tok.eos_token_id,),
  )
  weights = models.init_weights(config, jax.random.PRNGKey(0))
  return models.LlamaModel(config, weights, tok)
