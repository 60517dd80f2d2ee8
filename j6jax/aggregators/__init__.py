"""Baseline aggregators of a Jacobian, under one optax interface.

Every method is a *Gramian weighting*: a pure, jit-able function from the
``[m, m]`` Gramian ``G = J J^T`` to ``[m]`` weights ``w`` (``*_weights``),
the aggregate being ``w @ J = sum_i w_i J[i]``, as in TorchJD. Each also has
an optax factory whose ``update(jacobian, state, params=None, **extra_args)``
takes the stacked Jacobian pytree (leaves ``[m, *param.shape]``) and returns
the aggregate as an ordinary update in gradient convention, so that, e.g.,
``optax.chain(j6jax.aggregators.upgrad(), optax.adam(1e-2))`` works under
``jax.jit``. ``init`` cannot see ``m``: every factory but :func:`linear`
takes ``num_objectives`` (default 2), checked against the Jacobian at trace
time; under ``optax.inject_hyperparams`` it must be listed in
``static_args``.

Conventions (details in each docstring): every weighting runs on ``G /
trace(G)``, so weights do not depend on the scale of ``J`` (Nash-MTL's scale
like ``1 / |J|`` by definition); linear solves and rank decisions use the
cosine (Jacobi-scaled) Gramian, so that gradients of very different norms are
not mistaken for dependent ones; the quadratic programs (UPGrad, DualProj,
MGDA's ``"active_set"`` solver, CAGrad) are solved exactly by active-set
enumeration, without TorchJD's ridge regularisation; PCGrad sums its
projected gradients and, for ``m > 2``, averages over all projection orders;
every loop is bounded, and degenerate Jacobians (zero, rank-deficient,
parallel, opposite, ``m = 1``) give finite weights. Non-finite Jacobians are
the caller's to guard (e.g. with ``optax.apply_if_finite``).
"""

from j6jax._src.aggregators._aligned_mtl import (
  AlignedMTLState as AlignedMTLState,
)
from j6jax._src.aggregators._aligned_mtl import aligned_mtl as aligned_mtl
from j6jax._src.aggregators._aligned_mtl import (
  aligned_mtl_weights as aligned_mtl_weights,
)
from j6jax._src.aggregators._cagrad import CAGradState as CAGradState
from j6jax._src.aggregators._cagrad import cagrad as cagrad
from j6jax._src.aggregators._cagrad import cagrad_weights as cagrad_weights
from j6jax._src.aggregators._dualproj import DualProjState as DualProjState
from j6jax._src.aggregators._dualproj import dualproj as dualproj
from j6jax._src.aggregators._dualproj import (
  dualproj_weights as dualproj_weights,
)
from j6jax._src.aggregators._imtl_g import IMTLGState as IMTLGState
from j6jax._src.aggregators._imtl_g import imtl_g as imtl_g
from j6jax._src.aggregators._imtl_g import imtl_g_weights as imtl_g_weights
from j6jax._src.aggregators._linear import LinearState as LinearState
from j6jax._src.aggregators._linear import linear as linear
from j6jax._src.aggregators._linear import linear_weights as linear_weights
from j6jax._src.aggregators._mean import MeanState as MeanState
from j6jax._src.aggregators._mean import mean as mean
from j6jax._src.aggregators._mean import mean_weights as mean_weights
from j6jax._src.aggregators._mgda import MGDAState as MGDAState
from j6jax._src.aggregators._mgda import mgda as mgda
from j6jax._src.aggregators._mgda import mgda_weights as mgda_weights
from j6jax._src.aggregators._nash_mtl import NashMTLState as NashMTLState
from j6jax._src.aggregators._nash_mtl import nash_mtl as nash_mtl
from j6jax._src.aggregators._nash_mtl import (
  nash_mtl_weights as nash_mtl_weights,
)
from j6jax._src.aggregators._pcgrad import PCGradState as PCGradState
from j6jax._src.aggregators._pcgrad import pcgrad as pcgrad
from j6jax._src.aggregators._pcgrad import pcgrad_weights as pcgrad_weights
from j6jax._src.aggregators._upgrad import UPGradState as UPGradState
from j6jax._src.aggregators._upgrad import upgrad as upgrad
from j6jax._src.aggregators._upgrad import upgrad_weights as upgrad_weights

__all__ = (
  "AlignedMTLState",
  "CAGradState",
  "DualProjState",
  "IMTLGState",
  "LinearState",
  "MGDAState",
  "MeanState",
  "NashMTLState",
  "PCGradState",
  "UPGradState",
  "aligned_mtl",
  "aligned_mtl_weights",
  "cagrad",
  "cagrad_weights",
  "dualproj",
  "dualproj_weights",
  "imtl_g",
  "imtl_g_weights",
  "linear",
  "linear_weights",
  "mean",
  "mean_weights",
  "mgda",
  "mgda_weights",
  "nash_mtl",
  "nash_mtl_weights",
  "pcgrad",
  "pcgrad_weights",
  "upgrad",
  "upgrad_weights",
)
