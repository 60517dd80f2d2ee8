"""Tokenisation from GGUF metadata, identical to Hugging Face's, no torch."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from j6jax import models

ROOT = pathlib.Path(__file__).parents[2]

TEXTS = [
  "Hello world",
  "hello there, the world's 12345 in 2024!",
  " leading space and trailing space ",
  "  multiple   spaces\n\nnew lines\ttabs\r\n",
  "héllo naïve café — 日本語のテキスト 🙂👍🏽 Ω≈ç√",
  "<|im_start|>user\nspecial tokens inside text<|im_end|>",
  "def f(x):\n    return x ** 2  # code\n",
  " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
]
CHATS = [
  [{"role": "user", "content": "What is the capital of France?"}],
  [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Another one, in 日本語?"},
  ],
]


def hf_ids(tokenizer, text):
  return tokenizer(text)["input_ids"]


def hf_chat(tokenizer, messages, tokenize):
  out = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=tokenize
  )
  return out["input_ids"] if hasattr(out, "keys") else out


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe"])
def test_tiny_gguf_tokenizer_matches_transformers(
  helpers, tmp_path, torch_transformers, pre
):
  _, transformers = torch_transformers
  helpers.write_gguf(tmp_path / "t.gguf", pre=pre)
  ref = transformers.AutoTokenizer.from_pretrained(
    str(tmp_path), gguf_file="t.gguf"
  )
  _, _, ours = models.read_gguf(tmp_path / "t.gguf")
  for text in TEXTS:
    assert ours.encode(text) == hf_ids(ref, text), text
    assert ours.decode(ours.encode(text)) == text
  for chat in CHATS:
    assert ours.apply_chat_template(chat, True) == hf_chat(ref, chat, True)


def test_add_bos_flag_adds_the_bos_token(helpers, tmp_path):
  helpers.write_gguf(tmp_path / "b.gguf", add_bos=True)
  _, _, tok = models.read_gguf(tmp_path / "b.gguf")
  assert tok.encode("hello")[0] == tok.bos_token_id == 1
  assert tok.encode("hello", add_special_tokens=False)[0] != 1
  assert tok.apply_chat_template(CHATS[0])[:1] == [1]  # no second BOS


def test_pad_batch_and_ids(helpers, tmp_path):
  helpers.write_gguf(tmp_path / "p.gguf")
  _, _, tok = models.read_gguf(tmp_path / "p.gguf")
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
  ids, mask = tok.pad_batch([[5, 6, 7], [8]], padding_side="left")
  np.testing.assert_array_equal(ids, [[5, 6, 7], [2, 2, 8]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
  ids, mask = tok.pad_batch([[5, 6, 7], [8]])
  np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 2, 2]])
  with pytest.raises(ValueError, match="padding_side"):
    tok.pad_batch([[1]], padding_side="middle")
  with pytest.raises(ValueError, match="no chat template"):
    models.Tokenizer(tok.backend).render_chat(CHATS[0])


def test_tokenizer_from_hf_dir(helpers, tmp_path):
  helpers.write_gguf(tmp_path / "p.gguf")
  _, _, tok = models.read_gguf(tmp_path / "p.gguf")
  folder = tmp_path / "hf"
  folder.mkdir()
  tok.backend.save(str(folder / "tokenizer.json"))
  config = {
    "bos_token": {"content": "<|im_start|>"},
    "eos_token": "<|im_end|>",
    "chat_template": tok.chat_template,
  }
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  again = models.Tokenizer.from_hf_dir(folder)
  assert again.bos_token_id == 1 and again.eos_token_id == 2
  for chat in CHATS:
    assert again.apply_chat_template(chat) == tok.apply_chat_template(chat)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    models.Tokenizer.from_hf_dir(tmp_path)


# --- the real SmolLM2 tokenizer ---------------------------------------------


@pytest.fixture(scope="session")
def hf_real_tokenizer(torch_transformers):
  _, transformers = torch_transformers
  path = models.default_gguf_path()
  return transformers.AutoTokenizer.from_pretrained(
    os.fspath(path.parent), gguf_file=path.name
  )


_TORCHLESS = textwrap.dedent(
  """
  import json, sys
  sys.modules["torch"] = None  # any `import torch` now fails
  sys.modules["transformers"] = None
  import numpy as np
  from j6jax import models

  texts, chats, tiny, cache = json.loads(sys.argv[1])
  meta = models.read_gguf_metadata(models.default_gguf_path())
  fresh = models.Tokenizer.from_gguf_metadata(meta)
  model = models.load_default(cache_dir=cache)
  tiny_model = models.load_gguf(tiny, use_cache=False)
  ids = model.tokenizer.apply_chat_template(chats[0], True)
  logits = model(np.asarray([ids[-8:]]))
  out = {
    "texts": [fresh.encode(t) for t in texts],
    "cached_texts": [model.tokenizer.encode(t) for t in texts],
    "chats": [fresh.apply_chat_template(c, True) for c in chats],
    "rendered": [fresh.render_chat(c, True) for c in chats],
    "last_logits": np.asarray(logits[0, -1, :8]).tolist(),
    "tiny_vocab": tiny_model.config.vocab_size,
    "torch": sys.modules.get("torch") is not None,
  }
  print(json.dumps(out))
  """
)


@pytest.fixture(scope="session")
def torchless(real, tiny_gguf):
  """Tokenizer, loading and forward pass run in a process without torch."""
  args = json.dumps([TEXTS, CHATS, os.fspath(tiny_gguf[0]), real.cache_dir])
  env = dict(os.environ, PYTHONPATH=os.fspath(ROOT))
  done = subprocess.run(
    [sys.executable, "-c", _TORCHLESS, args],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_real_tokenizer_without_torch_matches_transformers(
  torchless, hf_real_tokenizer, real
):
  assert not torchless["torch"]
  assert torchless["tiny_vocab"] == 277
  for text, ours, cached in zip(
    TEXTS, torchless["texts"], torchless["cached_texts"], strict=True
  ):
    assert ours == hf_ids(hf_real_tokenizer, text), text
    assert cached == ours
  assert len(torchless["texts"][-1]) > 300
  for chat, ours, rendered in zip(
    CHATS, torchless["chats"], torchless["rendered"], strict=True
  ):
    assert ours == hf_chat(hf_real_tokenizer, chat, True)
    assert rendered == hf_chat(hf_real_tokenizer, chat, False)
  ids = real.model.tokenizer.apply_chat_template(CHATS[0], True)
  here = np.asarray(real.model(np.asarray([ids[-8:]]))[0, -1, :8])
  np.testing.assert_allclose(torchless["last_logits"], here, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_tokenizer_decodes_back(real):
  tok = real.model.tokenizer
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  assert tok.chat_template.startswith("{% for message in messages %}")
  assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
