"""Numerical references for gradients: finite differences, the complex step, and a checker.

Finite differences trade truncation error against round-off. With machine epsilon ε and a
step h, the forward difference (f(x + h eᵢ) − f(x))/h has error ≈ h|f''|/2 + 2ε|f|/h,
smallest near h ≈ √ε, where it is ≈ √ε (1e-8 in float64). The central difference
(f(x + h eᵢ) − f(x − h eᵢ))/2h has error ≈ h²|f'''|/6 + ε|f|/h, smallest near h ≈ ε^(1/3),
where it is ≈ ε^(2/3) (1e-11 in float64). The complex step Im f(x + i h eᵢ)/h subtracts
nothing, so it has no round-off term and its h²|f'''|/6 truncation vanishes for tiny h: for
a complex-analytic f it is exact to round-off.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnet._checks import check_function, check_positive
from funcnet._trees import check_same_shapes

PyTree = Any
DifferenceMethod = Literal["central", "forward"]
CheckMethod = Literal["central", "forward", "complex_step"]

__all__ = ["GradCheck", "check_grads", "complex_step_grad", "numerical_grad"]

# Coordinates are perturbed in vmapped chunks of this many, bounding memory to chunk × n.
_CHUNK = 128


def _scalar_output(f: Callable[[PyTree], jax.Array], x: PyTree, what: str) -> None:
    out = jax.eval_shape(f, x)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"{what} needs f to return a scalar, got {shape}")


def _float_flat(x: PyTree, what: str) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    flat, unravel = ravel_pytree(x)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise TypeError(f"{what} needs real floating-point inputs, got dtype {flat.dtype}")
    return flat, unravel


def numerical_grad(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    *,
    method: DifferenceMethod = "central",
    step: float | None = None,
) -> PyTree:
    """Gradient of a scalar function by finite differences, one coordinate at a time.

    - `"forward"`: ∂f/∂xᵢ ≈ (f(x + hᵢeᵢ) − f(x))/hᵢ, error O(h); n + 1 evaluations.
    - `"central"`: ∂f/∂xᵢ ≈ (f(x + hᵢeᵢ) − f(x − hᵢeᵢ))/2hᵢ, error O(h²); 2n evaluations.

    The default step is hᵢ = ε^(1/2)·max(1, |xᵢ|) for forward and ε^(1/3)·max(1, |xᵢ|)
    for central differences, ε the machine epsilon of the dtype of `x`: near the step that
    balances truncation against round-off. The step actually taken is the representable
    (xᵢ + hᵢ) − xᵢ, which removes the error of rounding xᵢ + hᵢ.

    Args:
      f: scalar function of one pytree argument, traceable by JAX.
      x: the point, a pytree of real float arrays.
      method: `"central"` or `"forward"`.
      step: a fixed step h for every coordinate, instead of the scaled default.

    Returns:
      The approximate gradient, a pytree shaped like `x`.
    """
    check_function("numerical_grad", "f", f)
    flat, unravel = _float_flat(x, "numerical_grad")
    _scalar_output(f, x, "numerical_grad")
    if method not in ("central", "forward"):
        raise ValueError(f"method must be 'central' or 'forward', got {method!r}")
    if step is not None:
        check_positive("numerical_grad", "step", step)
    if step is None:
        eps = float(jnp.finfo(flat.dtype).eps)
        base = eps ** (1 / 3) if method == "central" else eps ** (1 / 2)
        h = base * jnp.maximum(1, jnp.abs(flat))
    else:
        h = jnp.full_like(flat, step)
    h = (flat + h) - flat
    f_flat = lambda theta: f(unravel(theta))

    if method == "central":

        def partial(i: jax.Array) -> jax.Array:
            e = jnp.zeros_like(flat).at[i].set(h[i])
            return (f_flat(flat + e) - f_flat(flat - e)) / (2 * h[i])
    else:
        f0 = f_flat(flat)

        def partial(i: jax.Array) -> jax.Array:
            e = jnp.zeros_like(flat).at[i].set(h[i])
            return (f_flat(flat + e) - f0) / h[i]

    grad = lax.map(partial, jnp.arange(flat.size), batch_size=min(flat.size, _CHUNK))
    return unravel(grad.astype(flat.dtype))


def complex_step_grad(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    *,
    direction: PyTree | None = None,
    step: float | None = None,
) -> PyTree | jax.Array:
    """Gradient by the complex-step derivative: ∇f·d = Im f(x + i h d) / h.

    For f real on real inputs and complex-analytic, the Taylor expansion
    f(x + ihd) = f(x) + ih ∇f·d − h²/2 dᵀ∇²f d − ih³/6 f'''[d, d, d] + … has imaginary part
    h ∇f·d + O(h³): no difference of nearby values is taken, so the step can be tiny and
    the result is exact to round-off. f must be written with analytic operations only
    (`x * x` rather than `abs(x) ** 2`, `jnp.sqrt(x @ x)` rather than `jnp.linalg.norm`);
    anything that discards the imaginary part, such as `abs`, `jnp.real` or comparisons,
    silently breaks it.

    Args:
      f: scalar function of one pytree argument that accepts complex inputs.
      x: the point, a pytree of real float arrays.
      direction: if given, a pytree shaped like `x`; the result is then the scalar ∇f·d from
        one evaluation. If None, the full gradient from n evaluations, one per coordinate.
      step: h; default ε², ε the machine epsilon of the dtype of `x` (≈ 5e-32 in float64,
        ≈ 1e-14 in float32).

    Returns:
      The gradient, a pytree shaped like `x`; or the scalar ∇f·d when `direction` is given.
    """
    check_function("complex_step_grad", "f", f)
    flat, unravel = _float_flat(x, "complex_step_grad")
    if step is None:
        step = float(jnp.finfo(flat.dtype).eps) ** 2
    check_positive("complex_step_grad", "step", step)
    if direction is not None:
        check_same_shapes(
            x,
            direction,
            what="complex_step_grad: direction must have the structure and shapes of x",
            source="direction",
            one_line=True,
        )
    complex_dtype = jnp.result_type(flat.dtype, jnp.complex64)

    def along(d: PyTree) -> jax.Array:
        z = jax.tree.map(lambda a, b: a + 1j * step * b.astype(complex_dtype), x, d)
        return jnp.imag(f(z)) / step

    probe = jax.tree.map(lambda a: jnp.asarray(a, complex_dtype), x)
    out = jax.eval_shape(f, probe)
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise ValueError(
            "complex_step_grad needs f to return a complex scalar for complex inputs, got "
            f"{getattr(out, 'shape', type(out).__name__)} of dtype "
            f"{getattr(out, 'dtype', None)}; f must not drop the imaginary part"
        )
    if direction is not None:
        return along(direction).astype(flat.dtype)
    grad = lax.map(
        lambda i: along(unravel(jnp.zeros_like(flat).at[i].set(1))),
        jnp.arange(flat.size),
        batch_size=min(flat.size, _CHUNK),
    )
    return unravel(grad.astype(flat.dtype))


class GradCheck(NamedTuple):
    """The outcome of `check_grads`.

    Attributes:
      autodiff: the gradient by reverse mode, shaped like `x`.
      numerical: the reference gradient, shaped like `x`.
      max_abs_error: max over coordinates of |autodiff − numerical|.
      rel_error: the normwise relative error max|autodiff − numerical| / max|numerical|,
        which coordinates where the gradient vanishes do not inflate.
    """

    autodiff: PyTree
    numerical: PyTree
    max_abs_error: float
    rel_error: float


_DEFAULT_RTOL_POWER = {"central": 1 / 3, "forward": 1 / 4, "complex_step": 1 / 2}


def check_grads(
    f: Callable[[PyTree], jax.Array],
    x: PyTree,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: CheckMethod = "central",
    step: float | None = None,
) -> GradCheck:
    """Compare the reverse-mode gradient of a scalar function with a numerical reference.

    Each coordinate must satisfy |gᵢ − ĝᵢ| ≤ atol + rtol·|ĝᵢ|, g = `jax.grad(f)(x)` and ĝ
    from `numerical_grad` (`"central"`, `"forward"`) or `complex_step_grad`
    (`"complex_step"`). Default tolerances follow the reference's accuracy: rtol = ε^(1/3)
    for central differences, ε^(1/4) for forward differences and ε^(1/2) for the complex
    step (ε the machine epsilon of `x`), and atol = rtol·max|ĝ|, so that coordinates near
    zero are judged against the gradient's scale. This runs the computations and compares
    their values on the host; call it outside `jax.jit`.

    The defaults are for an f that is smooth within the step of x. In float32 the central
    step is wide, h = ε^(1/3)·max(1, |xᵢ|) ≈ 5e-3, and a function with kinks (relu, abs,
    max: a ReLU network's loss) has some inside it at a few coordinates, where the finite
    difference, not the gradient, is wrong: the check then fails on a correct gradient. In
    float64 the step is 6e-6 and such crossings are rare, so check those functions with `x`
    in float64 (under ``jax.enable_x64(True)``); smooth ones pass in float32 too.

    Args:
      f: scalar function of one pytree argument.
      x: the point, a pytree of real float arrays.
      rtol: relative tolerance.
      atol: absolute tolerance.
      method: the numerical reference, `"central"`, `"forward"` or `"complex_step"`.
      step: the step of the reference (see `numerical_grad`, `complex_step_grad`).

    Returns:
      A `GradCheck` with both gradients, the largest absolute error and the normwise
      relative error.

    Raises:
      AssertionError: if any coordinate is out of tolerance, naming the worst one by its
        pytree path and index, with both values and the errors.
    """
    check_function("check_grads", "f", f)
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        if tolerance is not None:
            check_positive("check_grads", name, tolerance, allow_zero=True)
    if method == "complex_step":
        numerical = complex_step_grad(f, x, step=step)
    elif method in ("central", "forward"):
        numerical = numerical_grad(f, x, method=method, step=step)
    else:
        raise ValueError(f"method must be 'central', 'forward' or 'complex_step', got {method!r}")
    autodiff = jax.grad(f)(x)

    paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(autodiff)
    ad_leaves = [np.asarray(leaf) for _, leaf in paths_and_leaves]
    num_leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(numerical)]
    ad_flat = np.concatenate([leaf.ravel() for leaf in ad_leaves])
    num_flat = np.concatenate([leaf.ravel() for leaf in num_leaves])

    abs_err = np.abs(ad_flat - num_flat)
    grad_scale = float(np.max(np.abs(num_flat), initial=0))
    max_abs_error = float(np.max(abs_err, initial=0))
    rel_error = max_abs_error / grad_scale if grad_scale > 0 else max_abs_error
    report = GradCheck(autodiff, numerical, max_abs_error, rel_error)

    if rtol is None:
        rtol = float(np.finfo(num_flat.dtype).eps) ** _DEFAULT_RTOL_POWER[method]
    if atol is None:
        atol = rtol * grad_scale
    allowed = atol + rtol * np.abs(num_flat)
    failed = ~(abs_err <= allowed)
    if not failed.any():
        return report

    scale = np.maximum(np.abs(ad_flat), np.abs(num_flat))
    rel_err = np.divide(abs_err, scale, out=np.zeros_like(abs_err), where=scale > 0)
    excess = np.where(failed, abs_err / np.maximum(allowed, np.finfo(abs_err.dtype).tiny), 0)
    worst = int(np.argmax(np.nan_to_num(excess, nan=np.inf)))
    ends = np.cumsum([leaf.size for leaf in ad_leaves])
    which = int(np.searchsorted(ends, worst, side="right"))
    path, leaf = paths_and_leaves[which][0], ad_leaves[which]
    index = np.unravel_index(worst - (ends[which] - leaf.size), leaf.shape)
    where = "x" + jax.tree_util.keystr(path) + (str(list(map(int, index))) if leaf.ndim else "")
    raise AssertionError(
        f"gradient check ({method}) failed at {where}: autodiff {ad_flat[worst]:.10g}, "
        f"numerical {num_flat[worst]:.10g}, abs error {abs_err[worst]:.3g}, rel error "
        f"{rel_err[worst]:.3g} (rtol={rtol:.3g}, atol={atol:.3g}); "
        f"{int(failed.sum())} of {failed.size} coordinates out of tolerance"
    )
