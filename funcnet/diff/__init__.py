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

Loss landscapes (`landscape.py`): `linear_interpolation` between two params, `loss_line` and
`loss_surface` along directions from `random_direction` (filter-normalised,
`filter_normalize`), each grid one compiled `vmap`.

Numerical references (`numerical.py`): `numerical_grad` (finite differences),
`complex_step_grad`, and `check_grads`, which compares autodiff with either.
"""

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
    "GradCheck",
    "HessianDensity",
    "HessianEigs",
    "HessianTrace",
    "LossLine",
    "LossSurface",
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
    "jacobian",
    "layer_ntk",
    "linear_interpolation",
    "loss_line",
    "loss_surface",
    "numerical_grad",
    "per_example_grads",
    "random_direction",
]
