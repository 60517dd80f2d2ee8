"""j6jax: Jacobian-driven multi-objective prompt optimisation in JAX.

The core is four steps, each a pure function:

1. :func:`objective_jacobian`: values ``[m]`` and Jacobian (params pytree with
   a leading axis ``m``) of a stacked objective vector;
2. :func:`group_gramians`: one ``[m, m]`` Gramian per parameter group;
3. :func:`decompose`: the J6 components, names, shares, cosines, conflicts;
4. :func:`j6`: an optax transform that turns the Jacobian into an update.

The baselines (MGDA, PCGrad, UPGrad, ...) live in :mod:`j6jax.aggregators`
with the same interface; the model side in :mod:`j6jax.models`.
"""

from j6jax._src.base import combine as combine
from j6jax._src.base import gramian as gramian
from j6jax._src.decomposition import Decomposition as Decomposition
from j6jax._src.decomposition import (
  candidate_coefficients as candidate_coefficients,
)
from j6jax._src.decomposition import component_index as component_index
from j6jax._src.decomposition import component_names as component_names
from j6jax._src.decomposition import decompose as decompose
from j6jax._src.gramian import group_gramians as group_gramians
from j6jax._src.jacobian import objective_jacobian as objective_jacobian
from j6jax._src.transform import J6State as J6State
from j6jax._src.transform import j6 as j6
from j6jax._src.transform import j6_alpha as j6_alpha
from j6jax._src.transform import j6_scores as j6_scores
from j6jax._src.transform import set_hyperparams as set_hyperparams

__version__ = "0.1.0"

__all__ = (
  "Decomposition",
  "J6State",
  "candidate_coefficients",
  "combine",
  "component_index",
  "component_names",
  "decompose",
  "gramian",
  "group_gramians",
  "j6",
  "j6_alpha",
  "j6_scores",
  "objective_jacobian",
  "set_hyperparams",
)
