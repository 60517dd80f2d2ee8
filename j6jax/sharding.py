"""The training step on a device mesh, with JAX's own sharding.

A :class:`jax.sharding.Mesh` with axes ``("data", "model")``: the batch's
questions are split over ``"data"``, the model weights (Megatron style) and
the prompt's hidden axis over ``"model"``; ``jit`` partitions the unchanged
step, so the Jacobian, the Gramians and the update equal the single-device
ones to float tolerance. :func:`j6jax._src.train.train` and ``j6jax train
--mesh`` take such a mesh.
"""

from j6jax._src.sharding import AXES as AXES
from j6jax._src.sharding import batch_shardings as batch_shardings
from j6jax._src.sharding import make_mesh as make_mesh
from j6jax._src.sharding import on_mesh as on_mesh
from j6jax._src.sharding import parse_mesh_shape as parse_mesh_shape
from j6jax._src.sharding import prompt_shardings as prompt_shardings
from j6jax._src.sharding import put as put
from j6jax._src.sharding import replicate as replicate
from j6jax._src.sharding import shard_batch as shard_batch
from j6jax._src.sharding import shard_prompt as shard_prompt
from j6jax._src.sharding import shard_weights as shard_weights
from j6jax._src.sharding import weights_shardings as weights_shardings

__all__ = (
  "AXES",
  "batch_shardings",
  "make_mesh",
  "on_mesh",
  "parse_mesh_shape",
  "prompt_shardings",
  "put",
  "replicate",
  "shard_batch",
  "shard_prompt",
  "shard_weights",
  "weights_shardings",
)
