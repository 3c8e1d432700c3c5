"""Forward, reverse and second-order differentiation tools, spectra and numerical checks.

Modes (`modes.py`): `jacobian` picks forward or reverse mode by shape; `hessian` and
`flat_hessian` form Hessians forward-over-reverse; `hvp` and `gnvp` give Hessian- and
Gauss-Newton-vector products without forming a matrix.

Per-example gradients (`per_example.py`): `per_example_grads`, `vmap(grad)` over a batch
with each per-example kernel gradient written in its final layout (no transposed copy).

Spectra (`spectrum.py`), matrix-free over a params pytree: `hessian_eigs` (Lanczos or
power iteration), `hessian_trace` (Hutchinson), `hessian_density` and `density_on_grid`
(stochastic Lanczos quadrature).

Numerical references (`numerical.py`): `numerical_grad` (finite differences),
`complex_step_grad`, and `check_grads`, which compares autodiff with either.
"""

from funcnet.diff.modes import (
    flat_hessian,
    gnvp,
    hessian,
    hvp,
    jacobian,
)
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
    "check_grads",
    "complex_step_grad",
    "density_on_grid",
    "flat_hessian",
    "gnvp",
    "hessian",
    "hessian_density",
    "hessian_eigs",
    "hessian_trace",
    "hvp",
    "jacobian",
    "numerical_grad",
    "per_example_grads",
]
