"""Forward, reverse and second-order differentiation tools, spectra and numerical checks.

Modes (`modes.py`): `jacobian` picks forward or reverse mode by shape; `hessian` and
`flat_hessian` form Hessians forward-over-reverse; `hvp` and `gnvp` give Hessian- and
Gauss-Newton-vector products without forming a matrix.

Per-example gradients (`per_example.py`): `per_example_grads`, `vmap(grad)` over a batch
with each per-example kernel gradient written in its final layout (no transposed copy).

Spectra (`spectrum.py`), matrix-free over a params pytree: `hessian_eigs` (Lanczos or
power iteration), `hessian_trace` (Hutchinson), `hessian_density` and `density_on_grid`
(stochastic Lanczos quadrature).

The empirical neural tangent kernel (`ntk.py`): `empirical_ntk` and `layer_ntk`,
Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ by Jacobian contraction, NTK-vector products or the structured rule
for dense kernels; full, trace-only or diagonal.

Kronecker-factored curvature (`kronecker.py`): `kronecker_factors` gives, for every dense and
conv layer found in the model's jaxpr (`kronecker_layers`; the other leaves:
`kronecker_unmatched`), the factors `A`, `G` of its block `F̂ = A ⊗ G` of the Gauss-Newton
matrix, the sampled Fisher or the empirical Fisher (K-FAC, KFC, KFLR).

Per-example quantities (`quantities.py`): `batch_quantities` gives, in one pass over a batch,
the per-example gradients, their squared norms, their sum of squares and variance, and the
diagonals of the Gauss-Newton matrix (exact or Monte-Carlo) and of the Hessian, with
BackPACK's conventions (`BatchQuantities`, `QUANTITIES`).

Loss landscapes (`landscape.py`): `linear_interpolation` between two params, `loss_line` and
`loss_surface` along directions from `random_direction` (filter-normalised,
`filter_normalize`), each grid one compiled `vmap`.

Influence functions (`influence.py`): `influence` (the predicted change of each test loss
when each training example is removed), `self_influence` (ranks examples that the rest of the
data contradicts) and `inverse_hvp`, with the curvature's inverse exact, by conjugate
gradients or by LiSSA.

Numerical references (`numerical.py`): `numerical_grad` (finite differences),
`complex_step_grad`, and `check_grads`, which compares autodiff with either.
"""

from funcnet.diff.influence import influence, inverse_hvp, self_influence
from funcnet.diff.kronecker import (
    KroneckerFactors,
    KroneckerLayer,
    kronecker_factors,
    kronecker_layers,
    kronecker_unmatched,
)
from funcnet.diff.landscape import (
    LossLine,
    LossSurface,
    filter_normalize,
    linear_interpolation,
    loss_line,
    loss_surface,
    random_direction,
)
from funcnet.diff.modes import (
    flat_hessian,
    gnvp,
    hessian,
    hvp,
    jacobian,
)
from funcnet.diff.ntk import empirical_ntk, layer_ntk
from funcnet.diff.numerical import (
    GradCheck,
    check_grads,
    complex_step_grad,
    numerical_grad,
)
from funcnet.diff.per_example import per_example_grads
from funcnet.diff.quantities import QUANTITIES, BatchQuantities, batch_quantities
from funcnet.diff.spectrum import (
    HessianDensity,
    HessianEigs,
    HessianTrace,
    density_on_grid,
    hessian_density,
    hessian_eigs,
    hessian_trace,
)

__all__ = [
    "QUANTITIES",
    "BatchQuantities",
    "GradCheck",
    "HessianDensity",
    "HessianEigs",
    "HessianTrace",
    "KroneckerFactors",
    "KroneckerLayer",
    "LossLine",
    "LossSurface",
    "batch_quantities",
    "check_grads",
    "complex_step_grad",
    "density_on_grid",
    "empirical_ntk",
    "filter_normalize",
    "flat_hessian",
    "gnvp",
    "hessian",
    "hessian_density",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "influence",
    "inverse_hvp",
    "jacobian",
    "kronecker_factors",
    "kronecker_layers",
    "kronecker_unmatched",
    "layer_ntk",
    "linear_interpolation",
    "loss_line",
    "loss_surface",
    "numerical_grad",
    "per_example_grads",
    "random_direction",
    "self_influence",
]
