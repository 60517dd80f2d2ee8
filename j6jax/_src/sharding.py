"""Placing a training step on a device mesh with JAX's own sharding.

Nothing here changes the maths: every function only says where the arrays
live (``jax.sharding.NamedSharding`` on a ``Mesh`` with axes ``"data"`` and
``"model"``), and ``jit`` partitions the unchanged program. The objectives
are batch means, so with the batch split over ``"data"`` the compiler sums
the per-device partial Jacobians across that axis exactly as it would sum
partial gradients; a Gramian of a leaf split over ``"model"`` is a sum over
the leaf's entries, which the compiler completes with a sum across that axis.
The results equal the single-device ones to float tolerance (tested on 8
CPU devices).

Arrays are built with :func:`jax.make_array_from_callback`, so the same code
runs on one host or on many (after :func:`jax.distributed.initialize`, every
process holding the same host values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "model")

# Megatron-style rules for the stacked Llama weights ([L, in, out]): the
# projections into the heads / the MLP are split on their output axis, the
# projections back into the residual stream on their input axis. With the
# model's config, a projection is split only when its head count divides
# (each device keeps whole heads); without it, when its width divides.
_COLUMN = ("wq", "wk", "wv", "w_gate", "w_up")
_ROW = ("wo", "w_down")
_WHOLE = ("attn_norm", "mlp_norm", "final_norm")


def parse_mesh_shape(shape: str | Mapping[str, int]) -> dict[str, int]:
  """``"data=4,model=2"`` (or a mapping) as ``{"data": 4, "model": 2}``.

  A missing axis has size 1; ``"4"`` alone means ``data=4``.

  Raises:
    ValueError: unknown axis names, sizes below 1 or a malformed string.
  """
  if isinstance(shape, str):
    text = shape.strip()
    if text.isdigit():
      shape = {"data": int(text)}
    else:
      parsed = {}
      for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, size = part.partition("=")
        if not eq or not size.strip().isdigit():
          raise ValueError(
            f"Mesh shape {text!r}: {part!r} is not 'axis=size' (e.g. "
            "'data=4,model=2')."
          )
        parsed[name.strip()] = int(size)
      shape = parsed
  unknown = sorted(set(shape) - set(AXES))
  if unknown:
    raise ValueError(f"Unknown mesh axes {unknown}; the axes are {AXES}.")
  out = {a: int(shape.get(a, 1)) for a in AXES}
  bad = {a: s for a, s in out.items() if s < 1}
  if bad:
    raise ValueError(f"Mesh axis sizes must be >= 1, got {bad}.")
  return out


def make_mesh(
  shape: str | Mapping[str, int] | None = None,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A ``Mesh`` with axes ``("data", "model")`` over ``devices``.

  Args:
    shape: ``"data=4,model=2"``, a mapping, or ``None`` for all devices on
      ``"data"``.
    devices: the devices (default: ``jax.devices()``, all processes').

  Raises:
    ValueError: when the sizes' product is not the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh_shape(shape or {"data": len(devices)})
  n = math.prod(sizes.values())
  if n != len(devices):
    raise ValueError(
      f"Mesh {sizes} needs {n} devices, but there are {len(devices)} "
      f"({devices[0].platform}); on CPU, more can be faked with "
      "XLA_FLAGS=--xla_force_host_platform_device_count=N."
    )
  grid = np.array(devices, dtype=object).reshape(tuple(sizes.values()))
  return Mesh(grid, AXES)


def _axis(mesh: Mesh, name: str) -> int:
  return dict(zip(mesh.axis_names, mesh.devices.shape, strict=True)).get(
    name, 1
  )


def _split_last(mesh: Mesh, shape: tuple[int, ...]) -> P:
  """The last axis over ``"model"`` when it divides evenly, else replicated."""
  k = _axis(mesh, "model")
  if shape and k > 1 and shape[-1] % k == 0:
    return P(*([None] * (len(shape) - 1)), "model")
  return P()


def prompt_shardings(prompt: Any, mesh: Mesh) -> Any:
  """Shardings of the prompt pytree: the hidden axis ``d`` of every leaf
  (``w [n, d]``, ``h [k, d]``) over ``"model"`` when ``d`` divides evenly,
  else replicated."""
  return jax.tree.map(
    lambda x: NamedSharding(mesh, _split_last(mesh, np.shape(x))), prompt
  )


def weights_shardings(weights: Any, mesh: Mesh, config: Any = None) -> Any:
  """Shardings of Llama weights (the layout of :mod:`j6jax.models`).

  Over ``"model"``: ``wq``, ``wk``, ``wv``, ``w_gate``, ``w_up`` on their
  output axis, ``wo`` and ``w_down`` on their input axis, ``embed`` and
  ``lm_head`` on the vocabulary axis; norms replicated. A weight whose axis
  does not divide evenly by the ``"model"`` size stays whole (replicated,
  silently: e.g. SmolLM2's 9 query and 3 key/value heads on ``model=2``);
  with ``config`` (a :class:`j6jax.models.LlamaConfig`) the attention
  weights are split only where their head count divides, so no head is cut
  in two. Any other pytree gets its last axis split where it divides.
  """
  k = _axis(mesh, "model")
  heads = {}
  if config is not None:
    heads = {
      "wq": config.n_heads,
      "wo": config.n_heads,
      "wk": config.n_kv_heads,
      "wv": config.n_kv_heads,
    }

  def spec(path, x):
    shape = np.shape(x)
    name = getattr(path[-1], "key", None) if path else None
    rule = P()
    if heads.get(name, k) % k:
      rule = P()
    elif name in _COLUMN and len(shape) == 3 and shape[2] % k == 0:
      rule = P(None, None, "model")
    elif name in _ROW and len(shape) == 3 and shape[1] % k == 0:
      rule = P(None, "model", None)
    elif name in ("embed", "lm_head") and len(shape) == 2:
      rule = P("model", None) if shape[0] % k == 0 else P()
    elif name not in (*_COLUMN, *_ROW, *_WHOLE):
      rule = _split_last(mesh, shape)
    return NamedSharding(mesh, rule if k > 1 else P())

  return jax.tree_util.tree_map_with_path(spec, weights)


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """Shardings of a batch pytree: the leading (question) axis over ``"data"``.

  Raises:
    ValueError: when a leading axis does not divide by the ``"data"`` size.
  """
  n = _axis(mesh, "data")

  def spec(path, x):
    shape = np.shape(x)
    if not shape:
      return NamedSharding(mesh, P())
    if shape[0] % n:
      where = jax.tree_util.keystr(path)
      raise ValueError(
        f"Batch leaf {where or 'batch'} has leading size {shape[0]}, not "
        f"divisible by the mesh's data axis ({n}); make the batch (e.g. "
        "batch_questions) a multiple of it."
      )
    return NamedSharding(mesh, P("data"))

  return jax.tree_util.tree_map_with_path(spec, batch)


def put(tree: Any, shardings: Any) -> Any:
  """``tree``'s leaves as global arrays with ``shardings``.

  A host value (NumPy, or a JAX array this process holds whole) is cut into
  the shards of this process's devices (:func:`jax.make_array_from_callback`):
  no process sends anything to another, so this works across hosts when
  every process holds the same values. An array already spread over several
  processes is moved by a compiled identity instead. ``None`` leaves stay
  ``None``.
  """

  def one(x, s):
    if x is None:
      return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding == s:
        return x
      return jax.jit(lambda a: a, out_shardings=s)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda i: host[i])

  return jax.tree.map(one, tree, shardings, is_leaf=lambda x: x is None)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """:func:`put` with :func:`batch_shardings`."""
  return put(batch, batch_shardings(batch, mesh))


def shard_prompt(prompt: Any, mesh: Mesh) -> Any:
  """:func:`put` with :func:`prompt_shardings`."""
  return put(prompt, prompt_shardings(prompt, mesh))


def shard_weights(weights: Any, mesh: Mesh, config: Any = None) -> Any:
  """:func:`put` with :func:`weights_shardings`."""
  return put(weights, weights_shardings(weights, mesh, config))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` copied whole onto every device of ``mesh``."""
  return put(tree, jax.tree.map(lambda _: NamedSharding(mesh, P()), tree))


def on_mesh(tree: Any, mesh: Mesh) -> Any:
  """``tree`` with every array that is not yet spread over ``mesh``'s devices
  replicated onto them (e.g. an optimiser's step counter); arrays already
  on the mesh keep their sharding."""
  devices = set(mesh.devices.flat)
  replicated = NamedSharding(mesh, P())

  def one(x):
    if isinstance(x, jax.Array) and x.sharding.device_set == devices:
      return x
    return put(x, replicated)

  return jax.tree.map(one, tree)


def to_host(x: Any) -> np.ndarray:
  """``x`` as a NumPy array on every process, also when its shards live on
  several hosts (then gathered with ``process_allgather``)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def agree(flag: bool) -> bool:
  """Process 0's ``flag`` on every process (``flag`` itself with one), for
  decisions taken from files that only process 0 writes."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def barrier(name: str) -> None:
  """Waits for every process (nothing with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
